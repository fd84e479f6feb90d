"""Token-budget micro-batches in ``Trainer.step`` and row chunks in ``teacher_dists``: same results."""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import methods.training as training
from methods.training import (
    Dist,
    Example,
    TeacherSpec,
    Trainer,
    TrainParams,
    build_student,
    cache_prefix,
    group_by_prefix,
    head_logits,
    padded_tokens,
    selected_hidden,
    states_and_prefix_caches,
    teacher_dists,
)

BUDGET = 60  # padded tokens per micro-batch: the batch below (~250) runs as several
LR = 1e-2


def make_batch(lm, kind: str) -> tuple[list[Example], list[Dist] | None, list[int]]:
    """Plain examples of mixed lengths, weights and scored spans, and four sharing a 9-token prefix."""
    g = torch.Generator().manual_seed(0)
    vocab = lm.model.config.vocab_size
    bos = [lm.tokenizer.bos_token_id]
    batch = [
        Example(bos + torch.randint(100, vocab, (n,), generator=g).tolist(), first, "context", weight)
        for n, first, weight in ((12, 0, 1.0), (16, 3, 0.5), (14, 1, 2.0), (22, 5, 1.0), (9, 0, 1.5))
    ]
    prefix = bos + torch.randint(100, vocab, (9,), generator=g).tolist()  # shared with share_prefix=8
    batch += [
        Example(prefix + torch.randint(100, vocab, (n,), generator=g).tolist(), len(prefix), "qa", weight)
        for n, weight in ((4, 1.0), (6, 0.5), (5, 1.0), (7, 3.0))
    ]
    if kind == "ce":
        return batch, None, prefix
    targets = []
    for e in batch:
        logp = torch.log_softmax(3 * torch.randn(e.rows, vocab, generator=g), -1)
        targets.append(Dist(logp) if kind == "kl" else Dist(*logp.topk(64, -1)))
    return batch, targets, prefix


def trained(lm, batch, targets, step_tokens: int, share: int, sdpa_above: int = 0, attn: str = "eager"):
    """One optimizer step from the same start: (trainer, loss, gradients, updated parameters)."""
    torch.manual_seed(0)
    p = TrainParams(
        lora_dropout=0.0,
        step_tokens=step_tokens,
        share_prefix=share,
        lr=LR,
        loss_chunk_rows=16,
        sdpa_above_tokens=sdpa_above,
        attn_implementation=attn,
    )
    student = build_student(lm, p)
    with torch.no_grad():
        for name, param in student.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)  # so that gradients reach lora_A too
    trainer = Trainer(student, lm, p, 1)
    loss = trainer.step(batch, targets)
    named = [(n, t) for n, t in student.named_parameters() if t.requires_grad]
    return trainer, loss, {n: t.grad.clone() for n, t in named}, {n: t.detach().clone() for n, t in named}


@pytest.mark.parametrize("kind", ["ce", "kl", "topk"])
@pytest.mark.parametrize("share", [0, 8])
def test_micro_batched_step_gives_the_same_loss_gradients_and_update(tiny_lm, kind, share):
    batch, targets, prefix = make_batch(tiny_lm, kind)
    whole, whole_loss, whole_grads, whole_params = trained(tiny_lm, batch, targets, 0, share)
    split, split_loss, split_grads, split_params = trained(tiny_lm, batch, targets, BUDGET, share)
    parts = split.micro_batches(batch)
    assert len(parts) >= 3 and max(len(part) for part in parts) >= 2
    if share:  # the prefix group is cut across micro-batches and still shared inside them
        sharing = [sum(batch[i].ids[: len(prefix)] == prefix for i in part) for part in parts]
        assert sum(n > 0 for n in sharing) >= 2 and max(sharing) >= 2
    assert (whole.report.passes, split.report.passes) == (1, len(parts))
    assert split_loss == pytest.approx(whole_loss, rel=1e-5)
    assert split.report.losses == [split_loss]
    assert whole_grads.keys() == split_grads.keys() and whole_grads
    for name, grad in whole_grads.items():
        assert grad.abs().sum() > 0, name
        assert torch.allclose(split_grads[name], grad, rtol=1e-4, atol=1e-7), name
        # Adam's first step is ~lr * sign(gradient), so entries whose gradient is ~eps may move
        # differently by a fraction of lr; an optimizer step per micro-batch would be off by ~lr.
        assert torch.allclose(split_params[name], whole_params[name], rtol=0, atol=1e-2 * LR), name


