"""Cartridges on the tiny random model: the prefix mechanism, training, answering and storage."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from benchmark.config import RunParams
from benchmark.errors import BenchError
from benchmark.registry import METHODS
from benchmark.types import Context, Prompt
from methods.cartridge import CartridgeMethod, CartridgeParams, CartridgeTrainer
from methods.training import TeacherSpec, teacher_dists

CONTEXT = "Douprur is a town. It was founded by Drexrain Lintrim in 1526."
TARGETS = [
    "Question: Who founded Douprur? Answer: Drexrain Lintrim",
    "Question: When was Douprur founded? Answer: 1526",
]
CONTEXTS = [Context("c0", CONTEXT, TARGETS)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Many small operations: one thread avoids hand-offs that dominate on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def loud_lm(tiny_lm):
    """The tiny random Llama with its weights scaled so that what it attends to matters.

    As initialised (std 0.02) its logits are almost uniform and barely depend on the context: the
    KL between reading a context and not is ~1e-6, too close to rounding for a test. Larger
    embeddings (tied: the LM head too), sharper attention and louder attention outputs make it
    ~1 nat. The shared ``tiny_lm`` is left as it is."""
    model = copy.deepcopy(tiny_lm.model)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(20)
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
            layer.self_attn.v_proj.weight.mul_(30)
            layer.self_attn.o_proj.weight.mul_(30)
    return dataclasses.replace(tiny_lm, model=model)


def small(**changes) -> CartridgeParams:
    base = dict(prefix_tokens=8, epochs=8, batch_size=2, lr=1e-1, teacher_topk=16)
    base.update(changes)
    return CartridgeParams(**base)


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_registered_with_its_metadata():
    cls = METHODS.get("cartridge")
    assert cls is CartridgeMethod
    assert (cls.display_name, cls.family, cls.storage_class, cls.uses_targets) == (
        "Cartridges",
        "parametric",
        "O(1)",
        True,
    )


def test_a_cartridge_of_the_whole_context_reproduces_the_teacher(loud_lm):
    """Initialised to the KV cache of BOS + context (p = all of it) and untrained, the student
    reading a target sentence after the cartridge predicts what the model reading context +
    sentence does, so the training loss starts at zero: the prefix carries the context exactly."""
    lm = loud_lm
    method = CartridgeMethod(lm, small(prefix_tokens=1000, init_fill="shrink", frozen_tokens=0), RunParams())
    ids = method.init_ids(CONTEXTS)
    assert ids == lm.encode(CONTEXT)  # BOS + the context, nothing added, nothing cut
    method.cartridge = method.build_cartridge(ids)
    assert method.cartridge.length == len(ids)
    groups, specs = method.examples(CONTEXTS)
    examples = [e for group in groups for e in group]
    assert [tuple(s.ids) for s in specs] == [tuple(ids + lm.encode(t, add_bos=False)) for t in TARGETS]
    dists = teacher_dists(lm.model, lm, specs)  # full vocabulary
    trainer = CartridgeTrainer(method.cartridge, lm, method.params, 1)
    with torch.no_grad():
        loss = float(trainer.loss(examples, dists))
        assert abs(loss) < 1e-4
        # the same sentences read without the context (after BOS alone) are far from the teacher
        bare = teacher_dists(lm.model, lm, [TeacherSpec(lm.encode(t), 0) for t in TARGETS])
        gap = sum(float((d.logp.exp() * (d.logp - b.logp[1:])).sum(-1).mean()) for d, b in zip(dists, bare))
    assert gap > 0.1


def test_training_moves_the_prefix_lowers_the_loss_and_answers(loud_lm):
    # sdpa_above_tokens=1 makes every pass "long": the cartridge still trains through the base
    # model's own kernel, since it is no transformers model whose kernel could be switched
    method = CartridgeMethod(loud_lm, small(sdpa_above_tokens=1), RunParams(max_new_tokens=4), seed=0)
    method.inject(CONTEXTS)
    assert method.stats["train_sdpa_passes"] == 0
    cartridge = method.cartridge
    initial = method.build_cartridge(method.init_ids(CONTEXTS))
    assert cartridge.length == 8
    frozen = [name for name, _ in cartridge.named_buffers()]
    assert all(torch.equal(getattr(cartridge, n), getattr(initial, n)) for n in frozen)  # the BOS sink
    assert any(not torch.equal(a, b) for a, b in zip(cartridge.parameters(), initial.parameters()))
    losses = method.last_report.losses
    assert len(losses) == 8
    assert sum(losses[-2:]) < 0.5 * sum(losses[:2])
    answers = method.answer([Prompt("c0", "Who founded Douprur?"), Prompt("c0", "When?")])
    assert len(answers) == 2 and all(isinstance(a.text, str) for a in answers)
    assert method.stats["train_steps"] == 8 and method.stats["teacher_tokens"] > 0


def test_a_shared_prompt_head_gives_the_loss_of_separate_passes(loud_lm):
    """With ``prompt_style=run`` every sentence follows the same demonstrations: run once after
    the cartridge and shared (``share_prefix``), they give the loss of one pass per example."""
    lm = dataclasses.replace(loud_lm, fewshot=3)
    losses = []
    for share in (0, 8):
        method = CartridgeMethod(lm, small(prompt_style="run", share_prefix=share), RunParams(fewshot=3))
        method.cartridge = method.build_cartridge(method.init_ids(CONTEXTS))
        groups, specs = method.examples(CONTEXTS)
        examples = [e for group in groups for e in group]
        assert all(e.first > 20 for e in examples)  # the demonstrations come first
        dists = teacher_dists(lm.model, lm, specs, topk=16)
        trainer = CartridgeTrainer(method.cartridge, lm, method.params, 1)
        with torch.no_grad():
            losses.append(float(trainer.loss(examples, dists)))
        if share:  # the head ran once
            assert trainer.tokens_in_step < sum(len(e.ids) for e in examples)
    assert losses[0] > 0.01
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_greedy_answers_equal_the_model_reading_prefix_tokens_then_prompt(loud_lm):
    """Batched, left-padded decoding after the cartridge gives what plain greedy decoding of
    (cartridge tokens + prompt) gives, prompt by prompt."""
    lm = loud_lm
    method = CartridgeMethod(lm, small(prefix_tokens=1000, init_fill="shrink"), RunParams())
    ids = method.init_ids(CONTEXTS)
    method.cartridge = method.build_cartridge(ids)
    texts = ["Question: Who founded Douprur? Answer:", "Lena", "The Kessel bridge was built in 1874 from grey stone."]
    got = method.greedy(texts, 6)
    expected = []
    for text in texts:
        full = torch.tensor([ids + lm.encode(text, add_bos=False)])
        out = lm.model.generate(
            input_ids=full,
            attention_mask=torch.ones_like(full),
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id,
            eos_token_id=lm.tokenizer.eos_token_id,
        )
        expected.append(lm.tokenizer.decode(out[0, full.shape[1] :], skip_special_tokens=True))
    assert got == expected
    assert len(set(got)) == len(got)  # the prompts matter: not one constant output


def test_footprint_is_the_prefix_bytes(tiny_lm):
    method = CartridgeMethod(tiny_lm, small(epochs=1), RunParams())
    assert method.footprint().extra_bytes == 0
    method.inject(CONTEXTS)
    cfg = tiny_lm.model.config
    numbers = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * 8 * cfg.head_dim
    footprint = method.footprint()
    assert footprint.extra_bytes == numbers * 4  # fp32
    assert footprint.changed_params == numbers * 7 // 8  # the first position stays frozen
    assert footprint.detail["prefix_tokens"] == 8


def test_the_base_model_is_untouched(tiny_lm):
    before = state(tiny_lm.model)
    method = CartridgeMethod(tiny_lm, small(epochs=2), RunParams())
    method.inject(CONTEXTS)
    after = tiny_lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None and not p.requires_grad for p in tiny_lm.model.parameters())
    assert not tiny_lm.model.training
    assert {name for name, _ in method.cartridge.named_parameters()} <= {
        f"{kind}.{i}" for kind in ("keys", "values") for i in range(tiny_lm.model.config.num_hidden_layers)
    }


def test_init_fills_the_prefix_by_repeating_or_shrinks_it(tiny_lm):
    method = CartridgeMethod(tiny_lm, small(prefix_tokens=60), RunParams())
    ids = method.init_ids(CONTEXTS)
    body = tiny_lm.encode(CONTEXT, add_bos=False)
    sep = tiny_lm.encode("\n\n", add_bos=False)
    assert len(ids) == 60
    assert ids == (tiny_lm.encode(CONTEXT) + sep + body + sep + body)[:60]
    shrunk = CartridgeMethod(tiny_lm, small(prefix_tokens=60, init_fill="shrink"), RunParams()).init_ids(CONTEXTS)
    assert shrunk == tiny_lm.encode(CONTEXT)
    two = [Context("c0", CONTEXT), Context("c1", "Fistear is a person.")]
    cut = CartridgeMethod(tiny_lm, small(prefix_tokens=20), RunParams()).init_ids(two)
    assert cut == tiny_lm.encode(CONTEXT)[:20]  # the first p tokens of the joined contexts


def test_sequential_injection_keeps_training_one_cartridge(tiny_lm):
    method = CartridgeMethod(tiny_lm, small(epochs=1), RunParams())
    method.inject(CONTEXTS)
    first = method.cartridge
    snapshot = [p.detach().clone() for p in first.parameters()]
    method.inject([Context("c1", "Fistear is a person.", ["Question: Who is Fistear? Answer: a person"])])
    assert method.cartridge is first and first.length == 8
    assert any(not torch.equal(a, b) for a, b in zip(first.parameters(), snapshot))
    assert method.stats["train_steps"] == 2  # one batch of two sentences, then one of one


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"init_fill": "zeros"}, "init_fill"), ({"frozen_tokens": 8}, "frozen_tokens")],
)
def test_bad_settings_are_one_line_errors(tiny_lm, changes, message):
    assert message in CartridgeMethod.params_problem(small(**changes))
    with pytest.raises(BenchError, match=message):
        CartridgeMethod(tiny_lm, small(**changes), RunParams())


def test_no_target_sentences_is_an_error(tiny_lm):
    with pytest.raises(BenchError, match="target sentences"):
        CartridgeMethod(tiny_lm, small(), RunParams()).inject([Context("c0", CONTEXT)])


def test_bench_run_smoke(smoke_batch):
    result, _ = smoke_batch("cartridge")
    assert result["cost"]["train_tokens"] > 0
    assert result["cost"]["footprint_bytes"] > 0
