"""The paper's published tables: ``bench table --paper`` shows every row of its Tables 1, 2 and 4 as
printed, the "paper" column finds a method's published row through the labels it declares
(``paper_rows``), and the tables' code names no built-in method or task."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from resultfiles import batch, write

from benchmark.api import Method
from benchmark.registry import METHODS, TASKS, register_method
from leaderboard.paper import PAPER_TABLE1, PAPER_TABLE4, paper_model
from leaderboard.tables import table1

REPO = Path(__file__).parents[1]
PAPER_MD = Path(__file__).parents[2] / "shared" / "PAPER.md"
PUBLISHED = ("1", "2", "4")


def _markdown_table(lines: list[str], start: int) -> list[list[str]]:
    """The cells of the first markdown table at or after line ``start`` (header first, no separator)."""
    while not lines[start].startswith("|"):
        start += 1
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not all(set(c) <= set("-: ") for c in cells):
            rows.append(cells)
    return rows


def _section(text: str, heading: re.Pattern[str]) -> list[list[str]]:
    lines = text.splitlines()
    (start,) = [i for i, line in enumerate(lines) if heading.match(line)]
    return _markdown_table(lines, start + 1)


def _as_printed(table: list[list[str]]) -> list[list[str]]:
    """PAPER.md's table as the rendered one spells it: "–" as "—", and a filter rule's header ("r2")
    with its data set ("INSPIRED r2"), which the paper gives once per data set."""
    header, rows = table[0], table[1:]
    expanded, prefix = [header[0].lower()], ""
    for cell in header[1:]:
        if re.fullmatch(r"r\d", cell):
            cell = f"{prefix} {cell}"
        elif re.fullmatch(r"\S+ r\d", cell):
            prefix = cell.split()[0]
        expanded.append(cell)
    return [expanded] + [["—" if c == "–" else c for c in row] for row in rows]


@pytest.fixture
def rendered(bench, tmp_path) -> str:
    code, out, err = bench("table", "--paper", tmp_path)  # no results: only the published tables
    assert code == 0, err
    return out


@pytest.mark.parametrize("number", PUBLISHED)
def test_bench_table_paper_shows_every_published_row_as_printed(rendered, number):
    if not PAPER_MD.is_file():
        pytest.skip(f"{PAPER_MD} is absent")
    paper = _as_printed(_section(PAPER_MD.read_text(encoding="utf-8"), re.compile(rf"## Table {number}:")))
    ours = _section(rendered, re.compile(rf"### Table {number} as published"))
    assert [ours[0][0].lower(), *ours[0][1:]] == paper[0]  # the paper's column headers, in its order
    assert ours[1:] == paper[1:]  # every row label and value, in the paper's row order


def test_published_tables_follow_ours_and_only_with_paper(bench, tmp_path):
    write(tmp_path, batch("base_q", 0.02))
    code, out, _ = bench("table", tmp_path)
    assert code == 0 and "as published" not in out
    code, out, _ = bench("table", "--paper", tmp_path)
    assert code == 0
    titles = [line for line in out.splitlines() if line.startswith("### ")]
    assert titles == [
        "### Table 1 — batch injection, QA-F1 (fictional, profile quick)",
        "### Table 1 as published — batch injection, PwC, average QA-F1",
        "### Table 2 — conversational recommendation",  # no results: the placeholder, then the paper's
        "### Table 2 as published — conversational recommendation, Recall@1 (Mistral-7B)",
        "### Table 3 — sequential injection",  # the paper's per-step values are not transcribed
        "### Table 4 — target-sentence generator ablation",
        "### Table 4 as published — ablation of the model that writes the target sentences (batch, QA-F1)",
    ]
    assert out.count("at the paper's scale") == 3


def _paper_column(runs: list[dict]) -> dict[str, str]:
    (table,) = table1(runs, paper=True)
    column = table.headers.index("paper")
    return {row[0]: row[column] for row in table.rows}


def test_the_paper_column_finds_a_plugins_row_through_its_paper_rows(registrations):
    @register_method("my-retriever")
    class MyRetriever(Method):
        display_name = "My Retriever"
        paper_rows = ("DPR",)  # the paper reports it as its DPR row

    @register_method("my-unpublished")
    class MyUnpublished(Method):
        display_name = "My Unpublished"

    at = {"dataset": "pwc", "model": "meta-llama/Meta-Llama-3-8B", "num_contexts": 500}
    old = batch("my-retriever", 0.3, **at)  # method_info from before paper_rows: the class answers
    old["method_info"] = {"display_name": "My Retriever"}
    alone = batch("not-installed", 0.25, **at)  # no class: the result file alone names the row
    alone["method_info"] = {"display_name": "Not Installed", "paper_rows": ["no such row", "BM25"]}
    cells = _paper_column([batch("my-unpublished", 0.2, **at), old, alone])
    assert cells == {
        "My Retriever": f"{PAPER_TABLE1.value('DPR', ('Llama3-8B', 500)):.4f}",
        "Not Installed": f"{PAPER_TABLE1.value('BM25', ('Llama3-8B', 500)):.4f}",
        "My Unpublished": "—",
    }
    assert MyRetriever.paper_rows and not MyUnpublished.paper_rows


def test_a_published_row_without_a_value_in_that_column_shows_missing(registrations):
    @register_method("my-memory")
    class MyMemory(Method):
        display_name = "My Memory"
        paper_rows = ("MemoryLLM-8B",)  # reported for Llama3-8B only

    at = {"dataset": "pwc", "num_contexts": 100}
    llama = _paper_column([batch("my-memory", 0.1, model="meta-llama/Meta-Llama-3-8B", **at)])
    mistral = _paper_column([batch("my-memory", 0.1, model="mistralai/Mistral-7B-v0.1", **at)])
    assert llama["My Memory"] == f"{PAPER_TABLE1.value('MemoryLLM-8B', ('Llama3-8B', 100)):.4f}"
    assert mistral["My Memory"] == "—"


def test_the_paper_sweeps_models_are_the_papers_columns():
    ids = ("openlm-research/open_llama_3b_v2", "mistralai/Mistral-7B-v0.1", "meta-llama/Meta-Llama-3-8B")
    names = [paper_model(model) for model in ids]
    assert names == ["OpenLLaMA-3B-v2", "Mistral-7B", "Llama3-8B"]
    assert {model for model, _ in PAPER_TABLE1.columns} == set(names)
    assert {model for model, _ in PAPER_TABLE4.columns} <= set(names)
    assert paper_model("openlm-research/open_llama_3b") is None  # v1 is not the paper's model


def _string_literals(path: Path) -> set[str]:
    """The string constants of a module, docstrings left out (comments are not in the tree)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    }


def test_core_and_tables_code_name_no_built_in_method_or_task():
    names = set(METHODS.names()) | set(TASKS.names())
    assert {"selfparam", "base_q", "batch"} <= names  # discovery ran
    files = [*(REPO / "leaderboard").glob("*.py"), *(REPO / "benchmark").rglob("*.py")]
    found = {str(path.relative_to(REPO)): sorted(names & _string_literals(path)) for path in sorted(files)}
    assert {name: hits for name, hits in found.items() if hits} == {}
