"""A table as data (title, headers, rows of strings) and its markdown / plain-text rendering."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tabulate import tabulate

MISSING = "—"
FORMATS = {"markdown": "github", "plain": "simple"}


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)

    def render(self, fmt: str = "markdown", heading: bool = True) -> str:
        """Markdown (a ``###`` heading and a GitHub table) or plain text (an underlined title)."""
        body = tabulate(self.rows, headers=self.headers, tablefmt=FORMATS[fmt], disable_numparse=True)
        notes: list[str] = []
        for note in self.notes:  # after a blank line each: markdown would join adjacent lines into one paragraph
            notes += ["", note] if fmt == "markdown" or not notes else [note]
        if not heading:
            return "\n".join([body, *notes]) + "\n"
        title = [f"### {self.title}", ""] if fmt == "markdown" else [self.title, "=" * len(self.title)]
        parts = [*title, body, *notes]
        return "\n".join(parts) + "\n"


def fmt_score(summary: dict[str, Any] | None, ci: bool = True, digits: int = 4) -> str:
    """``0.5043 [0.4810, 0.5290]`` (bootstrap 95% interval), ``0.5043`` without one, "—" if absent.
    An interval that is only the range of the seeds' means says so inside its brackets
    (``[seed range 0.4810, 0.5290]``): under a "95% CI" heading it must not pass for one."""
    if summary is None or summary.get("mean") is None:
        return MISSING
    text = f"{summary['mean']:.{digits}f}"
    low, high = summary.get("ci_low"), summary.get("ci_high")
    if ci and isinstance(low, (int, float)) and isinstance(high, (int, float)):
        label = f"{summary['interval']} " if isinstance(summary.get("interval"), str) else ""
        text += f" [{label}{low:.{digits}f}, {high:.{digits}f}]"
    if summary.get("seeds"):
        text += f" ({summary['seeds']} seeds)"
    return text


def fmt_bytes(value: float | None) -> str:
    """Bytes in IEC units (``0 B``, ``812 B``, ``1.5 MiB``), "—" if unknown."""
    if value is None:
        return MISSING
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return MISSING  # unreachable


def fmt_number(value: float | None, digits: int = 1) -> str:
    return MISSING if value is None else f"{value:,.{digits}f}"
