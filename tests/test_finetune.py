"""FT(C) and FT(S) on the tiny random model: what they train on and which weights they change."""

from __future__ import annotations

import pytest
import torch

from benchmark.config import RunParams
from benchmark.types import Context, Prompt
from methods.finetune import FinetuneContext, FinetuneParams, FinetuneSentences
from methods.sentences import SentenceParams
from methods.training.student import unwrapped

CONTEXTS = [
    Context(
        "c0",
        "Douprur is a town. It was founded by Drexrain Lintrim in 1526.",
        ["Question: Who founded Douprur? Answer: Drexrain Lintrim", "Question: When was Douprur founded? Answer: 1526"],
    ),
]


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    after = model.state_dict()
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_ft_sentences_trains_on_the_targets_and_its_loss_falls(tiny_lm, monkeypatch):
    seen: list[list[int]] = []
    import methods.training as training

    real = training.Trainer.step

    def spy(self, batch, targets=None):
        seen.extend(e.ids for e in batch)
        return real(self, batch, targets)

    monkeypatch.setattr(training.Trainer, "step", spy)
    original = state(tiny_lm.model)
    method = FinetuneSentences(tiny_lm, SentenceParams(epochs=12, batch_size=4, lr=1e-2), RunParams(), seed=0)
    method.inject(CONTEXTS)
    expected = {tuple(tiny_lm.encode(s)) for s in CONTEXTS[0].targets}
    assert {tuple(ids) for ids in seen} == expected  # the sentences, never the context
    losses = method.last_report.losses
    assert losses[-1] < losses[0] - 0.5  # from ~ln(vocab size) on the random model
    assert not changed(original, tiny_lm.model)
    assert method.model is method.student
    assert method.stats["train_tokens"] == 12 * sum(len(ids) for ids in expected)


def _kernel(model: torch.nn.Module) -> str:
    return unwrapped(model).config._attn_implementation


def test_trained_methods_answer_through_the_base_models_attention_kernel(tiny_lm, monkeypatch):
    method = FinetuneSentences(tiny_lm, SentenceParams(epochs=1, batch_size=4, lr=1e-2), RunParams(), seed=0)
    method.inject(CONTEXTS)
    base = _kernel(tiny_lm.model)
    assert _kernel(method.model) == method.params.attn_implementation != base  # trains with its own
    seen: list[str] = []
    real = type(tiny_lm).generate

    def spy(self, prompts, **kwargs):
        seen.append(_kernel(kwargs["model"]))
        return real(self, prompts, **kwargs)

    monkeypatch.setattr(type(tiny_lm), "generate", spy)
    method.generate([Prompt("q0", "Who founded Douprur?")])
    assert seen == [base]
    assert _kernel(method.model) == method.params.attn_implementation  # restored for the next injection


def test_ft_context_trains_on_the_context(tiny_lm, monkeypatch):
    seen: list[list[int]] = []
    import methods.training as training

    real = training.Trainer.step
    monkeypatch.setattr(
        training.Trainer,
        "step",
        lambda self, batch, targets=None: (seen.extend(e.ids for e in batch), real(self, batch, targets))[1],
    )
    method = FinetuneContext(tiny_lm, FinetuneParams(epochs=1), RunParams(), seed=0)
    method.inject(CONTEXTS)
    assert seen == [tiny_lm.encode(CONTEXTS[0].text)]


@pytest.mark.parametrize("params", ["full", "mlp"])
def test_full_and_mlp_only_change_what_they_say(tiny_lm, params):
    method = FinetuneSentences(
        tiny_lm, SentenceParams(epochs=1, batch_size=4, lr=1e-3, params=params), RunParams(), seed=0
    )
    before = state(tiny_lm.model)
    method.inject(CONTEXTS)
    diff = changed(before, method.student)
    assert diff
    if params == "mlp":
        assert all(".mlp." in k for k in diff)
    footprint = method.footprint()
    trainable = [p for p in method.student.parameters() if p.requires_grad]
    assert footprint.changed_params == sum(p.numel() for p in trainable)
    if params == "full":
        assert footprint.changed_params == sum(p.numel() for p in tiny_lm.model.parameters())
    assert not changed(before, tiny_lm.model)


def test_sequential_injection_keeps_one_student(tiny_lm):
    method = FinetuneSentences(tiny_lm, SentenceParams(epochs=1, lr=1e-3), RunParams(), seed=0)
    method.inject(CONTEXTS)
    first = method.student
    method.inject([Context("c1", "Fistear is a person.", ["Question: Who is Fistear? Answer: a person"])])
    assert method.student is first
    assert method.stats["train_steps"] == 3  # batch size 1: two sentences, then one


@pytest.mark.parametrize("method", ["ft_context", "ft_sentences"])
def test_bench_run_smoke(smoke_batch, method):
    result, _ = smoke_batch(method)
    assert result["cost"]["train_tokens"] > 0
    assert result["cost"]["changed_params"] > 0


@pytest.mark.parametrize("end_answer", [False, True])
def test_end_answer_trains_the_line_break_after_the_answer(tiny_lm, end_answer):
    """With ``end_answer`` the last scored token is the newline that ends an answer in the prompt
    format, so the student learns where to stop; without it the sentence ends at the answer."""
    method = FinetuneSentences(tiny_lm, SentenceParams(end_answer=end_answer, prompt_style="run"), RunParams(), seed=0)
    examples = [e for group in method.examples(CONTEXTS) for e in group]
    newline = tiny_lm.encode("\n", add_bos=False)
    for example, sentence in zip(examples, CONTEXTS[0].targets):
        assert (example.ids[-len(newline) :] == newline) is end_answer
        answer = tiny_lm.encode(sentence, add_bos=False)
        start = len(example.ids) - len(answer) - (len(newline) if end_answer else 0)
        assert example.ids[start:][: len(answer)] == answer
