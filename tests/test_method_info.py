"""Method metadata (row name, family, storage class, row order, role): declared on the class,
written into result files, read by the tables and the leaderboard."""

from __future__ import annotations

import json

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
    assert info.paper_rows == () and MethodInfo.of_class(BaseQ).paper_rows == ("Base, Q", "Base")
    assert (info.family, info.storage_class) == ("reference", "O(1)")  # these are inherited


def test_unknown_storage_class_or_role_is_refused_when_the_class_is_defined():
    with pytest.raises(TypeError, match=r"storage_class is 'O\(n\^2\)'"):

        class Quadratic(Method):
            storage_class = "O(n^2)"

    with pytest.raises(TypeError, match="role is 'roof'"):

        class Roof(Method):
            role = "roof"

    with pytest.raises(TypeError, match="paper_rows is 'DPR'; use a tuple"):

        class OneLabel(Method):
            paper_rows = "DPR"


def test_a_result_files_method_info_round_trips_and_tolerates_gaps():
    info = MethodInfo("mine", "Mine", "retrieval", "O(n)", 5, "", ("DPR",))
    assert MethodInfo.from_record("mine", info.record()) == info
    assert MethodInfo.from_record("mine", json.loads(json.dumps(info.record()))) == info
    assert MethodInfo.from_record("mine", {"table_order": "5", "storage_class": None}) == MethodInfo("mine", "mine")
    assert MethodInfo.from_record("mine", {"paper_rows": "DPR"}).paper_rows == ()


def test_the_runner_writes_method_info_into_the_result_file(tmp_path):
    from benchmark.runner import RunRequest, run

    outcome = run(RunRequest(method="base_q", task="batch", profile="smoke", out=tmp_path))
    assert outcome.result["method_info"] == {
        "display_name": "Base, Q",
        "family": "reference",
        "storage_class": "O(1)",
        "table_order": 20,
        "role": "floor",
        "paper_rows": ["Base, Q", "Base"],
        "stand_in": "",
    }
    assert '"method_info"' in outcome.path.read_text()


def test_tables_read_the_result_files_method_info_before_the_registered_class():
    from resultfiles import batch

    from leaderboard.tables import table1

    unregistered = batch("not-installed", 0.3)
    unregistered["method_info"] = {"display_name": "Not Installed", "storage_class": "O(n)", "table_order": 25}
    renamed = batch("base_q", 0.1)  # a newer file's method_info wins over the class for the whole row
    renamed["method_info"] = {**MethodInfo.of_class(BaseQ).record(), "display_name": "Base (Q only)"}
    (table,) = table1([batch("ft_context", 0.2), unregistered, batch("unknown", 0.4), renamed])
    assert [row[:2] for row in table.rows] == [
        ["Base (Q only)", "O(1)"],
        ["Not Installed", "O(n)"],
        ["FT (C)", "O(1)"],
        ["unknown", "—"],
    ]


def test_a_stand_in_is_marked_with_its_note_in_every_table_and_on_the_leaderboard():
    from resultfiles import batch, sequential

    from leaderboard.board import board_table, boards
    from leaderboard.tables import table1, table3
    from methods.memoryllm import MemoryLLMMini

    assert MemoryLLMMini.stand_in and not MethodInfo.of_class(METHODS.get("memoryllm")).stand_in

    class Variant(MemoryLLMMini):  # a subclass is its own method: it does not inherit the note
        pass

    assert MethodInfo.of_class(Variant).stand_in == ""
    old = batch("memoryllm-mini", 0.1)  # written before result files carried stand_in: the class says
    old["method_info"] = {k: v for k, v in MethodInfo.of_class(MemoryLLMMini).record().items() if k != "stand_in"}
    runs = [batch("base_q", 0.0), old]
    (table,) = table1(runs)
    (board,) = boards(runs)
    steps = [sequential("memoryllm-mini", [0.0, 0.1]), sequential("base_q", [0.0, 0.0])]
    note = f"‡ MemoryLLM (mini) is a stand-in: {MemoryLLMMini.stand_in}"
    for shown in (table, board_table(board), *table3(steps)):
        names = [cell for row in shown.rows for cell in row if "MemoryLLM" in cell or "Base" in cell]
        assert sorted(names) == ["Base, Q", "MemoryLLM (mini) ‡"]
        assert shown.notes.count(note) == 1
    (plain,) = table1([batch("base_q", 0.0)])
    assert not any("stand-in" in n for n in plain.notes)


