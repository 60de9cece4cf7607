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
    Table,
    cell,
    phases_table,
    place,
    warnings,
)


def console() -> Console:
    """The console reports print to (stdout, no syntax highlighting, no soft wrapping)."""
    return Console(highlight=False, soft_wrap=False)


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[ProgressFactory]:
    """A rich progress display on stderr; yields ``task(description, total) -> advance``."""
    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=True, disable=not enabled)
    with bars:
        def task(description: str, total: int) -> Callable[[], None]:
            task_id = bars.add_task(description, total=total)

            def advance() -> None:
                bars.advance(task_id)

            return advance

        yield task


def _numeric(value: object) -> bool:
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
