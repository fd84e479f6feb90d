"""The ``implications`` target generator (SEAL-style self-edits): parsing the model's statements,
their grounding, framing and leakage check, and the trained methods that use them."""

from __future__ import annotations

import dataclasses

import pytest

from benchmark import generation
from benchmark.config import RunParams
from benchmark.errors import BenchError
from benchmark.grounding import grounding_counts, is_grounded, is_qa, keep_grounded
from benchmark.targets import GENERATORS, NEEDS_MODEL, check_no_leakage, make_targets
from benchmark.types import QA, Context, Document, Prompt
from methods.finetune import FinetuneSentences
from methods.selfparam import SelfParam, SelfParamParams
from methods.sentences import SentenceParams, frame, sentence_prefixes

TEXT = (
    "Douprur is a town. It was founded by Drexrain Lintrim in 1526. The Mirren lighthouse stands north of Port Ansel."
)
DOC = Document("d0", TEXT, (QA("Who founded Douprur?", ("Drexrain Lintrim",)),))
OTHER = Document(
    "d1", "Fistear is a person. Fistear worked as a botanist.", (QA("What was Fistear's job?", ("botanist",)),)
)

REPLY = """Sure! Here are some implications of the passage:

1. **Douprur was founded by Drexrain Lintrim.**
2) Douprur has existed since 1526.
- The Mirren lighthouse is located to the north of Port Ansel.
* Implication 4: Drexrain Lintrim lived in the sixteenth century.
Implications:
Question: Who founded Douprur? Answer: Drexrain Lintrim
Too short.
1. Douprur was founded by Drexrain Lintrim.
I hope this helps!"""
PARSED = [
    "Douprur was founded by Drexrain Lintrim.",
    "Douprur has existed since 1526.",
    "The Mirren lighthouse is located to the north of Port Ansel.",
    "Drexrain Lintrim lived in the sixteenth century.",
]


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFPARAM_BENCH_CACHE", str(tmp_path / "cache"))


# ---- parsing ---------------------------------------------------------------------------------------


def test_a_reply_is_parsed_into_one_statement_per_line():
    assert generation.parse_statements(REPLY) == PARSED
    assert generation.parse_statements("I cannot help with that.") == []
    rambling = " ".join(["word"] * (generation.MAX_STATEMENT_WORDS + 1))
    assert generation.parse_statements(f"{rambling}\nDouprur has existed since 1526.") == [PARSED[1]]


def test_lines_copied_from_the_prompt_are_not_statements():
    copied = "The Mirren lighthouse has been shining since 1862.\nDouprur has existed since 1526."
    assert generation.parse_statements(copied) == copied.splitlines()
    assert generation.parse_implications(copied) == ["Douprur has existed since 1526."]


# ---- the generator ---------------------------------------------------------------------------------


class FakeLM:
    """Stands in for the instruct model: canned replies in order, the prompts recorded."""

    name = "fake-instruct"

    def __init__(self, tokenizer, replies):
        self.tokenizer = tokenizer
        self.replies = list(replies)
        self.prompts: list[str] = []

    def generate(self, prompts, **kwargs):
        assert kwargs["stop_at_newline"] is False and kwargs["sample_temperature"] == 1.0
        self.prompts.extend(prompts)
        return [self.replies.pop(0) if self.replies else "Nothing here." for _ in prompts]


class RawTokenizer:
    chat_template = None


def test_the_generator_asks_the_run_model_in_the_chat_template_and_caches(tiny_lm):
    lm = FakeLM(tiny_lm.tokenizer, [REPLY, "Fistear was a botanist by trade.", "Fistear studied plants for a living."])
    result = make_targets([DOC, OTHER], RunParams(targets="implications", num_targets=2), lm, 0)
    assert result == {
        "d0": PARSED[:2],
        "d1": ["Fistear was a botanist by trade.", "Fistear studied plants for a living."],
    }
    assert len(lm.prompts) == 3  # d1 needed a second round
    assert "list several implications derived from its content" in lm.prompts[0]
    assert TEXT in lm.prompts[0] and "<|im_start|>user" in lm.prompts[0]
    again = make_targets(
        [DOC, OTHER], RunParams(targets="implications", num_targets=2), FakeLM(tiny_lm.tokenizer, []), 0
    )
    assert again == result  # from the cache
    qa = FakeLM(tiny_lm.tokenizer, ["Question: Who founded Douprur? Answer: Drexrain Lintrim"] * 2)
    assert make_targets([DOC, OTHER], RunParams(targets="local", num_targets=1), qa, 0)["d0"] != result["d0"]
    assert "implications" in GENERATORS and "implications" in NEEDS_MODEL


def test_without_a_chat_template_the_prompt_ends_where_the_list_starts():
    lm = FakeLM(RawTokenizer(), ["Douprur was founded in 1526 by Drexrain Lintrim."])
    result = generation.implications_targets([DOC], 1, 0, lm)
    assert lm.prompts[0].endswith(f"Passage: {TEXT}\n\nImplications:\n")
    assert result["d0"] == ["Douprur was founded in 1526 by Drexrain Lintrim."]


def test_a_context_without_any_statement_is_a_one_line_error(tiny_lm):
    with pytest.raises(BenchError, match="produced no usable statement for context 'd0'"):
        generation.implications_targets([DOC], 1, 0, FakeLM(tiny_lm.tokenizer, []))
    with pytest.raises(BenchError, match="implications generator needs a loaded model"):
        generation.implications_targets([DOC], 1, 0, None)


