"""Leave the model exactly as found: modes, ``requires_grad``, buffers, RNG; one analysis per model at a time."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from typing import Any, Optional

import torch
from torch import Tensor, nn


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Run ``torch.compile``'d modules and functions eagerly for the duration, compiling nothing.

    The analysis hooks modules, switches them to eval mode and feeds batches of other shapes: under
    a compiled module each of these would fail a guard and trigger a recompilation (and could evict the
    training graph from the cache). With torch>=2.6 this is ``torch.compiler.set_stance("force_eager")``;
    on older versions ``torch._dynamo.config.disable`` is set instead, which skips compilation of new
    frames (already compiled code may still run).
    """
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is not None:
        with set_stance("force_eager"):
            yield
        return
    try:  # torch < 2.6
        import torch._dynamo.config as dynamo_config
    except ImportError:  # pragma: no cover - builds without dynamo
        yield
        return
    with dynamo_config.patch(disable=True):
        yield


_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def _lock_of(model: nn.Module) -> threading.RLock:
    with _LOCKS_LOCK:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@contextlib.contextmanager
def exclusive(model: nn.Module) -> Iterator[None]:
    """Hold the model for one analysis: a second analysis of it from another thread is refused, and so is
    a call of the model from another thread (e.g. training) while the analysis runs.

    Both raise a RuntimeError at once instead of waiting; neither changes the model. A forward that
    another thread started before the analysis cannot be seen and is not stopped.
    """
    lock = _lock_of(model)
    if not lock.acquire(blocking=False):
        raise RuntimeError(
            f"the model ({type(model).__name__}) is being analysed by another thread; one analysis at a time per "
            "model: wait for it to finish, or analyse a copy (copy.deepcopy(model)) in this thread"
        )
    owner = threading.get_ident()

    def refuse_other_threads(_module: nn.Module, _args: Any) -> None:
        if threading.get_ident() != owner:
            raise RuntimeError(
                f"the model ({type(model).__name__}) was called from another thread while lightning_infoflow "
                "analyses it in eval mode with frozen parameters; do not train or run the model during an "
                "analysis: run the analysis in the training thread (as the callback does), or analyse a copy"
            )

    handle = model.register_forward_pre_hook(refuse_other_threads)
    try:
        yield
    finally:
        handle.remove()
        lock.release()


def _snapshot_buffers(model: nn.Module) -> list[tuple[nn.Module, dict[str, Optional[Tensor]], list[Tensor]]]:
    """Each module's buffer table, and a copy of every buffer's values (taken before the analysis)."""
    out = []
    for module in model.modules():
        table = dict(module._buffers)
        out.append((module, table, [b.detach().clone() for b in table.values() if b is not None]))
    return out


@torch.no_grad()
def _restore_buffers(saved: list[tuple[nn.Module, dict[str, Optional[Tensor]], list[Tensor]]]) -> None:
    """Put back the buffer tensors themselves (a forward may rebind them) and their values (or update them
    in place); buffers a forward added are removed."""
    for module, table, values in saved:
        module._buffers.clear()
        module._buffers.update(table)
        for buf, value in zip((b for b in table.values() if b is not None), values):
            buf.copy_(value)


@contextlib.contextmanager
def model_untouched(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode and frozen parameters for the duration; everything restored on exit, also on error.

    Every submodule's ``training`` flag, every parameter's ``requires_grad``, every buffer (the tensor
    and its values: counters and running statistics a forward updates) and the global RNG (CPU, and the
    model's CUDA device) are put back. Freezing the parameters keeps autograd from saving what weight
    gradients would need; callers take gradients with :func:`torch.autograd.grad` with respect to their
    own tensors, so no ``.grad`` is written. On CUDA a model with a recurrent module runs with cuDNN
    disabled: cuDNN's RNN backward refuses eval mode ("cudnn RNN backward can only be called in training
    mode"). Compiled modules run eagerly (:func:`eager`): nothing is compiled for the analysis and the
    training graph's compiled code is neither replaced nor recompiled. The model is held
    (:func:`exclusive`): concurrent use from another thread is a RuntimeError, never a corrupted model.

    Not restored: the values of parameters (never written by an analysis), attributes that are neither
    parameters nor buffers (e.g. a plain Python counter a forward increments), and hooks a forward
    registers on itself.
    """
    with exclusive(model):
        modes = [(m, m.training) for m in model.modules()]
        grads = [(p, p.requires_grad) for p in model.parameters()]
        buffers = _snapshot_buffers(model)
        has_rnn = any(isinstance(m, nn.RNNBase) for m in model.modules())
        cudnn = (torch.backends.cudnn.flags(enabled=False) if device.type == "cuda" and has_rnn
                 else contextlib.nullcontext())
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), cudnn, eager():
            try:
                model.eval()
                for p, _ in grads:
                    p.requires_grad_(False)
                yield
            finally:
                for module, mode in modes:
                    module.training = mode
                for p, flag in grads:
                    p.requires_grad_(flag)
                _restore_buffers(buffers)


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
