"""What a method declares about itself for tables and the leaderboard, and how result files carry it.

A method class declares (see ``benchmark.api.Method``): ``display_name`` (its row name; empty means
the registered name), ``family`` (one of ``FAMILIES``, or another word for a new kind of method),
``storage_class`` (one of ``STORAGE_CLASSES``: the storage S it keeps in the number n of injected
contexts), ``table_order`` (its position among rows; built-ins use the paper's order, and a method
that sets none follows them, alphabetically), ``role`` (``"floor"`` for the reference every gain
is measured against, ``"ceiling"`` for the upper reference, empty for all others) and ``paper_rows``
(the row labels under which the paper's tables report the method, exactly as printed there, e.g.
``("SELF-PARAM, Q", "SELF-PARAM")``; empty for a method the paper does not report) and ``stand_in``
(non-empty for a row that is not the published method but a stand-in for it, e.g. a small version
trained here: what it is; tables mark its row name with ``STAND_IN_MARK`` and say so in a note).

The runner writes these as ``method_info`` into each result file, so a table or the leaderboard
shows a method correctly without importing it. This module knows the shape only; it imports no method.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# O(n) keeps every context (in the prompt, an index or a KV store); O(1) keeps a fixed-size state
# (weights, a memory pool), whatever the number n of injected contexts.
STORAGE_CLASSES = ("O(1)", "O(n)")
# reference: the untouched model (floor and ceiling); fine-tuning: weights trained on the contexts
# or sentences about them; parametric: knowledge distilled into weights without the context at
# question time; memory: a self-updating memory pool; long-context: the contexts kept as one long
# attention stream; retrieval: passages retrieved and put into the prompt.
FAMILIES = ("reference", "fine-tuning", "parametric", "memory", "long-context", "retrieval")
ROLES = ("floor", "ceiling")
DEFAULT_TABLE_ORDER = 1000  # after every built-in
FIELDS = ("display_name", "family", "storage_class", "table_order", "role", "paper_rows", "stand_in")
STAND_IN_MARK = "‡"


@dataclass(frozen=True)
class MethodInfo:
    """One method's table metadata; ``name`` is its registered name."""

    name: str
    display_name: str
    family: str = ""
    storage_class: str = ""
    table_order: int = DEFAULT_TABLE_ORDER
    role: str = ""
    paper_rows: tuple[str, ...] = ()
    stand_in: str = ""

    @classmethod
    def of_class(cls, method_cls: type) -> MethodInfo:
        """What a (registered) method class declares; attributes it lacks take their defaults."""
        name = str(getattr(method_cls, "name", method_cls.__name__))
        return cls.from_record(name, {field: getattr(method_cls, field, None) for field in FIELDS})

    @classmethod
    def from_record(cls, name: str, record: Mapping[str, Any]) -> MethodInfo:
        """From a result file's ``method_info``; a missing or mistyped field takes its default."""

        def text(field: str) -> str:
            value = record.get(field)
            return value if isinstance(value, str) else ""

        order = record.get("table_order")
        labels = record.get("paper_rows")
        return cls(
            name=name,
            display_name=text("display_name") or name,
            family=text("family"),
            storage_class=text("storage_class"),
            table_order=order if isinstance(order, int) and not isinstance(order, bool) else DEFAULT_TABLE_ORDER,
            role=text("role"),
            paper_rows=tuple(x for x in labels if isinstance(x, str)) if isinstance(labels, (list, tuple)) else (),
            stand_in=text("stand_in"),
        )

    def record(self) -> dict[str, Any]:
        """The ``method_info`` object of a result file (JSON types: ``paper_rows`` as a list)."""
        record = {field: getattr(self, field) for field in FIELDS}
        record["paper_rows"] = list(self.paper_rows)
        return record

    @property
    def row_name(self) -> str:
        """The name a table prints: the display name, marked when the row is a stand-in."""
        return f"{self.display_name} {STAND_IN_MARK}" if self.stand_in else self.display_name

    @property
    def stand_in_note(self) -> str:
        """The note a table with this row carries ("" for the published method itself)."""
        return f"{STAND_IN_MARK} {self.display_name} is a stand-in: {self.stand_in}" if self.stand_in else ""

    @property
    def rank(self) -> tuple[int, str]:
        """Sort key of rows: declared order, then the registered name."""
        return (self.table_order, self.name)
