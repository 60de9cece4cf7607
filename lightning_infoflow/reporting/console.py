"""Reports on the terminal with rich: the same :class:`~lightning_infoflow.reporting.tables.Table` s and
findings the HTML page shows, and a progress display for long loops."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console, Group
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table as RichTable
from rich.text import Text

from lightning_infoflow.analysis.guidance import Finding
from lightning_infoflow.reporting.runs import Progress as ProgressFactory
from lightning_infoflow.reporting.tables import (
    Estimate,
    Table,
    cell,
    definitions,
    phases_table,
    place,
    warnings,
)

UNWRAPPED = 10_000
"""Console width when stdout is not a terminal: wide enough that no table row or finding wraps."""


def console() -> Console:
    """The console reports print to: stdout, no syntax highlighting. On a terminal, its width; piped or
    captured, :data:`UNWRAPPED` columns, so every table row stays on one line (rich would assume 80)."""
    terminal = Console(highlight=False, soft_wrap=False)
    if terminal.is_terminal:
        return terminal
    return Console(highlight=False, soft_wrap=False, width=UNWRAPPED)


def _bars(enabled: bool) -> Progress:
    """Rich progress bars on stderr, shown only when ``enabled`` and stderr is a terminal."""
    stderr = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=stderr, transient=True, disable=not (enabled and stderr.is_terminal))


@contextmanager
def step_bar(description: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A progress bar for a loop that reports ``(done, total)``, such as ``InfoFlowEstimator.estimate``'s
    ``on_step``; yields that callback. The total may change between calls (a loop that stops early)."""
    with _bars(enabled) as bars:
        task_id = bars.add_task(description, total=None)

        def on_step(done: int, total: int) -> None:
            bars.update(task_id, completed=done, total=total)

        yield on_step


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[ProgressFactory]:
    """Rich progress bars on stderr (see :func:`_bars`); yields ``task(description, total) -> advance``."""
    with _bars(enabled) as bars:
        def task(description: str, total: int) -> Callable[[], None]:
            task_id = bars.add_task(description, total=total)

            def advance() -> None:
                bars.advance(task_id)

            return advance

        yield task


def _numeric(value: object) -> bool:
    if isinstance(value, Estimate):
        return True
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) or isinstance(value, str) and value[:2].lstrip("+-")[:1].isdigit()


def render(table: Table) -> Group:
    """A titled table; the title is a line of its own (a table title would wrap at the table's width)."""
    out = RichTable(show_lines=False)
    for i, h in enumerate(table.header):
        numeric = i > 0 and any(_numeric(row[i]) for row in table.rows)
        out.add_column(str(h), justify="right" if numeric else "left", overflow="fold")
    for row in table.rows:
        out.add_row(*[cell(c) for c in row])
    return Group(Text(table.title, style="bold"), out)


def print_findings(out: Console, findings: Sequence[Finding]) -> None:
    """The warnings (message, threshold, suggestion), then the table of information peaks."""
    flagged = warnings(findings)
    out.print(f"[bold]Guidance[/bold]: {len(flagged)} warning(s)")
    if not flagged:
        out.print("  no rule triggered a warning")
    width = max(40, out.width - 1)
    for f in flagged:
        where = place(f)
        head = f"! {f.rule}" + (f" ({where}): " if where else ": ") + f.message
        text = Text(textwrap.fill(head, width, initial_indent="  ", subsequent_indent="    ", break_on_hyphens=False))
        text.stylize("yellow", 2, 4 + len(f.rule))
        out.print(text)
        for label, value in (("threshold", f.threshold), ("try", f.suggestion)):
            out.print(textwrap.fill(f"{label}: {value}", width, initial_indent="      ", subsequent_indent="        ",
                                    break_on_hyphens=False), markup=False)
    phases = phases_table(findings)
    if phases is not None:
        out.print(render(phases))


def print_definitions(out: Console, tables: Sequence[Table]) -> None:
    """What each measure the tables show means (:data:`~lightning_infoflow.reporting.tables.MEASURES`)."""
    shown = definitions(tables)
    if shown:
        out.print("[bold]Measures[/bold]")
    width = max(40, out.width - 1)
    for name, meaning in shown:
        out.print(textwrap.fill(f"{name}: {meaning}", width, initial_indent="  ", subsequent_indent="    ",
                                break_on_hyphens=False), markup=False)
