"""The sequential task: step count, matrix shape and values, fresh methods, step-0 probing, sizes."""

import json
import logging

import numpy as np
import pytest

from benchmark.registry import register_method
from benchmark.runner import RunRequest, run
from benchmark.schema import nested_scores
from benchmark.types import Document
from methods.base import Method
from tasks.data.base import split_of
from tasks.data.qa_jsonl import QAJsonl
from tasks.qa import load_documents

EVENTS: list[tuple[int, str, list[str]]] = []  # (instance number, "inject" | "generate", context ids)


def gold_answers(dataset: str = "fictional", limit: int = 20) -> dict[str, str]:
    return {qa.question: qa.answers[0] for d in load_documents(dataset, "", limit, 0) for qa in d.probes}


@pytest.fixture
def recording_methods(registrations):
    """Two test methods that never call the model: one remembers every injected context, one only
    the latest. Both answer a probe with its gold answer iff they remember the probe's context,
    and log every call with the instance that made it."""
    gold: dict[str, str] = {}
    instances: list[Method] = []

    class Recording(Method):
        keep_all = True

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.number = len(instances)
            self.memory: list[str] = []
            instances.append(self)

        def inject(self, contexts):
            ids = [c.id for c in contexts]
            EVENTS.append((self.number, "inject", ids))
            self.memory = self.memory + ids if self.keep_all else ids

        def generate(self, prompts):
            EVENTS.append((self.number, "generate", sorted({p.id for p in prompts})))
            return [gold[p.question] if p.id in self.memory else "" for p in prompts]

    register_method("test-remember-all")(type("RememberAll", (Recording,), {"keep_all": True}))
    register_method("test-remember-last")(type("RememberLast", (Recording,), {"keep_all": False}))
    EVENTS.clear()
    return gold, instances


def run_seq(tmp_path, lm, method="test-remember-all", dataset=None, **sizes):
    overrides = {k: str(v) for k, v in sizes.items()}
    request = RunRequest(
        method=method, task="sequential", dataset=dataset, profile="smoke", out=tmp_path, overrides=overrides
    )
    return run(request, lm=lm)


