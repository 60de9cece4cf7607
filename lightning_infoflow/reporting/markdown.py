"""Findings as Markdown, for dashboards that show text: TensorBoard's text plugin, the W&B run summary, and
a ``findings.md`` file beside the results of other loggers."""

from __future__ import annotations

from collections.abc import Sequence

from lightning_infoflow.analysis.finding import Finding
from lightning_infoflow.reporting.tables import Table, cell, phases_table, place, warnings


def _escape(text: str) -> str:
    """Text for a Markdown table cell: a ``|`` would end the cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def table_markdown(table: Table) -> str:
    """A :class:`~lightning_infoflow.reporting.tables.Table` as a Markdown table under its bold title.

    >>> print(table_markdown(Table("T", ["a", "b"], [[1.23456, None]])))
    **T**
    <BLANKLINE>
    | a | b |
    | --- | --- |
    | 1.235 | — |
    """
    lines = [f"**{_escape(table.title)}**", "", "| " + " | ".join(_escape(str(h)) for h in table.header) + " |",
             "| " + " | ".join("---" for _ in table.header) + " |"]
    lines += ["| " + " | ".join(_escape(cell(c)) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def findings_markdown(findings: Sequence[Finding], title: str) -> str:
    """The warnings (message, threshold, what to try), then the phases of every layer as a table.

    >>> f = Finding("collapsed_layer", "warning", "enc.1 has collapsed.", {"state_spread": 0.001},
    ...             "state spread below 0.01", "lower the weight decay", layer="enc.1")
    >>> print(findings_markdown([f], "Guidance at step 9"))
    ### Guidance at step 9
    <BLANKLINE>
    1 warning(s).
    <BLANKLINE>
    - **collapsed_layer**: enc.1 has collapsed. *Threshold*: state spread below 0.01. *Try*: lower the weight decay.
    """
    flagged = warnings(findings)
    lines = [f"### {title}", "", f"{len(flagged)} warning(s)." if flagged else "No rule triggered a warning.", ""]
    for f in flagged:
        where = place(f)
        head = f"- **{f.rule}**" + (f" ({where})" if where else "")
        lines.append(f"{head}: {f.message} *Threshold*: {f.threshold.rstrip('.')}. *Try*: {f.suggestion.rstrip('.')}.")
    phases = phases_table(findings)
    if phases is not None:
        lines += ["", table_markdown(phases)]
    return "\n".join(lines).rstrip("\n")
