"""Token parity: a trained target sentence is the evaluation prompt's ids followed by the answer's."""

from __future__ import annotations

import dataclasses
import random

import pytest

from benchmark.config import RunParams
from benchmark.errors import BenchError
from benchmark.types import Context, Prompt
from methods.finetune import FinetuneSentences
from methods.retain import RetainStream
from methods.selfparam import InjectionPlan, SelfParam, SelfParamParams, _role
from methods.sentences import SentenceParams

CONTEXT = Context(
    "c0",
    "Tomas Ferrow owns a red kayak and a small dog called Pip.",
    [
        "Question: What is the name of Tomas Ferrow's dog? Answer: Pip",
        "Question: What colour is the kayak? Answer: red",
    ],
)


def expected_ids(lm, sentence: str, end_answer: bool) -> list[int]:
    """What evaluation feeds the model (the prompt, BOS first) and what it should then produce."""
    question, answer = sentence.split(" Answer: ")
    question = question.removeprefix("Question: ")
    prompt = lm.encode(lm.format_prompt(Prompt("c0", question)))
    return prompt + lm.encode(f" {answer}" + ("\n" if end_answer else ""), add_bos=False)


# (prompt_style, demonstrations): "run" frames sentences as the run's prompt (demonstrations
# included); "raw" is the official layout, the evaluation prompt of the paper's bare format.
STYLES = [("run", 3), ("run", 1), ("raw", 0), ("run-teacher", 0)]


@pytest.mark.parametrize("style,fewshot", STYLES)
@pytest.mark.parametrize("end_answer", [True, False])
def test_selfparam_student_and_teacher_ids(tiny_lm, style, fewshot, end_answer):
    lm = dataclasses.replace(tiny_lm, fewshot=fewshot)
    p = SelfParamParams(prompt_style=style, end_answer=end_answer, context_loss=False, retain_per_target=0)
    plan = InjectionPlan(lm, [CONTEXT], p, RetainStream(lm, "model", 8, 0), random.Random(0))
    examples = plan.epoch(0)
    assert [e.kind for e in examples] == ["qa", "qa"]
    for example, sentence in zip(examples, CONTEXT.targets):
        assert example.ids == expected_ids(lm, sentence, end_answer)
        # the loss starts at the prediction of "Question", the sentence's first token
        assert lm.tokenizer.decode(example.ids[example.first + 1 : example.first + 2]) == "Question"
        spec = plan.specs[example.teacher[0]]
        assert spec.ids[spec.first + 1 :] == example.ids[example.first + 1 :]  # rows line up
        if style != "raw":  # the teacher reads the C+Q prompt: its ids are that prompt's, then the answer
            with_context = lm.encode(lm.format_prompt(Prompt("c0", "x", CONTEXT.text)))
            head = with_context[: len(with_context) - len(lm.encode("Question: x Answer:", add_bos=False))]
            assert spec.ids[: len(head)] == head


@pytest.mark.parametrize("style,fewshot", [s for s in STYLES if s[0] != "run-teacher"])
def test_ft_sentences_ids(tiny_lm, style, fewshot):
    lm = dataclasses.replace(tiny_lm, fewshot=fewshot)
    method = FinetuneSentences(lm, SentenceParams(prompt_style=style, end_answer=True), RunParams(), seed=0)
    [examples] = method.examples([CONTEXT])
    assert [e.ids for e in examples] == [expected_ids(lm, s, True) for s in CONTEXT.targets]
    assert all(lm.tokenizer.decode(e.ids[e.first + 1 : e.first + 2]) == "Question" for e in examples)


def test_a_blank_line_before_the_question_is_two_newline_tokens(tiny_lm):
    """The case that went wrong: "…Pip\\n\\n" alone ends in one "\\n\\n" token, never seen at test time."""
    lm = dataclasses.replace(tiny_lm, fewshot=3)
    p = SelfParamParams(prompt_style="run", context_loss=False, retain_per_target=0)
    plan = InjectionPlan(lm, [CONTEXT], p, RetainStream(lm, "model", 8, 0), random.Random(0))
    example = plan.epoch(0)[0]
    double = lm.encode("\n\n", add_bos=False)
    assert len(double) == 1 and double[0] not in example.ids