@pytest.mark.parametrize("share", [0, 8])
def test_passes_with_a_long_example_train_with_sdpa_and_the_same_gradients(tiny_lm, monkeypatch, share):
    batch, _, _ = make_batch(tiny_lm, "ce")
    calls: list[int] = []  # key length of every call of the sdpa kernel
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def counted(module, query, key, *args, **kwargs):
        calls.append(key.shape[-2])
        return sdpa(module, query, key, *args, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", counted)
    eager, eager_loss, eager_grads, _ = trained(tiny_lm, batch, None, BUDGET, share)
    assert not calls and eager.report.sdpa_passes == 0
    mixed, mixed_loss, mixed_grads, _ = trained(tiny_lm, batch, None, BUDGET, share, sdpa_above=16)
    parts = [[batch[i] for i in part] for part in mixed.micro_batches(batch)]
    kernels = [mixed.kernel(part) for part in parts]
    assert kernels.count("sdpa") == mixed.report.sdpa_passes >= 1 and "" in kernels
    layers = tiny_lm.model.config.num_hidden_layers
    longest = [max(len(e.ids) for e in part) for part in parts]
    runs = len(calls) // layers  # forward runs through sdpa (a shared prefix adds a run to its pass)
    assert len(calls) % layers == 0 and runs >= sum(n > 16 for n in longest) == mixed.report.sdpa_passes
    if not share:
        assert runs == mixed.report.sdpa_passes and min(calls) > 16  # the long passes only
    assert mixed.model.get_base_model().config._attn_implementation == "eager"  # restored after each pass
    assert mixed_loss == pytest.approx(eager_loss, rel=1e-5)
    for name, grad in eager_grads.items():
        assert torch.allclose(mixed_grads[name], grad, rtol=1e-4, atol=1e-6), name


def test_padded_tokens_count_a_shared_prefix_once_as_the_student_runs_it(tiny_lm):
    batch, _, prefix = make_batch(tiny_lm, "ce")
    shared = batch[5:]  # tails of 4 to 7 tokens after the 10-token prefix (BOS included)
    assert padded_tokens(shared, 0) == 4 * (len(prefix) + 7)
    assert padded_tokens(shared, 8) == len(prefix) + 4 * 7
    # the prefix rides as a sixth row of the plain examples' pass, all padded to 23
    assert padded_tokens(batch, 8) == 6 * 23 + 4 * 7
    p = TrainParams(step_tokens=len(prefix) + 4 * 7, share_prefix=8)
    assert Trainer(build_student(tiny_lm, p), tiny_lm, p, 1).micro_batches(shared) == [[0, 1, 2, 3]]


def test_micro_batches_keep_examples_whole_in_length_order_within_the_budget(tiny_lm):
    batch, _, _ = make_batch(tiny_lm, "ce")
    for share in (0, 8):
        p = TrainParams(step_tokens=BUDGET, share_prefix=share)
        trainer = Trainer(build_student(tiny_lm, p), tiny_lm, p, 1)
        parts = trainer.micro_batches(batch)
        order = [i for part in parts for i in part]
        assert sorted(order) == list(range(len(batch)))
        assert [len(batch[i].ids) for i in order] == sorted(len(e.ids) for e in batch)
        for part in parts:
            assert padded_tokens([batch[i] for i in part], share) <= BUDGET
        # a budget below the longest example: it runs alone; a budget the batch fits: one pass, as is
        trainer.p = TrainParams(step_tokens=20, share_prefix=share)
        assert [len(part) for part in trainer.micro_batches(batch) if len(batch[part[-1]].ids) > 20] == [1]
        for fits in (0, padded_tokens(batch, share)):
            trainer.p = TrainParams(step_tokens=fits, share_prefix=share)
            assert trainer.micro_batches(batch) == [list(range(len(batch)))]


def test_micro_batches_are_evened_out_so_the_largest_is_as_small_as_the_count_allows(tiny_lm):
    batch = [Example([1] + list(range(100, 109 + n % 2))) for n in range(16)]  # 10 or 11 tokens
    p = TrainParams(step_tokens=55)  # five to a part: 5 + 5 + 5 + 1 when filled in turn
    trainer = Trainer(build_student(tiny_lm, p), tiny_lm, p, 1)
    assert [len(part) for part in trainer.micro_batches(batch)] == [4, 4, 4, 4]
    # Evened out, the last of five parts would hold four 11-token examples (44): filled in turn instead.
    trainer.p = TrainParams(step_tokens=40)
    parts = trainer.micro_batches(batch)
    assert [len(part) for part in parts] == [4, 4, 3, 3, 2]
    assert all(padded_tokens([batch[i] for i in part], 0) <= 40 for part in parts)


def test_micro_batched_step_counts_each_micro_batch_s_shared_prefix_as_run(tiny_lm):
    batch, _, prefix = make_batch(tiny_lm, "ce")
    batch = batch[5:]  # the four examples that share the prefix
    example_tokens = sum(len(e.ids) for e in batch)
    for budget, prefix_runs in ((0, 1), (2 * len(prefix) + 16, 2)):
        p = TrainParams(lora_dropout=0.0, step_tokens=budget, share_prefix=8)
        trainer = Trainer(build_student(tiny_lm, p), tiny_lm, p, 1)
        assert len(trainer.micro_batches(batch)) == prefix_runs
        trainer.step(batch)
        assert trainer.report.example_tokens == example_tokens
        assert trainer.report.student_tokens == example_tokens - (len(batch) - prefix_runs) * len(prefix)


def teacher_specs(lm) -> list[TeacherSpec]:
    g = torch.Generator().manual_seed(1)
    vocab = lm.model.config.vocab_size
    bos = [lm.tokenizer.bos_token_id]
    context = bos + torch.randint(100, vocab, (10,), generator=g).tolist()
    specs = [
        TeacherSpec(bos + torch.randint(100, vocab, (n,), generator=g).tolist(), first)
        for n, first in ((13, 0), (8, 2), (21, 4), (3, 3), (17, 0))
    ]  # (3, 3): no scored row
    specs += [
        TeacherSpec(context + torch.randint(100, vocab, (n,), generator=g).tolist(), len(context)) for n in (6, 9, 4)
    ]
    return specs


@pytest.mark.parametrize("topk", [0, 32])
@pytest.mark.parametrize("share", [0, 8])
def test_teacher_dists_in_row_chunks_equal_the_whole_bucket_and_each_spec_alone(tiny_lm, topk, share):
    specs = teacher_specs(tiny_lm)
    assert any(s.rows == 0 for s in specs) and group_by_prefix([(s.ids, s.first) for s in specs], 8)[0]
    whole = teacher_dists(tiny_lm.model, tiny_lm, specs, topk=topk, temperature=2.0, share_prefix=share, chunk_rows=0)
    chunked = teacher_dists(
        tiny_lm.model, tiny_lm, specs, topk=topk, temperature=2.0, share_prefix=share, chunk_rows=5
    )  # chunks cross example boundaries
    vocab = tiny_lm.model.config.vocab_size
    for spec, a, b in zip(specs, whole, chunked):
        assert a.logp.shape == b.logp.shape == (spec.rows, topk or vocab)
        assert torch.allclose(a.logp, b.logp, rtol=1e-6, atol=1e-6)
        assert (a.index is None) == (b.index is None) == (not topk)
        if topk:
            assert torch.equal(a.index, b.index)
        # an independent reference: each spec alone, the whole vocabulary
        hidden = selected_hidden(tiny_lm.model, tiny_lm, [spec.ids], [spec.first], [spec.rows])
        logits = head_logits(tiny_lm.model, tiny_lm, hidden)
        ref = torch.log_softmax(logits / 2.0, dim=-1)
        if topk:
            ref = ref.gather(-1, b.index)
        assert torch.allclose(b.logp, ref, atol=1e-5), spec


def test_teacher_dists_run_the_head_on_at_most_chunk_rows_rows(tiny_lm, monkeypatch):
    specs = teacher_specs(tiny_lm)
    real, rows = training.teacher.top_logp, []

    def spy(hidden, *args):
        rows.append(len(hidden))
        return real(hidden, *args)

    monkeypatch.setattr(training.teacher, "top_logp", spy)  # where teacher_dists looks it up
    teacher_dists(tiny_lm.model, tiny_lm, specs, topk=32, batch_tokens=4096, share_prefix=0, chunk_rows=5)
    assert max(rows) == 5 and sum(rows) == sum(s.rows for s in specs)
    rows.clear()
    teacher_dists(tiny_lm.model, tiny_lm, specs, topk=32, batch_tokens=4096, share_prefix=0, chunk_rows=0)
    assert max(rows) == sum(s.rows for s in specs)  # one bucket, one head call


def test_prefix_caches_from_the_plain_pass_equal_their_own_pass(tiny_lm):
    """A shared prefix run as a padded row of the plain examples' pass gives the keys and values of
    its own pass, and gradients reach them."""
    batch, _, prefix = make_batch(tiny_lm, "ce")
    plain = batch[:5]
    student = build_student(tiny_lm, TrainParams(lora_dropout=0.0))
    alone = cache_prefix(student, tiny_lm, prefix)
    hidden, _, (ridden,) = states_and_prefix_caches(
        student, tiny_lm, [e.ids for e in plain], [e.first for e in plain], [e.rows for e in plain], [prefix]
    )
    assert len(prefix) < max(len(e.ids) for e in plain)  # so the prefix's row is padded
    assert len(ridden.layers) == len(alone.layers) and ridden.get_seq_length() == len(prefix)
    for a, b in zip(alone.layers, ridden.layers):
        assert torch.allclose(a.keys, b.keys, atol=1e-5) and torch.allclose(a.values, b.values, atol=1e-5)
    assert hidden.shape[0] == sum(e.rows for e in plain)
    ridden.layers[0].keys.sum().backward()
    assert any(p.grad is not None for p in student.parameters() if p.requires_grad)


def test_a_student_trained_with_sdpa_counts_no_switch_for_long_passes(tiny_lm):
    batch, _, _ = make_batch(tiny_lm, "ce")
    trainer, _, grads, _ = trained(tiny_lm, batch, None, BUDGET, 0, sdpa_above=16, attn="sdpa")
    parts = [[batch[i] for i in part] for part in trainer.micro_batches(batch)]
    assert max(len(e.ids) for part in parts for e in part) > 16 and grads  # long passes, trained
    assert {trainer.kernel(part) for part in parts} == {""} and trainer.report.sdpa_passes == 0
