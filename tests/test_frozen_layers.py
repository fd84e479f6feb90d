"""Frozen lowest layers (``lora_depth`` < 1) run once per sequence: the student's and a current-model
teacher's passes then run only the layers above, with the same results as a pass through all."""

from __future__ import annotations

import pytest
import torch
from test_micro_batches import make_batch

from methods.training import TeacherSpec, Trainer, TrainParams, build_student, frozen_copy, pad_right, teacher_dists
from methods.training.frozen_layers import FrozenLayers


def student_and_trainer(lm, share: int = 8, attn: str = "eager", **extra) -> tuple[torch.nn.Module, Trainer]:
    """A half-depth LoRA student of the two-layer model (adapters on the top layer) with a non-zero
    update, and its trainer."""
    torch.manual_seed(0)
    p = TrainParams(lora_dropout=0.0, lora_depth=0.5, share_prefix=share, attn_implementation=attn, **extra)
    student = build_student(lm, p)
    with torch.no_grad():
        for name, param in student.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return student, Trainer(student, lm, p, 1)


def hidden_and_grads(trainer: Trainer, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    trainer.model.zero_grad(set_to_none=True)
    hidden = trainer.student_hidden(batch)
    hidden.float().pow(2).sum().backward()
    named = trainer.model.named_parameters()
    return hidden.detach(), {n: t.grad.clone() for n, t in named if t.requires_grad}


def exact_lower_states(lm, student, sequences, count: int) -> list[torch.Tensor]:
    """The input of layer ``count`` for each sequence, from one pass of the model's own forward."""
    ids, mask = pad_right(sequences, lm.tokenizer.pad_token_id)
    with torch.no_grad():
        out = student.get_base_model().model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return [out.hidden_states[count][i, : len(s)].clone() for i, s in enumerate(sequences)]


def test_only_a_lora_student_with_untrained_lowest_layers_gets_frozen_layers(tiny_lm):
    student, trainer = student_and_trainer(tiny_lm)
    assert trainer.frozen is not None and trainer.frozen.count == 1  # of the model's two layers
    every_layer = build_student(tiny_lm, TrainParams())
    assert FrozenLayers.of(every_layer, tiny_lm, TrainParams()) is None
    assert FrozenLayers.of(student, tiny_lm, TrainParams(lora_depth=0.5, frozen_layer_cache_mb=0)) is None


def test_frozen_layer_states_equal_the_model_s_own_pass(tiny_lm):
    batch, _, _ = make_batch(tiny_lm, "ce")
    student, trainer = student_and_trainer(tiny_lm)
    sequences = [e.ids for e in batch]
    kept = trainer.frozen.states(sequences)
    for mine, theirs in zip(kept, exact_lower_states(tiny_lm, student, sequences, 1), strict=True):
        assert mine.shape == theirs.shape and torch.allclose(mine, theirs, atol=1e-6)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("share", [0, 8])
def test_the_student_s_pass_above_frozen_layers_gives_the_same_states_and_gradients(tiny_lm, share, attn):
    """Fed the model's own lower-layer states, the pass above them (a shared prefix run once, its
    keys and values continued) gives the hidden states and gradients of a pass through all layers;
    with the states it computes itself (another split of the prefix), the same up to rounding."""
    batch, _, _ = make_batch(tiny_lm, "ce")
    student, trainer = student_and_trainer(tiny_lm, share, attn)
    frozen = trainer.frozen
    trainer.frozen = None
    hidden, grads = hidden_and_grads(trainer, batch)
    tokens = trainer.tokens_in_step
    trainer.frozen = frozen
    sequences = [e.ids for e in batch]
    frozen.kept.update(zip(map(tuple, sequences), exact_lower_states(tiny_lm, student, sequences, 1)))
    fed, fed_grads = hidden_and_grads(trainer, batch)
    assert trainer.tokens_in_step == tokens  # the same tokens counted as run
    assert frozen.tokens_run == 0 and frozen.tokens_kept == sum(map(len, sequences))
    assert torch.allclose(fed, hidden, atol=1e-5)
    for name, grad in grads.items():
        assert torch.allclose(fed_grads[name], grad, atol=1e-5 * grad.abs().max()), name
    frozen.kept.clear()
    own, own_grads = hidden_and_grads(trainer, batch)
    assert frozen.tokens_run > 0
    assert torch.allclose(own, hidden, atol=1e-4)
    for name, grad in grads.items():
        assert torch.allclose(own_grads[name], grad, atol=1e-3 * grad.abs().max()), name


def test_a_current_model_teacher_shares_the_frozen_layers_and_their_kept_states(tiny_lm):
    """A frozen copy of the student runs only its upper layers, from the states the student's pass
    kept, and its distributions equal those of its own full pass; the untouched model does not."""
    batch, _, _ = make_batch(tiny_lm, "ce")
    student, trainer = student_and_trainer(tiny_lm)
    frozen = trainer.frozen
    snapshot = frozen_copy(student)
    assert frozen.serves(snapshot) and frozen.serves(student)
    assert not frozen.serves(tiny_lm.model)  # the same values in other tensors: not shared
    trainer.student_hidden(batch)
    run = frozen.tokens_run
    specs = [TeacherSpec(e.ids, e.first) for e in batch]
    shared = teacher_dists(snapshot, tiny_lm, specs, share_prefix=8, frozen=frozen)
    assert frozen.tokens_run == run  # every sequence's lower states were kept by the student's pass
    own = teacher_dists(snapshot, tiny_lm, specs, share_prefix=8)
    for a, b in zip(shared, own, strict=True):
        assert a.logp.shape == b.logp.shape and torch.allclose(a.logp, b.logp, atol=1e-4)
    teacher_dists(tiny_lm.model, tiny_lm, specs, share_prefix=8, frozen=frozen)
    assert frozen.tokens_kept == sum(len(s.ids) for s in specs)  # the untouched model ran its own


def test_kept_states_beyond_the_budget_go_least_recently_used_first(tiny_lm):
    batch, _, _ = make_batch(tiny_lm, "ce")
    _, trainer = student_and_trainer(tiny_lm)
    frozen = trainer.frozen
    first, second, third = (e.ids for e in batch[:3])
    frozen.states([first, second])
    one = frozen.kept[tuple(first)]
    frozen.budget = frozen.bytes + one.numel() * one.element_size() // 2  # room for about 2.5 of them
    frozen.states([first])  # used again: now the most recent
    frozen.states([third])
    assert tuple(second) not in frozen.kept and tuple(first) in frozen.kept and tuple(third) in frozen.kept
    assert frozen.bytes == sum(t.numel() * t.element_size() for t in frozen.kept.values()) <= frozen.budget
    run = frozen.tokens_run
    frozen.states([second])  # dropped, so run again
    assert frozen.tokens_run == run + len(second)


def test_a_training_step_s_loss_and_gradients_are_those_of_passes_through_every_layer(tiny_lm):
    """The loss of a batch against a top-k teacher, micro-batched, with and without frozen layers."""
    batch, targets, _ = make_batch(tiny_lm, "topk")
    results = []
    for budget in (512, 0):
        student, trainer = student_and_trainer(tiny_lm, frozen_layer_cache_mb=budget, step_tokens=60)
        assert (trainer.frozen is None) == (budget == 0)
        loss = trainer.backward(batch, targets)
        named = student.named_parameters()
        results.append((loss, {n: t.grad.clone() for n, t in named if t.requires_grad}))
    (loss, grads), (plain_loss, plain_grads) = results
    assert loss == pytest.approx(plain_loss, rel=1e-5)
    for name, grad in plain_grads.items():
        assert torch.allclose(grads[name], grad, atol=1e-3 * grad.abs().max()), name


def test_compiled_layers_above_frozen_ones_give_the_eager_layers_states_and_gradients(tiny_lm):
    """The compiled layers (``compile_layers``, as in quick) run the pass above the frozen layers,
    with its prefix keys and values, as the eager layers do."""
    batch, _, _ = make_batch(tiny_lm, "ce")
    results = []
    for compiled in (False, True):
        _, trainer = student_and_trainer(tiny_lm, compile_layers=compiled)
        results.append(hidden_and_grads(trainer, batch))
    (hidden, grads), (compiled_hidden, compiled_grads) = results
    assert torch.allclose(compiled_hidden, hidden, atol=1e-4)
    for name, grad in grads.items():
        assert torch.allclose(compiled_grads[name], grad, atol=1e-3 * grad.abs().max()), name


def test_a_training_pass_of_one_row_runs_it_twice_and_keeps_one(tiny_lm, monkeypatch):
    """A batch whose only rows before the shared tails are their prefix runs that prefix as two
    rows (compiled layers would otherwise build graphs for a batch of one), with the same result."""
    import methods.training.frozen_layers as frozen_layers

    batch, _, _ = make_batch(tiny_lm, "ce")
    grouped = batch[5:]  # the four examples sharing a prefix, no plain example
    _, trainer = student_and_trainer(tiny_lm)
    sizes: list[int] = []
    real = frozen_layers.run_layers

    def counting(layers, rotary, hidden, *args, **kwargs):
        if torch.is_grad_enabled():
            sizes.append(hidden.shape[0])
        return real(layers, rotary, hidden, *args, **kwargs)

    monkeypatch.setattr(frozen_layers, "run_layers", counting)
    hidden, _ = hidden_and_grads(trainer, grouped)
    assert sizes == [2, 4]  # the prefix twice, then the four tails
    trainer.frozen = None
    plain_hidden, _ = hidden_and_grads(trainer, grouped)
    assert torch.allclose(hidden, plain_hidden, atol=1e-4)


def test_tails_of_very_different_lengths_run_in_two_passes_of_two_rows_or_more():
    from methods.training.frozen_layers import length_runs

    lengths = [9, 3, 4, 50, 52, 51]  # 6 x 52 padded in one run, 3 x 9 + 3 x 52 in two: 129 fewer
    assert length_runs(lengths, min_saving=64) == [[1, 2, 0], [3, 5, 4]]
    assert length_runs(lengths, min_saving=129) == [[1, 2, 0], [3, 5, 4]]
    assert length_runs(lengths, min_saving=130) == [[0, 1, 2, 3, 4, 5]]
    assert length_runs([3, 90, 91], min_saving=0) == [[0, 1, 2]]  # a run of one row would compile anew
    assert length_runs([5, 5, 5, 5], min_saving=0) == [[0, 1, 2, 3]]  # nothing saved


@pytest.mark.parametrize("grad", [True, False])
def test_tails_split_by_length_give_the_same_states_and_gradients(tiny_lm, monkeypatch, grad):
    """The frozen layers' and the layers above's passes over a shared prefix's tails, cut into two
    runs by length (``length_runs``), give what one padded run gives."""
    from methods.training import frozen_layers

    batch, _, _ = make_batch(tiny_lm, "ce")
    results = []
    for saving in (10**9, 0):  # one run, then two
        monkeypatch.setattr(frozen_layers, "TAIL_SPLIT_MIN_SAVING", saving)
        student, trainer = student_and_trainer(tiny_lm)
        if grad:
            results.append(hidden_and_grads(trainer, batch))
        else:
            with torch.no_grad():
                results.append((trainer.student_hidden(batch), {}))
    (one, one_grads), (two, two_grads) = results
    assert torch.allclose(two, one, atol=1e-5)
    assert one_grads.keys() == two_grads.keys()
    for name, grad_one in one_grads.items():
        # fp32 sums in another order (two passes' gradients added; the states agree to 2e-7): rounding
        assert torch.allclose(two_grads[name], grad_one, atol=1e-3 * grad_one.abs().max()), name


def test_a_shared_prefix_runs_once_and_later_tails_continue_it_exactly(tiny_lm):
    """New sequences after a prefix that an earlier call ran reuse its kept output and keys and
    values: only their tails run, and their states are bitwise those of a first run."""
    batch, _, prefix = make_batch(tiny_lm, "ce")
    _, trainer = student_and_trainer(tiny_lm)
    frozen = trainer.frozen
    first, later = [e.ids for e in batch[5:7]], [e.ids for e in batch[7:]]
    frozen.states(first)
    run = frozen.tokens_run
    states = frozen.states(later)
    assert frozen.tokens_run == run + sum(len(s) - len(prefix) for s in later)
    _, fresh = student_and_trainer(tiny_lm)
    for mine, theirs in zip(states, fresh.frozen.states(later), strict=True):
        assert torch.equal(mine, theirs)


def test_a_frozen_teacher_runs_a_shared_prefix_above_the_frozen_layers_once(tiny_lm):
    """A current-model teacher (no trainable parameter) keeps a prefix's keys and values from its
    layers above between calls, with the states a first call gives; the student, whose weights
    change between steps, runs the prefix every time."""
    batch, _, prefix = make_batch(tiny_lm, "ce")
    student, trainer = student_and_trainer(tiny_lm)
    frozen = trainer.frozen
    snapshot = frozen_copy(student)
    first, later = [e.ids for e in batch[5:7]], [e.ids for e in batch[7:]]

    def states(model, sequences):
        with torch.no_grad():
            return frozen.selected_states(model, sequences, [len(prefix)] * 2, [2, 3], share_prefix=8)

    states(snapshot, first)
    kept, tokens = states(snapshot, later)
    assert tokens == sum(len(s) - len(prefix) for s in later)  # the tails only
    fresh, fresh_tokens = states(frozen_copy(student), later)
    assert fresh_tokens == tokens + len(prefix) and torch.equal(kept, fresh)
    states(student, first)
    assert states(student, later)[1] == fresh_tokens  # no prefix kept for a model that trains
