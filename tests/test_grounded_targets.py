"""Grounded target sentences: the +grounded filter, the model-free cloze generator, the grounding
rate in results, and cache keys that tell generators and filters apart."""

from __future__ import annotations

import json
import logging

import pytest

from benchmark import generation
from benchmark.config import RunParams
from benchmark.errors import BenchError
from benchmark.grounding import grounding_counts, is_grounded, keep_grounded, split_generator
from benchmark.metrics import normalize_answer
from benchmark.targets import check_no_leakage, cloze_targets, context_sentences, make_targets, salient_spans
from benchmark.types import QA, Document
from tasks.batch import BatchParams, BatchTask
from tasks.qa import load_documents

TEXT = (
    "Douprur is a town. It was founded by Drexrain Lintrim in 1526. The Mirren lighthouse stands north of Port Ansel."
)
DOC = Document(
    "d0",
    TEXT,
    (QA("Who founded Douprur?", ("Drexrain Lintrim",)),),
    (QA("Which person established Douprur?", ("Drexrain Lintrim",)), QA("What colour is Douprur's flag?", ("green",))),
)


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFPARAM_BENCH_CACHE", str(tmp_path / "cache"))


# ---- the filter ----------------------------------------------------------------------------------


def test_the_filter_keeps_exactly_the_pairs_whose_answer_is_in_the_context():
    grounded = [
        "Question: Who founded Douprur? Answer: Drexrain Lintrim",
        "Question: When was it founded? Answer: In 1526.",  # "in 1526" occurs once normalised
        "Question: What is Douprur? Answer: A TOWN!",  # case, article and punctuation do not matter
        "Question: Where is the lighthouse? Answer: north of Port Ansel",
    ]
    ungrounded = [
        "Question: When was it founded? Answer: 1527",
        "Question: Which digit starts its founding year? Answer: 1",  # whole words only: not in "1526"
        "Question: Who? Answer: Lin",  # not a word of the context
        "Question: What is it? Answer: the",  # nothing left once normalised
        "Question: What is Douprur?",  # no answer at all
        "Question: Where is Douprur? Answer: in Wales",
    ]
    sentences = [
        ungrounded[0],
        grounded[0],
        ungrounded[1],
        grounded[1],
        ungrounded[2],
        grounded[2],
        ungrounded[3],
        ungrounded[4],
        grounded[3],
        ungrounded[5],
    ]
    assert keep_grounded(TEXT, sentences) == grounded
    assert grounding_counts(TEXT, sentences) == {"sentences": 10, "grounded": 4}
    assert all(is_grounded(s, TEXT) for s in grounded) and not any(is_grounded(s, TEXT) for s in ungrounded)


def test_the_filter_is_a_suffix_of_any_generator_name():
    assert split_generator("local") == ("local", False)
    assert split_generator("local+grounded") == ("local", True)
    with pytest.raises(BenchError, match="unknown target-sentence filter 'short'"):
        split_generator("local+short")
    with pytest.raises(BenchError, match="unknown target-sentence generator 'nope\\+grounded'"):
        make_targets([DOC], RunParams(targets="nope+grounded"), None, 0)


def test_dataset_plus_grounded_drops_the_data_sets_ungrounded_pairs():
    assert make_targets([DOC], RunParams(targets="dataset"), None, 0)["d0"] == [
        "Question: Which person established Douprur? Answer: Drexrain Lintrim",
        "Question: What colour is Douprur's flag? Answer: green",
    ]
    assert make_targets([DOC], RunParams(targets="dataset+grounded"), None, 0)["d0"] == [
        "Question: Which person established Douprur? Answer: Drexrain Lintrim"
    ]


class Tokenizer:
    chat_template = None  # a raw prompt ending in "Question:"


class FakeLM:
    """Stands in for the instruct model: one canned reply per prompt, in order."""

    name = "fake-instruct"
    tokenizer = Tokenizer()

    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = 0

    def generate(self, prompts, **kwargs):
        self.calls += len(prompts)
        return [self.replies.pop(0) if self.replies else " Nothing? Answer: nothing" for _ in prompts]


