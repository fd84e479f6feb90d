"""Bad input: one line on stderr naming the problem, exit code 2, no traceback, no result file."""

import json

import pytest


def assert_clean_error(result, *needles, out_dir=None):
    code, out, err = result
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bench: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    if out_dir is not None:
        assert not [p for p in out_dir.rglob("*") if p.is_file()]


def smoke(*args):
    return ("run", "--profile", "smoke", *args)


@pytest.mark.parametrize(
    "args, needle",
    [
        (("--method", "nope", "--task", "batch"), "unknown method 'nope'"),
        (("--method", "base_q", "--task", "nope"), "unknown task 'nope'"),
        (("--method", "base_q", "--task", "batch", "--dataset", "nope"), "unknown dataset 'nope'"),
        (("--method", "base_q", "--task", "batch", "--model", "/no/such/model"), "cannot load model"),
        (("--method", "base_q", "--task", "batch", "--set", "nope=1"), "unknown --set key 'nope'"),
        (("--method", "base_q", "--task", "batch", "--set", "num_contexts=many"), "not an integer"),
        (("--method", "base_q", "--task", "batch", "--set", "task.nope=1"), "task has no 'nope'"),
        (("--method", "base_q", "--task", "batch", "--set", "novalue"), "expected key=value"),
        (("--method", "base_q", "--task", "batch", "--set", "precision=fp8"), "unknown precision"),
    ],
)
def test_bad_names_and_settings(bench, tmp_path, args, needle):
    assert_clean_error(bench(*smoke(*args), "--out", tmp_path), needle, out_dir=tmp_path)


def write_jsonl(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


GOOD = {
    "id": "c1",
    "context": "Ann lives in Rome.",
    "probes": [{"question": "Where does Ann live?", "answers": ["Rome"]}],
    "train_qa": [{"question": "Ann's home city?", "answer": "Rome"}],
}


def test_malformed_data_file_names_file_and_line(bench, tmp_path):
    data = write_jsonl(tmp_path / "bad.jsonl", [GOOD, "{not json"])
    out = tmp_path / "out"
    assert_clean_error(
        bench(
            *smoke("--method", "base_q", "--task", "batch", "--dataset", data, "--set", "num_contexts=1", "--out", out)
        ),
        f"{data}:2",
        "malformed JSON",
        out_dir=out,
    )


def test_empty_context_is_rejected(bench, tmp_path):
    data = write_jsonl(tmp_path / "empty.jsonl", [GOOD, {**GOOD, "id": "c2", "context": "   "}])
    out = tmp_path / "out"
    assert_clean_error(
        bench(
            *smoke("--method", "base_q", "--task", "batch", "--dataset", data, "--set", "num_contexts=2", "--out", out)
        ),
        f"{data}:2",
        "'context' is empty",
        out_dir=out,
    )


def test_missing_field_is_rejected(bench, tmp_path):
    data = write_jsonl(tmp_path / "noprobe.jsonl", [{**GOOD, "probes": [{"question": "Where?"}]}])
    assert_clean_error(
        bench(
            *smoke(
                "--method",
                "base_q",
                "--task",
                "batch",
                "--dataset",
                data,
                "--set",
                "num_contexts=1",
                "--out",
                tmp_path / "o",
            )
        ),
        f"{data}:1",
        "no answer",
    )


def test_context_longer_than_the_model_window(bench, tmp_path):
    long_text = "Ann lives in Rome. " * 400  # far over the tiny model's 512 positions
    data = write_jsonl(tmp_path / "long.jsonl", [{**GOOD, "context": long_text}])
    out = tmp_path / "out"
    assert_clean_error(
        bench(
            *smoke("--method", "base_cq", "--task", "batch", "--dataset", data, "--set", "num_contexts=1", "--out", out)
        ),
        "context 'c1'",
        "longer than model 'tiny-random-llama'",
        out_dir=out,
    )


def test_too_few_contexts(bench, tmp_path):
    data = write_jsonl(tmp_path / "one.jsonl", [GOOD])
    assert_clean_error(
        bench(
            *smoke(
                "--method",
                "base_q",
                "--task",
                "batch",
                "--dataset",
                data,
                "--set",
                "num_contexts=5",
                "--out",
                tmp_path / "o",
            )
        ),
        "fewer than the 5 asked for",
    )


def test_own_jsonl_data_set_runs(bench, tmp_path):
    data = write_jsonl(tmp_path / "ok.jsonl", [GOOD, {**GOOD, "id": "c2"}])
    code, out, err = bench(
        *smoke(
            "--method",
            "base_cq",
            "--task",
            "batch",
            "--dataset",
            data,
            "--set",
            "num_contexts=2",
            "--out",
            tmp_path / "o",
        )
    )
    assert code == 0, err
    assert "qa_f1" in out
