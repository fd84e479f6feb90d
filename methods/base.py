"""The two reference rows: Base, C+Q (the ceiling) and Base, Q (the floor)."""

from __future__ import annotations

from benchmark.api import Method, NoParams
from benchmark.registry import register_method

# The interface lives in benchmark.api; it is named here too, where plug-ins have imported it from.
__all__ = ["BaseCQ", "BaseQ", "Method", "NoParams"]


@register_method("base_q")
class BaseQ(Method):
    description = "Base, Q: the untouched model answers without the context (the floor)"
    display_name = "Base, Q"
    family = "reference"
    storage_class = "O(1)"
    table_order = 20
    paper_rows = ("Base, Q", "Base")
    role = "floor"


@register_method("base_cq")
class BaseCQ(Method):
    description = "Base, C+Q: the gold context in the prompt (the ceiling)"
    sees_gold_context = True
    display_name = "Base, C+Q"
    family = "reference"
    storage_class = "O(n)"
    table_order = 10
    paper_rows = ("Base, C+Q",)
    role = "ceiling"