def test_local_plus_grounded_asks_again_until_it_has_enough_grounded_pairs():
    replies = [
        " Who founded it? Answer: Nobody\nQuestion: In which year was Douprur founded? Answer: 1526",
        " What is north of Port Ansel? Answer: a lake",
        " What stands north of Port Ansel? Answer: The Mirren lighthouse\nQuestion: Extra? Answer: Douprur",
    ]
    lm = FakeLM(replies)
    result = make_targets([DOC], RunParams(targets="local+grounded", num_targets=2), lm, 0)
    assert result["d0"] == [
        "Question: In which year was Douprur founded? Answer: 1526",
        "Question: What stands north of Port Ansel? Answer: The Mirren lighthouse",
    ]
    assert lm.calls == 3
    ungrounded = make_targets([DOC], RunParams(targets="local", num_targets=2), FakeLM(replies), 0)
    assert ungrounded["d0"] == [
        "Question: Who founded it? Answer: Nobody",
        "Question: In which year was Douprur founded? Answer: 1526",
    ]
    again = make_targets([DOC], RunParams(targets="local+grounded", num_targets=2), FakeLM([]), 0)
    assert again == result  # from the cache, not confused with the unfiltered set


def test_asking_for_more_sentences_allows_proportionally_more_replies():
    """The paper's 500 fresh pairs per context must not stop at the rounds that suffice for 10."""
    replies = [f" Question {i}? Answer: {i}" for i in range(40)]  # one new pair a reply
    lm = FakeLM(replies)
    result = make_targets([DOC], RunParams(targets="local", num_targets=25), lm, 0)
    assert generation.rounds_for(25, grounded=False) == 3 * generation.MAX_ROUNDS
    assert lm.calls == 3 * generation.MAX_ROUNDS < 25  # one pair a reply: short after its rounds
    assert len(result["d0"]) == 3 * generation.MAX_ROUNDS
    assert generation.rounds_for(10, grounded=True) == generation.GROUNDED_ROUNDS


def test_a_context_short_of_grounded_pairs_keeps_what_it_has_with_a_warning(caplog):
    lm = FakeLM([" Who founded Douprur? Answer: Drexrain Lintrim"])
    with caplog.at_level(logging.WARNING):
        result = make_targets([DOC], RunParams(targets="local+grounded", num_targets=3), lm, 0)
    assert result["d0"] == ["Question: Who founded Douprur? Answer: Drexrain Lintrim"]
    assert lm.calls == generation.GROUNDED_ROUNDS  # a bounded number of attempts
    assert "fewer than the 3 grounded QA pairs asked for after 12 rounds" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        nothing = make_targets(
            [DOC],
            RunParams(
                targets="local+grounded",
                num_targets=2,
            ),
            FakeLM([]),
            1,
        )
    assert nothing["d0"] == [] and "1 of 1 contexts have no target sentence" in caplog.text


def test_cache_keys_differ_between_generators_and_filters():
    ids = [generation.cache_id(g, f) for g in ("local-m", "openai-m") for f in (False, True)]
    paths = {generation.cache_path(i, TEXT, 5, 0) for i in ids}
    assert len(paths) == 4
    assert generation.cache_id("local-m", False) == "local-m"  # unfiltered sets keep their old key
    assert "+grounded" in str(generation.cache_path("local-m+grounded", TEXT, 5, 0))


# ---- cloze ---------------------------------------------------------------------------------------


def test_sentences_and_salient_spans():
    text = (
        "In the United States, Mr. Smith paid $4.5 million on 3 May 1990. J. K. Rowling met "
        "O'Neil at the University of Notre Dame. Denver's team won in 40% of cases."
    )
    sentences = context_sentences(text)
    assert len(sentences) == 3
    assert salient_spans(sentences[0]) == ["United States", "Smith", "$4.5 million", "3 May 1990"]
    assert salient_spans(sentences[1]) == ["J. K. Rowling", "O'Neil", "University of Notre Dame"]
    assert salient_spans(sentences[2]) == ["Denver", "40%"]