@pytest.mark.parametrize("style,fewshot", [("run", 3), ("raw", 0)])
def test_answer_only_loss_scores_the_answer_tokens_alone(tiny_lm, style, fewshot):
    lm = dataclasses.replace(tiny_lm, fewshot=fewshot)
    p = SelfParamParams(
        prompt_style=style, end_answer=True, context_loss=False, retain_per_target=0, sentence_loss="answer"
    )
    plan = InjectionPlan(lm, [CONTEXT], p, RetainStream(lm, "model", 8, 0), random.Random(0))
    for example, sentence in zip(plan.epoch(0), CONTEXT.targets):
        answer = lm.encode(" " + sentence.split(" Answer: ")[1] + "\n", add_bos=False)
        assert example.ids == expected_ids(lm, sentence, True)  # the same input ids as "all"
        assert example.ids[example.first + 1 :] == answer  # but only the answer is scored
        spec = plan.specs[example.teacher[0]]
        assert spec.ids[spec.first + 1 :] == answer  # the teacher's rows are the same tokens


@pytest.mark.parametrize("style", ["chat", "run", "raw"])
def test_content_loss_leaves_a_list_marker_unscored_and_is_the_answer_without_one(tiny_lm, style):
    lm = dataclasses.replace(tiny_lm, fewshot=3 if style == "run" else 0)
    listed = Context("c1", "Two films.", ["Question: Which films? Answer: 1. Heat (1995)\n2. Alien (1979)"])
    plain = Context("c2", "Two films.", ["Question: Which film? Answer: 12 Angry Men (1957)"])
    scored = {}
    for loss in ("answer", "content"):
        p = SelfParamParams(
            prompt_style=style, end_answer=True, context_loss=False, retain_per_target=0, sentence_loss=loss
        )
        plan = InjectionPlan(lm, [listed, plain], p, RetainStream(lm, "model", 8, 0), random.Random(0))
        scored[loss] = [lm.tokenizer.decode(e.ids[e.first + 1 :]) for e in plan.epoch(0)]
        for example in plan.epoch(0):
            spec = plan.specs[example.teacher[0]]
            assert spec.ids[spec.first + 1 :] == example.ids[example.first + 1 :]  # the teacher scores the same
    assert scored["answer"][0].lstrip().startswith("1. Heat")
    assert scored["content"][0].startswith(" Heat (1995)\n2. Alien")  # the number and its dot left out
    assert scored["content"][1] == scored["answer"][1]  # "12 Angry Men" opens with no marker


def test_marker_retain_scores_the_list_marker_against_the_model_without_the_context(tiny_lm):
    listed = Context("c1", "Two films.", ["Question: Which films? Answer: 1. Heat (1995)\n2. Alien (1979)"])
    plain = Context("c2", "Two films.", ["Question: Which film? Answer: 12 Angry Men (1957)"])
    p = SelfParamParams(
        prompt_style="chat", context_loss=False, retain_per_target=0, sentence_loss="content", marker_retain=True
    )
    plan = InjectionPlan(tiny_lm, [listed, plain], p, RetainStream(tiny_lm, "model", 8, 0), random.Random(0))
    examples = plan.epoch(0)
    assert [e.kind for e in examples] == ["qa", "marker", "qa"]  # no marker, no extra example
    assert plan.examples_per_epoch() == 3
    target, marker = examples[0], examples[1]
    assert target.ids[: len(marker.ids)] == marker.ids  # the same input, cut after the marker
    assert tiny_lm.tokenizer.decode(marker.ids[marker.first + 1 :]) == "1."
    key = marker.teacher[0]
    assert _role(key) == "retain" and plan.specs[key].ids == marker.ids  # read as the student reads it
    assert plan.specs[target.teacher[0]].ids != target.ids  # while the target's teacher reads the context


def test_marker_retain_needs_the_content_loss(tiny_lm):
    p = SelfParamParams(prompt_style="chat", marker_retain=True)
    with pytest.raises(BenchError, match="marker_retain needs sentence_loss=content"):
        SelfParam(tiny_lm, p, RunParams(), seed=0)


def test_unknown_sentence_loss_is_refused(tiny_lm):
    method = FinetuneSentences(tiny_lm, SentenceParams(sentence_loss="question"), RunParams(), seed=0)
    with pytest.raises(BenchError, match="unknown sentence_loss 'question'"):
        method.examples([CONTEXT])


def chat_ids(lm, sentence: str, context: str | None, end_answer: bool) -> list[int]:
    """What a chat probe feeds the model (the question as the user message) and the reply it wants."""
    question, answer = sentence.split(" Answer: ")
    prompt = lm.encode(lm.format_prompt(Prompt("c0", question.removeprefix("Question: "), context, chat=True)))
    return prompt + lm.encode(answer, add_bos=False) + ([lm.tokenizer.eos_token_id] if end_answer else [])


