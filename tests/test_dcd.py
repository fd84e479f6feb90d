"""DCD (deep context distillation) on the tiny random model: the hidden-state term, that SELF-PARAM's
loss is untouched by the extension, and a smoke run that trains and answers."""

from __future__ import annotations

import random

import pytest
import torch

from benchmark.config import RunParams
from benchmark.errors import BenchError
from benchmark.types import Context
from methods.dcd import DCD, DCDParams, layer_indices
from methods.selfparam import SelfParam, SelfParamParams
from methods.training import (
    Dist,
    Example,
    HiddenMatch,
    TeacherSpec,
    Trainer,
    TrainParams,
    build_student,
    hidden_distance,
    kl_rows,
    teacher_dists,
)

SENTENCE = "Question: Who founded Douprur? Answer: Drexrain Lintrim"
CONTEXT = "Douprur is a town. It was founded by Drexrain Lintrim in 1526."
TARGETS = [SENTENCE, "Question: When was Douprur founded? Answer: 1526"]
# The teacher's states are cached in bf16: identical inputs differ by that rounding (2^-8 relative) only.
BF16_TOLERANCE = 5e-3

SMALL = dict(
    epochs=3,
    batch_size=4,
    lr=1e-2,
    retain_tokens=8,
    retain_pool=1,
    retain_per_target=0.5,
    context_per_target=0.5,
    teacher_topk=16,
    retain_source="model",
    lora_dropout=0.0,
)


def ids(lm, text: str) -> list[int]:
    return lm.encode(text, add_bos=False) if text else []


def perturbed_student(lm) -> torch.nn.Module:
    """A student that differs from the base model (LoRA B starts at zero; here it is random)."""
    student = build_student(lm, TrainParams(lora_dropout=0.0))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in student.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    student.eval()
    return student


@pytest.mark.parametrize("which", ["all", "last"])
def test_hidden_term_is_zero_for_identical_inputs_and_positive_with_the_context(tiny_lm, which):
    layers = layer_indices(tiny_lm.model, which)
    student = build_student(tiny_lm, TrainParams(lora_dropout=0.0))  # the base model until trained
    student.eval()
    bos, sentence = [tiny_lm.tokenizer.bos_token_id], ids(tiny_lm, SENTENCE)
    plain = Trainer(student, tiny_lm, TrainParams(), 1)
    matched = Trainer(student, tiny_lm, TrainParams(), 1, hidden_match=HiddenMatch(layers, 1.0))
    terms = {}
    for context in ("", CONTEXT):
        ctx = ids(tiny_lm, context)
        dist = teacher_dists(tiny_lm.model, tiny_lm, [TeacherSpec(bos + ctx + sentence, len(ctx))], layers=layers)[0]
        assert dist.hidden is not None and dist.hidden.dtype == torch.bfloat16
        assert dist.hidden.shape == (len(sentence), len(layers), tiny_lm.model.config.hidden_size)  # scored rows only
        with torch.no_grad():
            example = [Example(bos + sentence, 0)]
            terms[context] = float(matched.loss(example, [dist]) - plain.loss(example, [dist]))
    assert 0 <= terms[""] < BF16_TOLERANCE
    assert terms[CONTEXT] > 10 * BF16_TOLERANCE
    x = torch.randn(5, 2, 8)
    assert float(hidden_distance(x, x)) == 0.0 and float(hidden_distance(x + 0.1, x)) > 0


def test_layer_choice_and_unknown_layers(tiny_lm):
    n = tiny_lm.model.config.num_hidden_layers
    assert layer_indices(tiny_lm.model, "all") == (*range(1, n), -1)
    assert layer_indices(tiny_lm.model, "last") == (-1,)
    with pytest.raises(BenchError, match="unknown hidden_layers 'middle'; use all or last"):
        layer_indices(tiny_lm.model, "middle")


def test_selfparam_loss_is_the_kl_of_plain_forward_passes(tiny_lm):
    """SELF-PARAM's loss, recomputed from the models' own logits, whatever the trainer's internals."""
    student = perturbed_student(tiny_lm)
    bos, sentence, ctx = [tiny_lm.tokenizer.bos_token_id], ids(tiny_lm, SENTENCE), ids(tiny_lm, CONTEXT)
    dist = teacher_dists(tiny_lm.model, tiny_lm, [TeacherSpec(bos + ctx + sentence, len(ctx))])[0]
    with torch.no_grad():
        loss = float(Trainer(student, tiny_lm, TrainParams(), 1).loss([Example(bos + sentence, 0)], [dist]))
        t_logp = torch.log_softmax(tiny_lm.model(torch.tensor([bos + ctx + sentence])).logits[0].float(), -1)
        s_logp = torch.log_softmax(student(torch.tensor([bos + sentence])).logits[0].float(), -1)
    teacher_rows = t_logp[len(ctx) : len(ctx) + len(sentence)]
    expected = float(kl_rows(s_logp[: len(sentence)], Dist(teacher_rows)).mean())
    assert expected > 0 and loss == pytest.approx(expected, rel=1e-4)


