"""Scoring a generated recommendation list the way the SELF-PARAM paper's CRS evaluation does.

The protocol (He et al. 2023, "LLMs as zero-shot conversational recommenders", whose code the
paper reuses): parse the reply into one title per line; map each to the catalogue title with the
smallest lower-cased Levenshtein distance; then Recall@k per gold item under four filters —
r1 none, r2 drop titles already mentioned in the dialog ("seen"), r3 drop matches farther than
distance 2 ("out of vocabulary"), r4 both — averaged over gold items.

Differences from that code, all in the parser and all on the side of reading the list the model
wrote: blank lines are skipped (the original maps an empty line to a two-letter entity at distance
2, which then survives r3), only the numbered (or bulleted) lines of a list are read (not the
chatter around it), and a description after the title ("Title (2014) - Comedy, Drama",
"**Title**: a story…") is cut off before matching. A reply with no such lines is read as comma (or
semicolon) lists, and since a comma may also be part of a title ("Crouching Tiger, Hidden Dragon"),
neighbouring pieces of one line are joined back where together they are within the r3 distance of
a catalogue title and apart at least one piece is not ("Toy Story, Up" stays two items);
``TitleMatcher.joined`` does this before scoring, so Recall@k counts one item. Ties between
equally near titles go to the first in sorted order, so a run is reproducible (the original breaks
them by set order).

Cutting a description or a final period also cuts real titles ("Mission: Impossible – Ghost
Protocol", "John Q.", "When Harry Met Sally..."), and only the catalogue can tell which it is. So a
parsed line (``ListItem``) keeps every reading the cleaning passes through (``title_forms``), and the
matcher takes the reading nearest to a catalogue title, the fullest on ties: a cut is used only where
it brings the line strictly closer to the catalogue, and otherwise the line is read as written, as
the original code reads it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

FILTERS: dict[str, tuple[bool, bool]] = {  # name -> (drop seen titles, drop far matches)
    "r1": (False, False),
    "r2": (True, False),
    "r3": (False, True),
    "r4": (True, True),
}
FILTER_NAMES = {
    "r1": "r1: no filter",
    "r2": "r2: seen items dropped",
    "r3": "r3: out-of-catalogue dropped",
    "r4": "r4: both",
}
KS = (1, 5, 10)

# "1. ", "#1) ", "**1.** ": markup closed after the number is eaten, markup opened before it is kept
_NUMBERED = re.compile(r"^\s*(?P<open>[*_]{1,2})?\s*(?:#\s*)?\d{1,3}\s*[.)、]\s*(?P<close>(?P=open)\s*)?")
_BULLET = re.compile(r"^\s*[-*•·+–]\s+")
_EMPHASIS = re.compile(r"^\s*(\*\*|__|\*|_)(.+?)\1")
_AFTER_PAREN = re.compile(r"\)\s*[:\-–—].*$")
_DESCRIPTION = re.compile(r"\s+[-–—]\s.*$")
_PARENS = re.compile(r"\([^()]*\)")
_SPACES = re.compile(r"\s+")
_QUOTES = "\"'“”‘’`*_"
_PIECE = re.compile(r"[^,;]+")  # a free-text line's comma (or semicolon) pieces


@dataclass(frozen=True)
class Piece:
    """Where a free-text item was cut from: characters ``start:end`` of line ``number`` (``line``),
    so that ``TitleMatcher.joined`` can join neighbouring pieces back with the text between them."""

    number: int
    line: str
    start: int
    end: int


@dataclass(frozen=True)
class ListItem:
    """One line of a generated list: its cleaned ``title`` (what records hold) and every reading of
    the line (``title_forms``, fullest first, the title last), among which ``TitleMatcher`` picks
    the nearest to the catalogue, to undo a cut that broke a real title."""

    title: str
    readings: tuple[str, ...]
    piece: Piece | None = None  # set for a comma piece of a free-text line; None for a list line

    @classmethod
    def of(cls, text: str, piece: Piece | None = None) -> ListItem:
        """The item that a list line, or a free-text piece (with its ``piece``), reads as."""
        forms = title_forms(text)
        return cls(forms[-1], forms, piece)


def _without_markup(line: str) -> str:
    """The line without numbering, bullet, emphasis and bracketed parts: none is ever in a title."""
    text = line
    numbered = _NUMBERED.match(line)
    if numbered:
        text = line[numbered.end() :]
        if numbered["open"] and not numbered["close"]:  # "**1. Title**": the emphasis encloses the title
            text = numbered["open"] + text
    text = _BULLET.sub("", text, count=1)
    emphasis = _EMPHASIS.match(text)
    if emphasis:  # "**Title**: a story", "*Title* - a story"
        text = emphasis.group(2)
    text = _AFTER_PAREN.sub(")", text)
    text = _PARENS.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def _unquoted(text: str) -> str:
    return text.strip().strip(_QUOTES).strip()


def title_forms(line: str) -> tuple[str, ...]:
    """The readings of a list line, fullest first, each cleaned one step further than the last.

    Markup-free; then without a description after a dash; then unquoted; then without end
    punctuation. Each step can cut a real title, so the matcher chooses among them.
    """
    forms = [_without_markup(line)]
    forms.append(_DESCRIPTION.sub("", forms[-1]))
    forms.append(_unquoted(forms[-1]))
    forms.append(_unquoted(forms[-1].rstrip(".,;:")))
    return tuple(dict.fromkeys(forms))


def clean_item(line: str) -> str:
    """A list line reduced to the title it names (numbering, markup, year, description dropped)."""
    return title_forms(line)[-1]


def parse_recommendations(text: str) -> list[ListItem]:
    """The items of a generated list, in order: numbered lines, else bulleted lines, else comma
    lists; lines that clean to nothing are left out. A comma piece records its ``Piece``: only the
    catalogue can tell whether a comma separates titles, so ``TitleMatcher.joined`` decides."""
    lines = [line for line in text.splitlines() if line.strip()]
    numbered = [line for line in lines if _NUMBERED.match(line)]
    bulleted = [line for line in lines if _BULLET.match(line)]
    if numbered or bulleted:
        items = [ListItem.of(line) for line in numbered or bulleted]
    else:  # free text: "A, B and C" lines, with any "Here are …:" lead-in dropped
        items = [
            ListItem.of(found.group(), Piece(number, line, found.start(), found.end()))
            for number, line in enumerate(lines)
            if not line.rstrip().endswith(":")
            for found in _PIECE.finditer(line)
        ]
    return [item for item in items if item.title]


class TitleMatcher:
    """Maps free-text titles to the nearest catalogue title (lower-cased Levenshtein distance).

    rapidfuzz's ``cdist`` computes a block of queries against the whole catalogue in C (about
    1 ms per query against ReDial's 30k entity names); exact hits skip it and every distinct query
    is computed once, since models repeat titles across probes.
    """

    def __init__(self, titles: Iterable[str], chunk: int = 256) -> None:
        self.choices = sorted({t.lower() for t in titles if t and t.strip()})
        if not self.choices:
            raise ValueError("empty catalogue")
        self.index = {title: i for i, title in enumerate(self.choices)}
        self.longest = max(map(len, self.choices))
        self.chunk = chunk
        self.cache: dict[str, tuple[str, int]] = {}

    def match(self, queries: Sequence[ListItem | str]) -> list[tuple[str, int]]:
        """(catalogue title, edit distance) for each query; for a ``ListItem``, its nearest reading.

        Ties go to the fullest reading: a cut is taken only where it brings the line strictly closer.
        """
        readings = [_readings(q) for q in queries]
        self._compute(dict.fromkeys(form for forms in readings for form in forms))
        return [min((self.cache[form] for form in forms), key=lambda found: found[1]) for forms in readings]

    def joined(self, items: Sequence[ListItem], max_distance: int = 2) -> list[ListItem]:
        """``items`` with neighbouring comma pieces of one free-text line joined back where the run
        is a catalogue title (within ``max_distance``, r3's limit) and one of its pieces is not.

        Left to right, the longest such run first, so "Sex, Lies, and Videotape" is one item and
        "Toy Story, Up" (two titles) stays two. List lines (no ``piece``) are left as they are.
        """
        near = [distance <= max_distance for _, distance in self.match(items)]
        out: list[ListItem] = []
        i = 0
        while i < len(items):
            end = i + 1  # items[i:end]: the pieces of items[i]'s line from it on
            while end < len(items) and _neighbours(items[end - 1], items[end]):
                end += 1
            for stop in range(end, i + 1, -1):
                run = self._run(items[i:stop], max_distance) if not all(near[i:stop]) else None
                if run is not None:
                    out.append(run)
                    i = stop
                    break
            else:
                out.append(items[i])
                i += 1
        return out

    def _run(self, pieces: Sequence[ListItem], max_distance: int) -> ListItem | None:
        """The pieces joined as written in their line, if that is within ``max_distance`` of a title."""
        first, last = pieces[0].piece, pieces[-1].piece
        assert first is not None and last is not None
        item = ListItem.of(first.line[first.start : last.end], Piece(first.number, first.line, first.start, last.end))
        if not item.title or min(map(len, _readings(item))) > self.longest + max_distance:
            return None  # longer than any title by more than max_distance: no search needed
        return item if self.match([item])[0][1] <= max_distance else None

    def _compute(self, forms: Iterable[str]) -> None:
        """Cache the nearest catalogue title of each lower-cased form not cached yet."""
        from rapidfuzz import process
        from rapidfuzz.distance import Levenshtein

        todo = []
        for q in forms:
            if q in self.cache:
                continue
            if q in self.index:
                self.cache[q] = (q, 0)
            else:
                todo.append(q)
        for start in range(0, len(todo), self.chunk):
            block = todo[start : start + self.chunk]
            distances = process.cdist(block, self.choices, scorer=Levenshtein.distance, dtype=np.int32, workers=-1)
            best = distances.argmin(axis=1)
            for row, (query, column) in enumerate(zip(block, best)):
                self.cache[query] = (self.choices[column], int(distances[row, column]))


def _neighbours(left: ListItem, right: ListItem) -> bool:
    """Whether ``right`` is the comma piece that follows ``left`` in the same free-text line."""
    return (
        left.piece is not None
        and right.piece is not None
        and left.piece.number == right.piece.number
        and left.piece.end < right.piece.start
    )


def _readings(query: ListItem | str) -> tuple[str, ...]:
    """The lower-cased forms a query may be matched by: all of a ``ListItem``'s, else the string."""
    forms = query.readings if isinstance(query, ListItem) else (query,)
    return tuple(dict.fromkeys(form.lower() for form in forms))


def filtered(matches: Sequence[tuple[str, int]], seen: set[str], name: str, max_distance: int = 2) -> list[str]:
    """The ranked titles that filter ``name`` (r1..r4) keeps; ``seen`` holds lower-cased titles."""
    drop_seen, drop_far = FILTERS[name]
    return [
        title
        for title, distance in matches
        if not (drop_far and distance > max_distance) and not (drop_seen and title in seen)
    ]


def recall_at_k(ranked: Sequence[str], gold: str, k: int) -> int:
    """1 if the gold title is among the first k ranked titles."""
    return int(gold in ranked[:k])


def score_list(
    matches: Sequence[tuple[str, int]],
    gold: Sequence[str],
    seen: Iterable[str],
    max_distance: int = 2,
    ks: Sequence[int] = KS,
) -> dict[str, dict[str, list[int]]]:
    """Hits per filter, per k, per gold item (one entry per gold item, as the paper counts)."""
    seen_set = {s.lower() for s in seen}
    gold_lower = [g.lower() for g in gold]
    hits: dict[str, dict[str, list[int]]] = {}
    for name in FILTERS:
        ranked = filtered(matches, seen_set, name, max_distance)
        hits[name] = {str(k): [recall_at_k(ranked, g, k) for g in gold_lower] for k in ks}
    return hits