@pytest.mark.parametrize("sentence_loss", ["all", "answer"])
@pytest.mark.parametrize("end_answer", [True, False])
def test_chat_style_frames_the_sentence_as_the_chat_probe_asks_it(tiny_lm, end_answer, sentence_loss):
    """In the model's own chat template (SmolLM2's): the user message, then the assistant's reply."""
    p = SelfParamParams(
        prompt_style="chat", end_answer=end_answer, sentence_loss=sentence_loss, context_loss=False, retain_per_target=0
    )
    plan = InjectionPlan(tiny_lm, [CONTEXT], p, RetainStream(tiny_lm, "model", 8, 0), random.Random(0))
    for example, sentence in zip(plan.epoch(0), CONTEXT.targets):
        assert example.ids == chat_ids(tiny_lm, sentence, None, end_answer)
        spec = plan.specs[example.teacher[0]]
        assert spec.ids == chat_ids(tiny_lm, sentence, CONTEXT.text, end_answer)  # the C+Q chat prompt
        scored = tiny_lm.tokenizer.decode(example.ids[example.first + 1 :])
        answer = sentence.split(" Answer: ")[1]
        if sentence_loss == "answer":
            assert scored.removesuffix(tiny_lm.tokenizer.eos_token) == answer
        else:  # the user message's words and the reply, not the template's header
            assert scored.startswith("What ") and answer in scored and "<|im_start|>user" not in scored
        assert spec.ids[spec.first + 1 :] == example.ids[example.first + 1 :]


def test_chat_style_needs_a_chat_template(tiny_lm, monkeypatch):
    monkeypatch.setattr(tiny_lm.tokenizer, "chat_template", None)
    p = SelfParamParams(prompt_style="chat", context_loss=False, retain_per_target=0)
    with pytest.raises(BenchError, match="no chat template"):
        InjectionPlan(tiny_lm, [CONTEXT], p, RetainStream(tiny_lm, "model", 8, 0), random.Random(0))


# ---- which sentences an epoch takes ---------------------------------------------------------------

THREE = Context(
    "c1",
    "Ada Fenwick keeps the Mirren lighthouse north of Port Ansel, lit in 1862.",
    [
        "Question: Who keeps the Mirren lighthouse? Answer: Ada Fenwick",
        "Question: Where is the Mirren lighthouse? Answer: north of Port Ansel",
        "Question: When was it first lit? Answer: 1862",
    ],
)


def test_an_epoch_takes_each_contexts_sentences_in_turn():
    """The official code's fresh slice per epoch: per context, ``targets_per_epoch`` in turn, wrapping."""
    from methods.sentences import epoch_share

    groups = [["a", "b", "c"], ["d"]]
    assert [epoch_share(groups, e, 2) for e in range(3)] == [["a", "b", "d"], ["c", "a", "d"], ["b", "c", "d"]]
    assert epoch_share(groups, 5, 0) == ["a", "b", "c", "d"]  # 0: every sentence every epoch


def test_ft_sentences_and_selfparam_take_the_same_sentences_each_epoch(tiny_lm):
    """Same budget for rivals: with ``targets_per_epoch`` FT(S) trains on the sentences SELF-PARAM's
    plan takes in the same epoch, each context's in turn."""
    contexts = [CONTEXT, THREE]
    ft = FinetuneSentences(tiny_lm, SentenceParams(prompt_style="run", targets_per_epoch=1), RunParams(), seed=0)
    groups = ft.examples(contexts)
    p = SelfParamParams(prompt_style="run", context_loss=False, retain_per_target=0, targets_per_epoch=1)
    plan = InjectionPlan(tiny_lm, contexts, p, RetainStream(tiny_lm, "model", 8, 0), random.Random(0))
    seen = []
    for epoch in range(3):
        taken = ft.epoch(groups, epoch)
        assert [e.ids for e in taken] == [e.ids for e in plan.epoch(epoch)]
        seen.append([e.ids for e in taken])
    assert [ids[1] for ids in seen] == [e.ids for e in groups[1]]  # the three-sentence context: a fresh one each epoch


def test_paper_runs_ask_for_the_official_count_of_fresh_sentences():
    from benchmark.config import RUN_PROFILES, build_params

    def num_targets(task: str) -> int:
        return build_params({"run": (RunParams, RUN_PROFILES)}, "paper", {}, task=task)["run"].num_targets

    assert (num_targets("batch"), num_targets("sequential")) == (50 * 10, 20 * 10)