def test_asking_for_states_leaves_the_kl_unchanged(tiny_lm):
    """The extension's code path with a zero weight gives exactly the plain loss, shared prefixes too."""
    student = perturbed_student(tiny_lm)
    layers = layer_indices(tiny_lm.model, "all")
    bos, ctx = [tiny_lm.tokenizer.bos_token_id], ids(tiny_lm, CONTEXT)
    batch, specs = [], []
    for text in TARGETS:
        sentence = ids(tiny_lm, text)
        batch.append(Example(bos + ctx[:6] + sentence, 6))  # a shared 7-token prefix
        specs.append(TeacherSpec(bos + ctx + sentence, len(ctx)))
    batch.append(Example(bos + ids(tiny_lm, SENTENCE), 0))
    specs.append(TeacherSpec(bos + ctx + ids(tiny_lm, SENTENCE), len(ctx)))
    dists = teacher_dists(tiny_lm.model, tiny_lm, specs, topk=16, layers=layers)
    p = TrainParams(share_prefix=4)
    with torch.no_grad():
        plain = Trainer(student, tiny_lm, p, 1).loss(batch, dists)
        zero = Trainer(student, tiny_lm, p, 1, hidden_match=HiddenMatch(layers, 0.0)).loss(batch, dists)
        one = Trainer(student, tiny_lm, p, 1, hidden_match=HiddenMatch(layers, 1.0)).loss(batch, dists)
    assert torch.equal(plain, zero) and float(one) > float(plain)


def losses(lm, method_cls, params) -> list[float]:
    torch.manual_seed(0)
    random.seed(0)
    method = method_cls(lm, params, RunParams(), seed=0)
    method.inject([Context("c0", CONTEXT, TARGETS)])
    return method.last_report.losses


def test_without_the_hidden_term_dcd_trains_exactly_as_selfparam(tiny_lm):
    reference = losses(tiny_lm, SelfParam, SelfParamParams(**SMALL))
    assert losses(tiny_lm, DCD, DCDParams(**SMALL, hidden_weight=0.0)) == reference
    assert losses(tiny_lm, DCD, DCDParams(**SMALL, hidden_weight=1.0)) != reference


def test_teacher_states_are_kept_for_targets_and_context_suffixes_only(tiny_lm, monkeypatch):
    plans = []
    real = DCD.make_plan

    def spy(self, contexts):
        plans.append(real(self, contexts))
        return plans[-1]

    monkeypatch.setattr(DCD, "make_plan", spy)
    method = DCD(tiny_lm, DCDParams(**{**SMALL, "epochs": 6, "hidden_layers": "last"}), RunParams(), seed=0)
    method.inject([Context("c0", CONTEXT, TARGETS)])
    cache = plans[0].cache
    kinds = {str(key[0]) for key in cache}
    assert {"qa", "ctx"} <= kinds and any(kind.startswith("ret") for kind in kinds)
    for key, dist in cache.items():
        if str(key[0]).startswith("ret"):
            assert dist.hidden is None
        else:
            assert dist.hidden is not None and dist.hidden.shape[:2] == (len(dist.logp), 1)
    losses = method.last_report.losses
    assert sum(losses[-2:]) < sum(losses[:2])  # the combined loss goes down


def test_bench_run_dcd_smoke_trains_and_answers(smoke_batch):
    result, _ = smoke_batch("dcd", "retain_source=model")
    assert result["method_info"]["display_name"] == "DCD (KM)"
    assert result["method_info"]["storage_class"] == "O(1)" and result["method_info"]["family"] == "parametric"
    assert result["config"]["params"]["method"]["hidden_weight"] == 1.0
    assert result["cost"]["train_tokens"] > 0 and result["cost"]["footprint_bytes"] > 0
    predictions = [p for episode in result["episodes"] for p in episode["predictions"]]
    assert predictions and all(isinstance(p["prediction"], str) for p in predictions)  # it answered every probe


def test_bad_dcd_settings_are_one_line_errors(bench, tmp_path):
    base = ("run", "--method", "dcd", "--task", "batch", "--profile", "smoke", "--out", tmp_path)
    code, _, err = bench(*base, "--set", "hidden_layers=middle")
    assert code == 2 and "unknown hidden_layers 'middle'" in err and len(err.strip().splitlines()) == 1
    code, _, err = bench(*base, "--set", "hidden_weight=-1")
    assert code == 2 and "hidden_weight" in err