def test_unknown_generator_is_still_a_one_line_error():
    with pytest.raises(BenchError) as info:
        make_targets([DOC], RunParams(targets="selfedits"), None, 0)
    message = str(info.value)
    assert "unknown target-sentence generator 'selfedits'" in message and "implications" in message
    assert "\n" not in message


# ---- grounding ---------------------------------------------------------------------------------------


def test_statement_grounding_is_the_share_of_content_words_in_the_context():
    grounded = [
        "Douprur was founded by Drexrain Lintrim.",  # every content word is in the context
        "Drexrain Lintrim's town, Douprur, dates from 1526.",  # 5 of 6 ("dates" is not)
        "The Mirren lighthouse is north of Port Ansel.",
    ]
    ungrounded = [
        "Douprur is the capital of Wales.",  # 1 of 3
        "Nobody knows anything about it.",  # 0 of 3
        "It is what it is.",  # no content word
    ]
    assert all(not is_qa(s) for s in grounded + ungrounded)
    assert keep_grounded(TEXT, ungrounded[:1] + grounded + ungrounded[1:]) == grounded
    assert grounding_counts(TEXT, grounded + ungrounded) == {"sentences": 6, "grounded": 3}
    # QA pairs keep their rule: the answer must occur in the context.
    assert is_grounded("Question: Who founded Douprur? Answer: Drexrain Lintrim", TEXT)
    assert not is_grounded("Question: What is Douprur?", TEXT)  # a question without answer is no statement


def test_implications_plus_grounded_keeps_grounded_statements_only(tiny_lm):
    replies = ["Douprur is the capital of Wales.\nDouprur has existed since 1526.", "Drexrain Lintrim founded Douprur."]
    lm = FakeLM(tiny_lm.tokenizer, replies)
    result = make_targets([DOC], RunParams(targets="implications+grounded", num_targets=2), lm, 0)
    assert result["d0"] == ["Douprur has existed since 1526.", "Drexrain Lintrim founded Douprur."]
    plain = make_targets([DOC], RunParams(targets="implications", num_targets=2), FakeLM(tiny_lm.tokenizer, replies), 0)
    assert plain["d0"] == ["Douprur is the capital of Wales.", "Douprur has existed since 1526."]


# ---- leakage, framing and training --------------------------------------------------------------------


def test_the_leakage_check_runs_on_statements():
    check_no_leakage([DOC], {"d0": PARSED})  # statements that state the answer are not the question
    with pytest.raises(BenchError, match="asks probe question 'Who founded Douprur\\?'"):
        check_no_leakage([DOC, OTHER], {"d1": ["who founded Douprur"]})


STATEMENT = "Drexrain Lintrim founded the town of Douprur in 1526."
CONTEXT = Context("c0", TEXT, [STATEMENT, "The Mirren lighthouse is north of Port Ansel."])


@pytest.mark.parametrize("style,fewshot", [("run", 3), ("raw", 0)])
@pytest.mark.parametrize("sentence_loss", ["all", "answer"])
def test_a_statement_is_plain_text_after_the_prefix_with_every_token_scored(tiny_lm, style, fewshot, sentence_loss):
    lm = dataclasses.replace(tiny_lm, fewshot=fewshot)
    p = SentenceParams(prompt_style=style, sentence_loss=sentence_loss, end_answer=True)
    teacher_prefixes, student_prefix = sentence_prefixes(lm, [CONTEXT], style)
    student, teacher = frame(lm, student_prefix, STATEMENT, p), frame(lm, teacher_prefixes[0], STATEMENT, p)
    assert lm.tokenizer.decode(student.sentence) == STATEMENT + "\n"  # the whole statement, then the line break
    assert student.sentence == teacher.sentence  # the rows of teacher and student line up
    prompt = lm.format_prompt(Prompt("c0", "x"))
    before = prompt[: prompt.index("Question: x")]  # the demonstrations, where a question would start
    assert student.ids == lm.encode(before + STATEMENT) + lm.encode("\n", add_bos=False)


def test_ft_sentences_and_selfparam_train_on_statements(tiny_lm):
    lm = dataclasses.replace(tiny_lm, fewshot=3)
    ft = FinetuneSentences(lm, SentenceParams(epochs=8, batch_size=2, lr=1e-2, prompt_style="run"), RunParams(), 0)
    ft.inject([CONTEXT])
    losses = ft.last_report.losses
    assert len(losses) == 8 and sum(losses[-2:]) < sum(losses[:2])
    params = SelfParamParams(
        epochs=2, batch_size=4, lr=1e-2, prompt_style="run", retain_tokens=8, retain_pool=1, retain_source="model"
    )
    method = SelfParam(lm, params, RunParams(), seed=0)
    method.inject([CONTEXT])
    assert method.last_report.steps >= 2 and all(loss >= 0 for loss in method.last_report.losses)
    lora = [v for k, v in method.student.state_dict().items() if "lora_B" in k]
    assert any(v.abs().sum() > 0 for v in lora)  # it trained
    assert len(method.generate([Prompt("c0", "Who founded Douprur?")])) == 1


def test_bench_list_shows_every_generator_and_whether_it_runs_here(bench, monkeypatch):
    from benchmark.targets import GENERATOR_DESCRIPTIONS, GENERATORS

    assert set(GENERATOR_DESCRIPTIONS) == set(GENERATORS)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    code, out, _ = bench("list")
    assert code == 0
    section = out.split("target-sentence generators")[1]
    rows = {line.split()[0]: line for line in section.splitlines()[3:] if line.strip()}
    assert set(rows) == set(GENERATORS)
    assert rows["implications"].split()[1] == "yes"
    assert "no: needs OPENAI_API_KEY" in rows["openai"]
