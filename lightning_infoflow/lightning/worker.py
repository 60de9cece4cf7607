"""One background thread that runs the slow part of publishing (figures, files, images) off the training thread.

The training thread hands each analysis's writing over as a job and goes on training. Jobs run one at a
time, in the order they were submitted, on one daemon thread. :data:`FIGURES` is held while matplotlib
figures are built or drawn, on either thread: matplotlib is not thread-safe across its shared state.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable, Optional

FIGURES = threading.RLock()
"""Held while matplotlib figures are built or drawn (the worker's figures, the hooks' figures)."""

Job = Callable[[], None]


class Worker:
    """Runs jobs in submission order on one daemon thread, so that their caller waits for none of them.

    A job that raises is passed to ``on_error(label, error)`` (which warns) on the worker's thread; the
    error never reaches the caller and the next job still runs. Should ``on_error`` itself raise (warnings
    turned into errors, ``-W error``), that exception is raised on the caller's thread at its next
    :meth:`submit`, :meth:`flush` or :meth:`close`, as the warning would have been without the worker;
    the jobs after it still run. The worker is bounded: when
    ``max_pending`` jobs are already waiting or running, :meth:`submit` **waits** until one has finished,
    so a worker that falls behind slows the caller down instead of holding ever more figures and results
    in memory. The thread starts with the first job and stops at :meth:`close`; a later job starts a new one.
    One thread submits, flushes and closes (the training thread).

    Args:
        name: the thread's name (shows in stack dumps).
        on_error: called with the job's label and its exception when a job raises.
        max_pending: jobs held at most (waiting or running) before :meth:`submit` waits; a positive int.
        background: ``False`` runs each job at once inside :meth:`submit`, on the caller's thread (same
            order, same error handling).
    """

    def __init__(self, name: str, on_error: Callable[[str, Exception], None], max_pending: int = 2,
                 background: bool = True) -> None:
        if not (isinstance(max_pending, int) and max_pending > 0):
            raise ValueError(f"Worker(max_pending={max_pending!r}): `max_pending` must be a positive int")
        self.name = name
        self.on_error = on_error
        self.max_pending = max_pending
        self.background = background
        self._jobs: deque[tuple[str, Job]] = deque()
        self._pending = 0  # submitted and not finished
        self._stopping = False
        self._cond: Optional[threading.Condition] = None  # made on first use: the worker must stay picklable
        self._thread: Optional[threading.Thread] = None
        self._raised: Optional[Exception] = None  # what on_error raised, for the caller

    @property
    def pending(self) -> int:
        """Jobs submitted and not finished yet (waiting or running)."""
        return self._pending

    def submit(self, label: str, job: Job) -> None:
        """Run ``job`` after the jobs submitted before it; wait first while ``max_pending`` are held."""
        if not self.background:
            self._run(label, job)
            return
        cond = self._condition()
        with cond:
            while self._pending >= self.max_pending:
                cond.wait()
            self._reraise()
            self._jobs.append((label, job))
            self._pending += 1
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            cond.notify_all()

    def flush(self) -> None:
        """Wait until every job submitted so far has finished."""
        self._finish(stop=False)

    def close(self) -> None:
        """Wait for every job, then stop the thread."""
        self._finish(stop=True)

    def _finish(self, stop: bool) -> None:
        if self._cond is None:
            return
        thread = None
        with self._cond:
            while self._pending:
                self._cond.wait()
            if stop:
                thread, self._thread = self._thread, None
                self._stopping = True
                self._cond.notify_all()
        if thread is not None:
            thread.join()
        self._reraise()

    def _condition(self) -> threading.Condition:
        if self._cond is None:
            self._cond = threading.Condition()
        return self._cond

    def _loop(self) -> None:
        cond = self._condition()
        while True:
            with cond:
                while not self._jobs and not self._stopping:
                    cond.wait()
                if not self._jobs:
                    return
                label, job = self._jobs.popleft()
            try:
                self._run(label, job)
            except Exception as err:  # noqa: BLE001 - on_error raised: the caller gets it, later jobs still run
                self._raised = self._raised or err
            finally:
                with cond:
                    self._pending -= 1
                    cond.notify_all()

    def _reraise(self) -> None:
        err, self._raised = self._raised, None
        if err is not None:
            raise err

    def _run(self, label: str, job: Job) -> None:
        try:
            job()
        except Exception as err:  # noqa: BLE001 - a job's failure never reaches training
            self.on_error(label, err)

    def __getstate__(self) -> dict[str, Any]:
        """An idle copy (for ``ddp_spawn``, which pickles the callbacks): no thread, no lock, no jobs."""
        state = dict(self.__dict__)
        state.update(_jobs=deque(), _pending=0, _stopping=False, _cond=None, _thread=None, _raised=None)
        return state
