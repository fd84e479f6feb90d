"""The lm-eval tasks: listed by lm-eval, run end to end, scored exactly as the harness scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark.metrics import qa_acc, qa_f1
from benchmark.models import first_answer_line
from benchmark.types import QA, Document, Prompt
from tasks.lm_eval import QA_TASKS, TASKS_DIR, task_names
from tasks.lm_eval.export import export_qa, read_export
from tasks.qa import per_context, summarize_contexts

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.model import LM as LMEvalModel  # noqa: E402


@pytest.fixture(scope="module")
def manager_factory():
    from benchmark.app.commands.lm_eval import task_manager

    return task_manager


def harness_means(samples: list[dict]) -> dict[str, float]:
    """The harness's scorer (tasks.qa) on lm-eval's logged answers."""
    records = []
    for s in samples:
        prediction = first_answer_line(s["resps"][0][0])
        records.append(
            {
                "context_id": s["doc"]["context_id"],
                "f1": qa_f1(prediction, s["doc"]["answers"]),
                "acc": qa_acc(prediction, s["doc"]["answers"]),
            }
        )
    scores = summarize_contexts(list(per_context(records).values()), seed=0)
    return {"f1": scores["qa_f1"]["mean"], "acc": scores["acc"]["mean"]}


def test_tasks_are_listed_by_lm_eval(manager_factory):
    manager = manager_factory()
    assert set(task_names()) <= set(manager.all_subtasks)
    assert {"selfparam", "selfparam_qa", "selfparam_cq"} <= set(manager.all_tags)


def test_yaml_files_are_package_data():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"tasks.lm_eval" = ["*.yaml", "*_yaml"]' in text
    for name in task_names():
        assert (TASKS_DIR / f"{name}.yaml").is_file()


def test_tiny_model_end_to_end(tmp_path, tiny_lm, manager_factory):
    """Exported with the harness's prompts, run by lm-eval's HFLM: the same answers and scores."""
    from lm_eval.models.huggingface import HFLM

    from tasks.data.fictional import Fictional

    documents = Fictional(seed=0).documents(3)
    export_qa("fictional", tmp_path, documents=documents, lm=tiny_lm)
    rows = read_export(tmp_path / "fictional.json")["rows"]
    assert rows and all(r["prompt"].startswith(tiny_lm.tokenizer.bos_token) for r in rows)

    model = HFLM(pretrained=tiny_lm.model, tokenizer=tiny_lm.tokenizer, batch_size=8, max_length=tiny_lm.max_length)
    results = lm_eval.simple_evaluate(
        model=model,
        tasks=["selfparam_fictional"],
        task_manager=manager_factory(tmp_path),
        log_samples=True,
        verbosity="ERROR",
        bootstrap_iters=0,
    )
    samples = results["samples"]["selfparam_fictional"]
    assert len(samples) == len(rows) == sum(len(d.probes) for d in documents)
    scores = results["results"]["selfparam_fictional"]
    expected = harness_means(samples)
    assert scores["f1,none"] == pytest.approx(expected["f1"], abs=1e-12)
    assert scores["acc,none"] == pytest.approx(expected["acc"], abs=1e-12)

    # The harness itself, asked the same questions, gives the same answers (same prompt tokens).
    prompts = [tiny_lm.format_prompt(Prompt(s["doc"]["context_id"], s["doc"]["question"])) for s in samples]
    ours = tiny_lm.generate(prompts, max_new_tokens=10, batch_size=8)
    assert ours == [first_answer_line(s["resps"][0][0]) for s in samples]


class Scripted(LMEvalModel):
    """Answers from a table keyed by prompt: lets the test choose predictions with partial F1."""

    def __init__(self, answers: dict[str, str]) -> None:
        super().__init__()
        self.answers = answers

    def generate_until(self, requests, disable_tqdm: bool = False):
        return [self.answers[r.args[0]] for r in requests]

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError


def test_multi_gold_partial_f1_is_not_binarised(tmp_path, manager_factory):
    documents = [
        Document(
            "c1",
            "Ada Brook lives in Old Harbour. She keeps bees.",
            (
                QA("Where does Ada Brook live?", ("Old Harbour", "the Old Harbour town")),
                QA("What does Ada keep?", ("bees",)),
            ),
        ),
        Document(
            "c2",
            "The Vell tower is 40 metres tall.",
            (QA("How tall is the Vell tower?", ("40 metres", "forty metres")),),
        ),
    ]
    export_qa("fictional", tmp_path, documents=documents)
    rows = read_export(tmp_path / "fictional.json")["rows"]
    replies = {
        "Where does Ada Brook live?": "The answer is: Harbour town\nmore text",  # partial, best vs 2nd gold
        "What does Ada keep?": "goats",
        "How tall is the Vell tower?": "forty metres",
    }
    answers = {r["prompt"]: replies[r["question"]] for r in rows}
    results = lm_eval.simple_evaluate(
        model=Scripted(answers),
        tasks=["selfparam_fictional"],
        task_manager=manager_factory(tmp_path),
        log_samples=True,
        verbosity="ERROR",
        bootstrap_iters=0,
    )
    scores = results["results"]["selfparam_fictional"]
    expected = harness_means(results["samples"]["selfparam_fictional"])
    # c1: mean(F1("Harbour town", best gold) = 0.8, 0) = 0.4; c2: 1.0 -> mean over contexts 0.7
    assert expected["f1"] == pytest.approx(0.7)
    assert scores["f1,none"] == pytest.approx(expected["f1"])
    assert scores["acc,none"] == pytest.approx(expected["acc"]) == pytest.approx(0.5)
    assert scores["em,none"] == pytest.approx(0.5)


def test_missing_data_file_is_exported_automatically(tmp_path, manager_factory):
    manager = manager_factory(tmp_path)
    loaded = manager.load(["selfparam_fictional_cq"])
    task = loaded["tasks"]["selfparam_fictional_cq"]
    docs = list(task.test_docs())
    saved = json.loads((tmp_path / "fictional.json").read_text())
    assert saved["contexts"] == 20 and len(docs) == len(saved["rows"])
    assert task.doc_to_text(docs[0]).startswith("Context: ")  # the C+Q oracle's prompt


def test_bench_lm_eval_cli(tmp_path, bench):
    code, out, err = bench("lm-eval", "--list")
    assert code == 0, err
    assert "selfparam_fictional" in out and str(TASKS_DIR) in out
    code, out, err = bench("lm-eval", "--export", "--data-dir", tmp_path, "--contexts", "4")
    assert code == 0, err
    assert read_export(tmp_path / "fictional.json")["contexts"] == 4
    code, out, err = bench(
        "lm-eval",
        "--profile",
        "smoke",
        "--method",
        "base_cq",
        "--data-dir",
        tmp_path,
        "--output",
        tmp_path / "scores.json",
    )
    assert code == 0, err
    report = json.loads((tmp_path / "scores.json").read_text())
    entry = report["tasks"]["selfparam_fictional"]
    assert entry["lm_eval"]["f1"] == pytest.approx(entry["harness_on_lm_eval_predictions"]["f1"])
    assert entry["identical_predictions"] == entry["questions"] > 0
    assert "harness answers and scorer" in out
    code, _, err = bench("lm-eval", "--profile", "smoke", "--dataset", "nope.jsonl")
    assert code == 2 and "no lm-eval task reads dataset" in err
    assert set(QA_TASKS.values()) == {"fictional", "squad", "pwc"}


def test_recommendation_task_scores_like_the_harness(tmp_path, shared_data, manager_factory):
    """Recall@1 r1..r4 from lm-eval equal the harness's CRS scorer on the same replies."""
    pytest.importorskip("tasks.recommendation")
    from tasks.crs_scoring import FILTERS, TitleMatcher, parse_recommendations, score_list
    from tasks.lm_eval.export_rec import export_recommendation

    if not (shared_data / "crs" / "inspired").is_dir():
        pytest.skip("no INSPIRED recommendation data")
    export_recommendation("inspired", tmp_path, limit=6)
    payload = read_export(tmp_path / "inspired.json")
    rows = payload["rows"]
    # Right first title for even rows (misspelt by one letter), a wrong one for odd rows.
    replies = {
        r["prompt"]: (f"1. {r['gold'][0][:-1]}x\n2. Titanic" if i % 2 == 0 else "1. Titanic\n2. Heat")
        for i, r in enumerate(rows)
    }
    results = lm_eval.simple_evaluate(
        model=Scripted(replies),
        tasks=["selfparam_inspired"],
        task_manager=manager_factory(tmp_path),
        log_samples=True,
        verbosity="ERROR",
        bootstrap_iters=0,
    )
    scores = results["results"]["selfparam_inspired"]

    matcher = TitleMatcher(payload["catalogue"])
    hits: dict[str, list[int]] = {name: [] for name in FILTERS}
    for r in rows:
        matched = matcher.match(matcher.joined(parse_recommendations(replies[r["prompt"]]), payload["max_distance"]))
        for name, by_k in score_list(matched, r["gold"], r["seen"], payload["max_distance"]).items():
            hits[name] += by_k["1"]
    for name in FILTERS:
        assert scores[f"recall@1_{name},none"] == pytest.approx(sum(hits[name]) / len(hits[name]))
    assert 0 < scores["recall@1_r1,none"] < 1