def test_step_count_and_matrix_shape(tmp_path, recording_methods, tiny_lm):
    gold, _ = recording_methods
    gold.update(gold_answers())
    outcome = run_seq(tmp_path, tiny_lm, num_sequences=2, sequence_length=4)
    data = json.loads(outcome.path.read_text())
    scores = nested_scores(data)
    assert (scores["num_sequences"], scores["sequence_length"]) == (2, 4)
    assert len(data["episodes"]) == 2
    for record in data["episodes"]:
        assert [s["step"] for s in record["steps"]] == [0, 1, 2, 3, 4]
        assert [s["injected"] for s in record["steps"]] == [None] + record["context_ids"]
        for step in record["steps"]:  # every step probes every context of the sequence
            assert set(step["per_context"]) == set(record["context_ids"])
            assert {p["context_id"] for p in step["predictions"]} == set(record["context_ids"])
    for metric in ("qa_f1", "acc"):
        matrix = scores["matrix"][metric]
        assert len(matrix) == 5 and all(len(row) == 4 for row in matrix)
        # remembered contexts score 1, the others 0: the matrix is strictly lower triangular
        assert matrix == [[1.0 if j < s else 0.0 for j in range(4)] for s in range(5)]
    assert [round(s["qa_f1"]["mean"], 6) for s in scores["steps"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert scores["steps"][0]["qa_f1"]["n"] == 2  # intervals resample the 2 sequences
    assert scores["qa_f1"] == scores["steps"][-1]["qa_f1"]
    assert scores["efficacy"]["qa_f1"]["mean"] == 1.0
    assert [r["qa_f1"]["mean"] for r in scores["retention"]] == [1.0, 1.0, 1.0, 1.0]
    assert [r["qa_f1"]["n"] for r in scores["retention"]] == [2, 2, 2, 2]
    assert [r["gain"]["qa_f1"]["mean"] for r in scores["retention"]] == [1.0, 1.0, 1.0, 1.0]
    assert scores["efficacy_gain"]["acc"]["mean"] == 1.0
    assert scores["before"]["qa_f1"]["mean"] == 0.0


def test_retention_by_distance_sees_forgetting(tmp_path, recording_methods, tiny_lm):
    gold, _ = recording_methods
    gold.update(gold_answers())
    done = run_seq(tmp_path, tiny_lm, method="test-remember-last", num_sequences=2, sequence_length=3)
    scores = nested_scores(done.result)
    assert scores["efficacy"]["qa_f1"]["mean"] == 1.0
    assert [r["qa_f1"]["mean"] for r in scores["retention"]] == [1.0, 0.0, 0.0]
    assert scores["retention_mean"]["qa_f1"]["mean"] == 0.0
    assert scores["interference"]["mean"] == 0.0  # forgetting answers nothing, not the wrong facts
    assert [r["gain"]["qa_f1"]["mean"] for r in scores["retention"]] == [1.0, 0.0, 0.0]
    assert [round(s["qa_f1"]["mean"], 6) for s in scores["steps"]] == [
        0.0,
        round(1 / 3, 6),
        round(1 / 3, 6),
        round(1 / 3, 6),
    ]
    # each sequence's own efficacy, mean retention and interference (what seeds are pooled by)
    episodes = done.result["episodes"]
    assert [e["per_episode"]["efficacy.qa_f1"] for e in episodes] == [1.0, 1.0]
    assert [e["per_episode"]["retention_mean.qa_f1"] for e in episodes] == [0.0, 0.0]
    assert [e["per_episode"]["interference"] for e in episodes] == [0.0, 0.0]


def test_fresh_method_per_sequence_and_step0_probes_first(tmp_path, recording_methods, tiny_lm):
    gold, instances = recording_methods
    gold.update(gold_answers())
    outcome = run_seq(tmp_path, tiny_lm, num_sequences=3, sequence_length=3)
    assert len(instances) == 3 and len({id(m) for m in instances}) == 3
    sequences = [r["context_ids"] for r in outcome.result["episodes"]]
    assert len({c for seq in sequences for c in seq}) == 9  # disjoint slices of the data
    for number, seq in enumerate(sequences):
        calls = [(kind, ids) for n, kind, ids in EVENTS if n == number]
        # probes of all contexts first (step 0), then one injection and a full probe per step
        expected = [("generate", sorted(seq))]
        for context in seq:
            expected += [("inject", [context]), ("generate", sorted(seq))]
        assert calls == expected
        assert instances[number].memory == seq  # it saw its own sequence and nothing else


def test_fewer_contexts_than_asked_uses_what_exists(tmp_path, recording_methods, tiny_lm, caplog):
    gold, _ = recording_methods
    path = tmp_path / "three.jsonl"
    lines = []
    # three contexts of the test split (the part of a file that sequential runs on)
    items = [i for i in range(20) if split_of(Document("", f"Item {i} is blue.", ()), QAJsonl.dev_fraction) == "test"][
        :3
    ]
    for i in items:
        lines.append(
            json.dumps(
                {
                    "id": f"c{i}",
                    "context": f"Item {i} is blue.",
                    "probes": [{"question": f"What colour is item {i}?", "answers": ["blue"]}],
                }
            )
        )
        gold[f"What colour is item {i}?"] = "blue"
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="tasks.sequential"):
        scores = nested_scores(run_seq(tmp_path, tiny_lm, dataset=str(path), num_sequences=2, sequence_length=2).result)
    assert (scores["num_sequences"], scores["sequence_length"]) == (1, 2)
    assert "fewer than the 2 x 2 asked for" in caplog.text
    scores = nested_scores(run_seq(tmp_path, tiny_lm, dataset=str(path), num_sequences=1, sequence_length=5).result)
    assert (scores["num_sequences"], scores["sequence_length"]) == (1, 3)
    assert len(scores["matrix"]["qa_f1"]) == 4


def test_cli_prints_step_table_and_retention(tmp_path, recording_methods, bench):
    gold, _ = recording_methods
    gold.update(gold_answers())
    code, out, err = bench(
        "run", "--method", "test-remember-last", "--task", "sequential", "--profile", "smoke", "--out", tmp_path
    )
    assert code == 0, err
    assert "step (injected)" in out and "retention" in out and "efficacy qa_f1 1.0000" in out
    assert "qa_f1 matrix" in out


def test_squad_sequences_from_shared_data(tmp_path, recording_methods, tiny_lm, shared_data):
    if not (shared_data / "squad" / "dev-v1.1.part_a.json").is_file():
        pytest.skip("shared SQuAD copy is absent")
    gold, instances = recording_methods
    gold.update(gold_answers("squad", 4))
    outcome = run_seq(tmp_path, tiny_lm, dataset="squad", num_sequences=2, sequence_length=2)
    scores = nested_scores(outcome.result)
    assert outcome.result["dataset"] == "squad"
    ids = [d.id for d in load_documents("squad", "", 4, 0)]  # test split, spread over articles
    assert len({i.rsplit("-", 1)[0] for i in ids}) == 4
    assert [r["context_ids"] for r in outcome.result["episodes"]] == [ids[:2], ids[2:]]
    assert scores["matrix"]["qa_f1"] == [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]


def _step(injected, answers):
    """A step record: ``answers`` maps (context id, gold) to the prediction given."""
    return {
        "injected": injected,
        "predictions": [
            {"context_id": c, "answers": [gold], "prediction": pred} for (c, gold), pred in answers.items()
        ],
    }


def test_interference_counts_answers_that_give_the_injected_contexts_facts():
    from tasks.sequential import interference

    record = {
        "steps": [
            _step(None, {("a", "Zurubex"): "", ("b", "Kelvar"): "", ("c", "1874"): ""}),
            # a injected: b answers with a's fact (counted), c answers its own gold (not counted)
            _step("a", {("a", "Zurubex"): "Zurubex", ("b", "Kelvar"): "Zurubex.", ("c", "1874"): "1874"}),
            # b injected: a and c answer with b's fact; c's answer also holds its own gold (not counted)
            _step("b", {("a", "Zurubex"): "Kelvar", ("b", "Kelvar"): "Kelvar", ("c", "1874"): "Kelvar 1874"}),
        ]
    }
    assert interference(record) == pytest.approx(2 / 4)
    assert interference({"steps": record["steps"][:1]}) is None


def test_interference_does_not_count_a_fact_the_probed_context_shares():
    from tasks.sequential import interference

    # a and b both have an orange colour; b's diet question answered "orange" is b's own mix-up
    gold = {("a", "orange"): "", ("b", "orange"): "", ("b", "snails"): ""}
    record = {
        "steps": [
            _step(None, gold),
            _step("a", {("a", "orange"): "orange", ("b", "orange"): "orange", ("b", "snails"): "orange"}),
        ]
    }
    assert interference(record) == 0.0
    record["steps"][1] = _step("a", {("a", "orange"): "orange", ("b", "orange"): "grey", ("b", "snails"): "grey"})
    assert interference(record) == 0.0


def test_intervals_resample_whole_sequences():
    """The interval of a step's mean is the bootstrap over the per-sequence means, not over cells."""
    from benchmark.metrics import summarize
    from tasks.sequential import aggregate_sequences

    rng = np.random.default_rng(0)
    cubes = rng.random((4, 3, 2))  # 4 sequences x steps 0..2 x 2 contexts
    records = [{"matrix": {"qa_f1": cube.tolist()}, "steps": []} for cube in cubes]
    scores = aggregate_sequences(records, seed=7)
    assert scores["steps"][1]["qa_f1"] == summarize(cubes[:, 1, :].mean(axis=1).tolist(), seed=7)
    assert scores["steps"][1]["qa_f1"]["n"] == 4
    # retention at distance 1: the context injected at step 1, seen at step 2
    assert scores["retention"][1]["qa_f1"] == summarize(cubes[:, 2, 0].tolist(), seed=7)
    assert scores["efficacy"]["qa_f1"] == summarize(((cubes[:, 1, 0] + cubes[:, 2, 1]) / 2).tolist(), seed=7)
    assert scores["retention_mean"]["qa_f1"] == scores["retention"][1]["qa_f1"]  # L = 2: distance 1 only
    assert "interference" not in scores  # the records hold no step predictions


def test_episode_streams_differ_between_sequences_and_repeat_on_resume(tmp_path, recording_methods, tiny_lm):
    gold, instances = recording_methods
    gold.update(gold_answers())
    run_seq(tmp_path / "a", tiny_lm, num_sequences=3, sequence_length=2)
    first = [m.seed for m in instances]
    assert len(set(first)) == 3  # each sequence draws its own random stream
    instances.clear()
    run_seq(tmp_path / "b", tiny_lm, num_sequences=3, sequence_length=2)
    assert [m.seed for m in instances] == first  # a rerun (or a resumed episode) repeats it


def test_first_context_skips_the_scored_contexts(tmp_path, recording_methods, tiny_lm):
    gold, _ = recording_methods
    gold.update(gold_answers(limit=30))
    episodes = run_seq(tmp_path, tiny_lm, num_sequences=2, sequence_length=2, first_context=20).result["episodes"]
    ids = [c for r in episodes for c in r["context_ids"]]
    assert ids == [d.id for d in load_documents("fictional", "", 24, 0)[20:24]]
