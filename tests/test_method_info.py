"""Method metadata (row name, family, storage class, row order, role): declared on the class,
written into result files, read by the tables and the leaderboard."""

from __future__ import annotations

import pytest

from benchmark.method_info import DEFAULT_TABLE_ORDER, FAMILIES, MethodInfo
from benchmark.registry import METHODS
from methods.base import BaseQ, Method

# The paper's rows, in its order: (registered name, row name, storage class S).
PAPER_ROWS = [
    ("base_cq", "Base, C+Q", "O(n)"),
    ("base_q", "Base, Q", "O(1)"),
    ("ft_context", "FT (C)", "O(1)"),
    ("ft_sentences", "FT (S)", "O(1)"),
    ("memoryllm", "MemoryLLM", "O(1)"),
    ("memoryllm-mini", "MemoryLLM (mini)", "O(1)"),
    ("infllm", "InfLLM", "O(n)"),
    ("raptor", "RAPTOR", "O(n)"),
    ("bm25", "BM25", "O(n)"),
    ("dpr", "DPR", "O(n)"),
    ("selfparam", "SELF-PARAM", "O(1)"),
]


def test_builtins_declare_the_papers_rows_in_its_order():
    infos = [MethodInfo.of_class(cls) for _, cls in METHODS.items()]
    builtin = [i for i in infos if i.name in {name for name, _, _ in PAPER_ROWS}]
    assert [(i.name, i.display_name, i.storage_class) for i in sorted(builtin, key=lambda i: i.rank)] == PAPER_ROWS
    assert all(i.family in FAMILIES and i.table_order < DEFAULT_TABLE_ORDER for i in builtin)
    roles = {i.name: i.role for i in infos if i.role}
    assert roles == {"base_q": "floor", "base_cq": "ceiling"}


def test_row_name_order_and_role_are_not_inherited():
    class Variant(BaseQ):  # not registered: a subclass must not become a second floor
        pass

    info = MethodInfo.of_class(Variant)
    assert (info.role, info.table_order, info.display_name) == ("", DEFAULT_TABLE_ORDER, info.name)
    assert (info.family, info.storage_class) == ("reference", "O(1)")  # these are inherited


def test_unknown_storage_class_or_role_is_refused_when_the_class_is_defined():
    with pytest.raises(TypeError, match=r"storage_class is 'O\(n\^2\)'"):
        class Quadratic(Method):
            storage_class = "O(n^2)"
    with pytest.raises(TypeError, match="role is 'roof'"):
        class Roof(Method):
            role = "roof"


def test_a_result_files_method_info_round_trips_and_tolerates_gaps():
    info = MethodInfo("mine", "Mine", "retrieval", "O(n)", 5, "")
    assert MethodInfo.from_record("mine", info.record()) == info
    assert MethodInfo.from_record("mine", {"table_order": "5", "storage_class": None}) == MethodInfo("mine", "mine")


def test_the_runner_writes_method_info_into_the_result_file(tmp_path):
    from benchmark.runner import RunRequest, run

    outcome = run(RunRequest(method="base_q", task="batch", profile="smoke", out=tmp_path))
    assert outcome.result["method_info"] == {"display_name": "Base, Q", "family": "reference",
                                             "storage_class": "O(1)", "table_order": 20, "role": "floor"}
    assert '"method_info"' in outcome.path.read_text()
