"""The diagnosis report's content as data, and its Markdown rendering.

trainer/report.py builds the blocks once (headings, text, bullet lists, tables, plots);
this module writes them as Markdown (report.md) and trainer/report_html.py as one
self-contained HTML page (report.html). A table cell may carry a mark: ``LOSS`` where
ours loses to a baseline, ``BEATS`` on the baseline figure that beats ours, ``GOOD`` /
``BAD`` on a gate's verdict; Markdown ignores marks, the HTML page colours them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Union

LOSS, BEATS, GOOD, BAD = "loss", "beats", "good", "bad"


@dataclass(frozen=True)
class Cell:
    text: str
    mark: str = ""
    span: int = 1  # columns it covers (e.g. "unavailable: why" across a model's metric columns)


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell]] = field(default_factory=list)


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Text:
    text: str
    code: str | None = None  # an inline code span after the text (a path)


@dataclass(frozen=True)
class Bullets:
    items: list  # str, or Cell for a marked line


def text_of(item) -> str:
    return item.text if isinstance(item, Cell) else str(item)


@dataclass(frozen=True)
class Image:
    path: str  # a PNG on disk, written beside the report
    alt: str
    caption: tuple[str, ...] = ()  # what the plot shows (its scales), one line each, under it


Block = Union[Heading, Text, Bullets, Table, Image]


def beaten(ours, theirs, higher_is_better: bool = True) -> bool:
    """Whether ``theirs`` is strictly better than ``ours`` (False when either is missing or NaN)."""
    if ours is None or theirs is None:
        return False
    return theirs > ours if higher_is_better else theirs < ours


def marks(ours, others: list, higher_is_better: bool | None = True) -> tuple[str, list[str]]:
    """The marks of ours and of each other model's figure: ``LOSS`` on ours when any beats it,
    ``BEATS`` on those that do; no marks when the metric has no better direction (None)."""
    if higher_is_better is None:
        return "", [""] * len(others)
    wins = [beaten(ours, o, higher_is_better) for o in others]
    return (LOSS if any(wins) else ""), [BEATS if w else "" for w in wins]


def _md_cell(cell: Cell) -> str:
    return cell.text.replace("|", "\\|").replace("\n", "; ") + " |" * (cell.span - 1)


def md_rows(table: Table) -> list[str]:
    """A Markdown table, one string per line."""
    return (["| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
            + ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows])


def markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            lines.append("#" * b.level + " " + b.text)
        elif isinstance(b, Text):
            lines.append(b.text + (f" `{b.code}`" if b.code is not None else ""))
        elif isinstance(b, Bullets):
            lines += [f"- {text_of(item)}" for item in b.items]
        elif isinstance(b, Table):
            lines += md_rows(b)
        elif isinstance(b, Image):
            lines.append(f"![{b.alt}]({os.path.basename(b.path)})")
            if b.caption:
                lines += [""] + [f"- {line}" for line in b.caption]
        lines.append("")
    return "\n".join(lines)
