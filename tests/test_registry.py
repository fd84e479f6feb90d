import sys
import textwrap

import pytest

from benchmark.errors import BenchError
from benchmark.registry import METHODS, TASKS, Registry, register_method
from methods.base import Method


def test_builtins_are_registered():
    assert {"base_q", "base_cq"} <= set(METHODS.names())
    assert "batch" in TASKS.names()


def test_unknown_name_is_a_one_line_error_with_suggestion():
    with pytest.raises(BenchError, match=r"unknown method 'base_qq' \(did you mean 'base_q'\?\)"):
        METHODS.get("base_qq")


def test_outside_method_registers_with_the_decorator_and_runs(bench, tmp_path, registrations):
    @register_method("test-echo")
    class Echo(Method):
        description = "answers with the question's first word"

        def generate(self, prompts):
            return [p.question.split()[0] for p in prompts]

    assert METHODS.get("test-echo") is Echo
    code, out, err = bench("run", "--method", "test-echo", "--task", "batch", "--profile", "smoke", "--out", tmp_path)
    assert code == 0, err
    assert "test-echo on batch/fictional" in out


def test_entry_point_group_adds_a_method_without_core_edits(tmp_path, monkeypatch):
    """A package installed elsewhere declares an entry point; the registry loads it lazily."""
    package = tmp_path / "outside_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        textwrap.dedent("""
        from methods.base import Method

        class Outside(Method):
            description = "from an outside package"
    """)
    )
    dist = tmp_path / "outside_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: outside-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[test_selfparam_bench.methods]\noutside = outside_pkg:Outside\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("method", "test_selfparam_bench.methods", "methods", Method)
    assert "outside" in registry.names()
    assert registry.get("outside").description == "from an outside package"
    sys.modules.pop("outside_pkg", None)


def test_a_registry_takes_subclasses_of_its_interface_only(registrations):
    class NotAMethod:
        pass

    with pytest.raises(
        TypeError,
        match=r"cannot register class .*NotAMethod as method 'not-a-method': "
        r"a method must be a subclass of benchmark\.api\.Method",
    ):
        register_method("not-a-method")(NotAMethod)
    with pytest.raises(TypeError, match=r"a task must be a subclass of benchmark\.api\.Task"):
        TASKS.register("a-method-as-task")(Method)
    with pytest.raises(TypeError, match=r"cannot register <function .*> as method 'a-function'"):
        register_method("a-function")(lambda: None)
    assert "not-a-method" not in METHODS and "a-method-as-task" not in TASKS


def test_bench_list_shows_methods_tasks_and_availability(bench):
    code, out, _ = bench("list", "--params")
    assert code == 0
    for name in ("base_q", "base_cq", "batch", "fictional"):
        assert name in out
    assert "runs here" in out
    assert "num_contexts" in out  # --params lists task parameters