def test_cloze_targets_are_deterministic_grounded_and_built_from_the_sentences():
    first = cloze_targets([DOC], 0, 0)["d0"]
    assert first == cloze_targets([DOC], 0, 0)["d0"]
    assert sorted(first) == sorted(cloze_targets([DOC], 0, 1)["d0"])  # another seed: another order only
    assert set(first) == {
        "Question: ___ is a town, what fills the blank? Answer: Douprur",
        "Question: It was founded by ___ in 1526, what fills the blank? Answer: Drexrain Lintrim",
        "Question: It was founded by Drexrain Lintrim in ___, what fills the blank? Answer: 1526",
        "Question: The ___ lighthouse stands north of Port Ansel, what fills the blank? Answer: Mirren",
        "Question: The Mirren lighthouse stands north of ___, what fills the blank? Answer: Port Ansel",
    }
    assert grounding_counts(TEXT, first) == {"sentences": 5, "grounded": 5}
    three = cloze_targets([DOC], 3, 0)["d0"]
    assert three == first[:3] and len({s.split("___")[0] for s in three}) == 3  # one per sentence first
    assert make_targets([DOC], RunParams(targets="cloze"), None, 0)["d0"] == first


@pytest.mark.parametrize("dataset", ["fictional", "squad"])
def test_cloze_targets_on_a_data_set_are_grounded_and_never_a_probe(dataset):
    try:
        documents = load_documents(dataset, "", 40, 0, split="test")
    except BenchError as exc:
        pytest.skip(f"{dataset}: {exc}")
    targets = cloze_targets(documents, 0, 0)
    check_no_leakage(documents, targets)
    probes = {normalize_answer(p.question) for d in documents for p in d.probes}
    for doc in documents:
        assert targets[doc.id], doc.id
        assert grounding_counts(doc.text, targets[doc.id])["grounded"] == len(targets[doc.id])
        for sentence in targets[doc.id]:
            question = sentence.split(" Answer: ")[0].removeprefix("Question: ")
            assert "___" in question and normalize_answer(question) not in probes
    assert targets == cloze_targets(documents, 0, 0)


# ---- the grounding rate in results ------------------------------------------------------------------


def test_the_grounding_rate_is_in_a_batch_result(bench, tmp_path):
    code, stdout, err = bench(
        "run",
        "--method",
        "ft_sentences",
        "--task",
        "batch",
        "--profile",
        "smoke",
        "--set",
        "targets=cloze",
        "--out",
        tmp_path,
    )
    assert code == 0, err
    assert "targets: cloze" in stdout and "grounding rate 1.00" in stdout
    (path,) = (tmp_path / "batch").rglob("ft_sentences__*.json")
    result = json.loads(path.read_text())
    section = result["details"]["targets"]
    assert section["generator"] == "cloze" and section["contexts"] == 3
    assert section["grounding_rate"]["mean"] == 1.0 and section["grounding_rate"]["n"] == 3
    episode = result["episodes"][0]
    assert sum(c["sentences"] for c in episode["targets"].values()) == episode["num_targets"] == section["sentences"]
    code, _, err = bench("run", "--method", "base_q", "--task", "batch", "--profile", "smoke", "--out", tmp_path)
    assert code == 0, err
    (path,) = (tmp_path / "batch").rglob("base_q__*.json")
    assert "targets" not in json.loads(path.read_text())["details"]  # no target sentences, no section


def test_the_grounding_rate_of_records_that_do_not_carry_it(tiny_lm):
    """A task whose episode records hold only ``num_targets`` still gets the section."""
    task = BatchTask(BatchParams(num_contexts=2), RunParams(targets="dataset"), "fictional", "", 0)
    task.prepare(tiny_lm)
    ids = [doc.id for doc in task.documents]
    records = [{"episode": "seq-0", "context_ids": ids, "num_targets": 4}]
    section = task.with_targets({}, records)["targets"]
    assert section["contexts"] == 2 and section["generator"] == "dataset"
    assert section["sentences"] == sum(len(task.targets()[i]) for i in ids)
    assert task.with_targets({"qa_f1": 0}, [{"episode": "x", "context_ids": ids, "num_targets": 0}]) == {"qa_f1": 0}