# ---- a method from an outside package, as a third party adds one -------------------------------
PLUGIN = """
from methods.base import Method


class MyPlugin(Method):
    description = "an outside package's method (the untouched model, under another name)"
    display_name = "My Plug-in"
    storage_class = "O(n)"
"""

# Runs in a fresh interpreter, so the entry points are read as a user's `bench` reads them.
SCRIPT = """
import json, shutil, sys
from pathlib import Path
from benchmark.app.cli import main

out = Path(sys.argv[1])
for method in ("base_q", "my-plugin"):
    assert main(["run", "--method", method, "--task", "batch", "--profile", "smoke", "--out", str(out / "runs")]) == 0
# a file written before result files carried method_info: the registered class answers for it
old = out / "old"
for path in (out / "runs").rglob("*.json"):
    data = json.loads(path.read_text())
    del data["method_info"]
    target = old / path.relative_to(out / "runs")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data))
for name in ("runs", "old"):
    assert main(["table", "--table", "1", "--output", str(out / f"table-{name}.md"), str(out / name)]) == 0
    assert main(["leaderboard", "--results", str(out / name), "--out", str(out / f"board-{name}")]) == 0
"""


def _rows(markdown: str, method: str, column: int = 0) -> list[list[str]]:
    """The markdown table rows whose ``column`` shows ``method`` (as text or as a link's text)."""
    rows = []
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) > column and cells[column].split("](")[0].lstrip("[") == method:
            rows.append(cells)
    return rows


def _bench(tmp_path, code: str, *args: str, plugin: bool) -> None:
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    paths = [str(tmp_path / "site")] * plugin + [env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(paths).strip(os.pathsep)
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_an_outside_packages_method_shows_its_name_and_storage_class_everywhere(tmp_path):
    """An installed package declares one method through the ``selfparam_bench.methods`` entry point;
    without any file of this repository edited, it runs, and ``bench table`` and ``bench leaderboard``
    show its row name and storage class: from the result file, and from the class for older files."""
    site = tmp_path / "site"
    (site / "my_plugin").mkdir(parents=True)
    (site / "my_plugin" / "__init__.py").write_text(PLUGIN)
    dist = site / "my_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[selfparam_bench.methods]\nmy-plugin = my_plugin:MyPlugin\n")
    out = tmp_path / "out"
    _bench(tmp_path, SCRIPT, str(out), plugin=True)

    (written,) = (out / "runs").rglob("my-plugin__*.json")
    assert json.loads(written.read_text())["method_info"] == {
        "display_name": "My Plug-in",
        "family": "",
        "storage_class": "O(n)",
        "table_order": DEFAULT_TABLE_ORDER,
        "role": "",
        "paper_rows": [],
        "stand_in": "",
    }
    for name in ("runs", "old"):
        table = (out / f"table-{name}.md").read_text()
        assert [row[:2] for row in _rows(table, "Base, Q") + _rows(table, "My Plug-in")] == [
            ["Base, Q", "O(1)"],
            ["My Plug-in", "O(n)"],
        ], table  # the built-in first, then the plug-in
        assert "my-plugin" not in table
        page = (out / f"board-{name}" / "README.md").read_text()
        ranked = [row[2].split("](")[0].lstrip("[") for row in _rows(page, "smoke", column=3)]
        assert ranked == ["Base, Q", "My Plug-in"] and "Δ vs Base, Q [95% CI]" in page  # the ranked board
        assert [row[:2] for row in _rows(page, "My Plug-in")] == [["My Plug-in", "O(n)"]]  # the paper's Table 1
        assert "my-plugin" not in page.replace("my-plugin__smoke", "")  # only in links to its result file

    # without the package installed, the result file alone still names the method and its class S
    _bench(
        tmp_path,
        "import sys\nfrom benchmark.app.cli import main\n"
        "sys.exit(main(['table', '-t', '1', '-o', sys.argv[1] + '/alone.md', sys.argv[1] + '/runs']))",
        str(out),
        plugin=False,
    )
    assert [row[:2] for row in _rows((out / "alone.md").read_text(), "My Plug-in")] == [["My Plug-in", "O(n)"]]
