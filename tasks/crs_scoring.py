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
"**Title**: a story…") is cut off before matching. Ties between equally near titles go to the
first in sorted order, so a run is reproducible (the original breaks them by set order).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

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

_NUMBERED = re.compile(r"^\s*(?:[*_]{1,2})?\s*(?:#\s*)?\d{1,3}\s*[.)、]\s*(?:[*_]{1,2}\s*)?")
_BULLET = re.compile(r"^\s*[-*•·+–]\s+")
_BOLD = re.compile(r"^\s*(\*\*|__)(.+?)\1")
_AFTER_PAREN = re.compile(r"\)\s*[:\-–—].*$")
_DESCRIPTION = re.compile(r"\s+[-–—]\s.*$")
_PARENS = re.compile(r"\([^()]*\)")
_SPACES = re.compile(r"\s+")
_QUOTES = "\"'“”‘’`*_"


def clean_item(line: str) -> str:
    """A list line reduced to the title it names (numbering, markup, year, description dropped)."""
    text = _NUMBERED.sub("", line, count=1)
    text = _BULLET.sub("", text, count=1)
    bold = _BOLD.match(text)
    if bold:
        text = bold.group(2)
    text = _AFTER_PAREN.sub(")", text)
    text = _PARENS.sub(" ", text)
    text = _DESCRIPTION.sub("", text)
    text = _SPACES.sub(" ", text).strip().strip(_QUOTES).strip()
    return text.rstrip(".,;:").strip().strip(_QUOTES).strip()


def parse_recommendations(text: str) -> list[str]:
    """Titles of a generated list, in order: numbered lines, else bulleted lines, else comma lists."""
    lines = [line for line in text.splitlines() if line.strip()]
    numbered = [line for line in lines if _NUMBERED.match(line)]
    bulleted = [line for line in lines if _BULLET.match(line)]
    if numbered:
        chosen = numbered
    elif bulleted:
        chosen = bulleted
    else:  # free text: "A, B and C" lines, with any "Here are …:" lead-in dropped
        chosen = []
        for line in lines:
            if line.rstrip().endswith(":"):
                continue
            chosen.extend(line.replace(";", ",").split(","))
    items = [clean_item(line) for line in chosen]
    return [item for item in items if item]


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
        self.chunk = chunk
        self.cache: dict[str, tuple[str, int]] = {}

    def match(self, queries: Sequence[str]) -> list[tuple[str, int]]:
        """(catalogue title, edit distance) for each query."""
        from rapidfuzz import process
        from rapidfuzz.distance import Levenshtein

        lowered = [q.lower() for q in queries]
        todo = []
        for q in dict.fromkeys(lowered):
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
        return [self.cache[q] for q in lowered]


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
