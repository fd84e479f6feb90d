"""SELF-PARAM on the tiny random model: the objective, the teacher and what training may change."""

from __future__ import annotations

import random
import warnings

import pytest
import torch

from benchmark.config import RunParams
from benchmark.errors import BenchError
from benchmark.types import Context
from methods.selfparam import SelfParam, SelfParamParams
from methods.training import (
    Dist,
    Example,
    TeacherSpec,
    Trainer,
    TrainParams,
    build_student,
    frozen_copy,
    group_by_prefix,
    kl_rows,
    teacher_dists,
)
from methods.training.student import merge_adapter

SENTENCE = "Question: Who founded Douprur? Answer: Drexrain Lintrim"
CONTEXT = "Douprur is a town. It was founded by Drexrain Lintrim in 1526."


def small(**changes) -> SelfParamParams:
    """Few, cheap steps: the tiny model's cost is dominated by its full-size vocabulary."""
    base = dict(
        epochs=2,
        batch_size=8,
        lr=1e-2,
        retain_tokens=8,
        retain_pool=1,
        retain_per_target=0.5,
        context_per_target=0.5,
        teacher_topk=16,
        retain_source="model",
    )
    base.update(changes)
    return SelfParamParams(**base)


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def kl_of(lm, student, context: str, topk: int) -> float:
    bos = [lm.tokenizer.bos_token_id]
    ctx = lm.encode(context, add_bos=False) if context else []
    sent = lm.encode(SENTENCE, add_bos=False)
    dist = teacher_dists(lm.model, lm, [TeacherSpec(bos + ctx + sent, len(ctx))], topk=topk)[0]
    trainer = Trainer(student, lm, TrainParams(lora_dropout=0.0), 1)
    student.eval()
    with torch.no_grad():
        return float(trainer.loss([Example(bos + sent, 0)], [dist]))


@pytest.mark.parametrize("topk", [0, 1024])
def test_kl_is_zero_for_the_unchanged_model_without_context_and_positive_with_it(tiny_lm, topk):
    student = build_student(tiny_lm, TrainParams(lora_dropout=0.0))  # LoRA B starts at zero
    assert abs(kl_of(tiny_lm, student, "", topk)) < 1e-6
    assert kl_of(tiny_lm, student, CONTEXT, topk) > 1e-4


def test_topk_tail_bucket_kl_is_exact_when_the_tail_is_one_token():
    torch.manual_seed(0)
    teacher = torch.log_softmax(torch.randn(5, 50), -1)
    student = torch.log_softmax(torch.randn(5, 50), -1)
    full = kl_rows(student, Dist(teacher))
    values, index = teacher.topk(49, -1)  # the tail bucket is then the 50th token itself
    assert torch.allclose(kl_rows(student, Dist(values, index)), full, atol=1e-5)
    values, index = teacher.topk(5, -1)
    coarse = kl_rows(student, Dist(values, index))
    assert (coarse >= -1e-6).all() and (coarse <= full + 1e-5).all()  # coarsening never adds divergence


def test_loss_decreases_and_lora_leaves_base_weights_untouched(tiny_lm):
    original = state(tiny_lm.model)
    method = SelfParam(tiny_lm, small(epochs=6, batch_size=16, schedule="constant"), RunParams(), seed=0)
    method.inject([Context("c0", CONTEXT, [SENTENCE, "Question: When was Douprur founded? Answer: 1526"])])
    losses = method.last_report.losses
    assert len(losses) >= 6
    assert sum(losses[-2:]) / 2 < 0.7 * sum(losses[:2]) / 2
    assert same(original, state(tiny_lm.model))  # the shared base model is the original
    student_base = {
        k.replace("base_model.model.", "").replace(".base_layer", ""): v
        for k, v in method.student.state_dict().items()
        if "lora_" not in k
    }
    assert all(torch.equal(student_base[k], original[k]) for k in original)  # only adapters changed
    lora = [v for k, v in method.student.state_dict().items() if "lora_B" in k]
    assert lora and any(v.abs().sum() > 0 for v in lora)
    footprint = method.footprint()
    assert footprint.changed_params == sum(v.numel() for k, v in method.student.named_parameters() if v.requires_grad)
    assert footprint.extra_bytes == 4 * footprint.changed_params
    assert method.stats["train_tokens"] > 0 and method.stats["train_s"] > 0


@pytest.mark.parametrize("teacher", ["original", "current"])
def test_teacher_across_sequential_steps(tiny_lm, monkeypatch, teacher):
    import methods.selfparam as sp

    seen: list[dict[str, torch.Tensor]] = []
    real = sp.teacher_dists

    def spy(model, *args, **kwargs):
        seen.append((model is tiny_lm.model, state(model)))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(sp, "teacher_dists", spy)
    original = state(tiny_lm.model)
    # An uncached teacher runs at every step, so the test sees it throughout each injection.
    method = SelfParam(tiny_lm, small(teacher=teacher, teacher_cache=False), RunParams(), seed=0)
    method.inject([Context("c0", CONTEXT, [SENTENCE])])
    method.inject(
        [
            Context(
                "c1",
                "Fistear is a person. Fistear worked as a botanist.",
                ["Question: What job did Fistear have? Answer: botanist"],
            )
        ]
    )
    assert len(seen) >= 2
    if teacher == "original":
        assert all(is_base and same(weights, original) for is_base, weights in seen)
    else:  # a copy of the model being updated: by the second step it carries the first step's adapter
        assert not seen[-1][0]
        lora_b = [v for k, v in seen[-1][1].items() if "lora_B" in k]
        assert any(v.abs().sum() > 0 for v in lora_b)
        # frozen: every teacher pass of one injection sees the same weights while the student trains
        second = [weights for _, weights in seen if any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)]
        assert len(second) >= 2 and all(same(second[0], w) for w in second[1:])
        assert not same(second[0], state(method.student))
    assert same(original, state(tiny_lm.model))
    assert method.student is method.model  # the same adapters kept accumulating


def test_current_teacher_shares_the_frozen_weights_and_copies_the_trained_ones(tiny_lm):
    student = build_student(tiny_lm, TrainParams(lora_dropout=0.0))
    teacher = frozen_copy(student)
    own, copied = dict(student.named_parameters()), dict(teacher.named_parameters())
    frozen = [n for n, p in own.items() if not p.requires_grad]
    trained = [n for n, p in own.items() if p.requires_grad]
    assert frozen and trained and own.keys() == copied.keys()
    assert all(copied[n].data_ptr() == own[n].data_ptr() for n in frozen)  # no second set of base weights
    assert all(copied[n].data_ptr() != own[n].data_ptr() and not copied[n].requires_grad for n in trained)
    with torch.no_grad():
        for n in trained:
            own[n].add_(1.0)  # the student trains on; the teacher keeps the weights it was copied with
    assert all(not torch.equal(copied[n], own[n]) for n in trained)


def test_a_current_teacher_copied_with_a_fresh_adapter_runs_without_it(tiny_lm):
    """A fresh adapter adds nothing, so the copy leaves it out (the same logits, fewer operations);
    an adapter that learned something stays on."""
    student = build_student(tiny_lm, TrainParams(lora_dropout=0.0))
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad(), tiny_lm.autocast():
        fresh = frozen_copy(student)
        assert all(m.disable_adapters for m in fresh.modules() if hasattr(m, "lora_B"))
        assert torch.equal(fresh(input_ids=ids).logits, student(input_ids=ids).logits)
        for name, param in student.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
        trained = frozen_copy(student)
        assert not any(m.disable_adapters for m in trained.modules() if hasattr(m, "lora_B"))
        assert torch.equal(trained(input_ids=ids).logits, student(input_ids=ids).logits)


def test_uncached_teacher_gives_the_same_first_step_as_the_cached_one(tiny_lm):
    def first_loss(cache: bool) -> float:
        method = SelfParam(tiny_lm, small(epochs=1, teacher_cache=cache, lora_dropout=0.0), RunParams(), seed=3)
        method.inject([Context("c0", CONTEXT, [SENTENCE])])
        return method.last_report.losses[0]

    assert first_loss(True) == pytest.approx(first_loss(False), rel=1e-4)


def test_retain_texts_come_from_c4_when_present(tiny_lm, shared_data):
    from methods.retain import RetainStream, resolve_source

    if not (shared_data / "text" / "c4_sample.jsonl").exists():
        pytest.skip("no C4 sample")
    assert resolve_source("auto") == "c4"
    stream = RetainStream(tiny_lm, "auto", 32, seed=0)
    first, second = stream.take(3), stream.take(3)
    assert all(16 <= len(ids) <= 32 for ids in first + second)
    assert first != second  # a stream hands out new texts


def test_the_retain_source_that_auto_chose_is_recorded(tiny_lm):
    from methods.retain import resolve_source

    chosen = SelfParam(tiny_lm, small(retain_source="auto"), RunParams(), seed=0).provenance()
    assert chosen == {"retain_source": resolve_source("auto")} and chosen["retain_source"] != "auto"
    named = SelfParam(tiny_lm, small(retain_source="wikitext"), RunParams(), seed=0).provenance()
    assert named == {"retain_source": "wikitext"}


def test_unknown_settings_are_one_line_errors(bench, tmp_path):
    code, _, err = bench(
        "run",
        "--method",
        "selfparam",
        "--task",
        "batch",
        "--profile",
        "smoke",
        "--set",
        "params=half",
        "--out",
        tmp_path,
    )
    assert code == 2 and "unknown params 'half'" in err


def test_bench_run_selfparam_smoke(smoke_batch):
    result, out = smoke_batch("selfparam", "retain_source=model")
    assert result["cost"]["train_tokens"] > 0 and result["cost"]["train_tokens_per_s"] > 0
    assert result["cost"]["footprint_bytes"] > 0
    assert result["config"]["params"]["method"]["teacher"] == "original"
    assert result["threads"]["torch"] >= 1 and result["threads"]["omp_wait_policy"]  # what cost depends on
    device = result["device"]  # and where it ran
    if device["type"] == "cuda":
        assert device["name"] and device["cuda_version"] and device["peak_memory_allocated_bytes"] > 0
    else:
        assert device["type"] == "cpu" and device["cpu_model"]
        assert device["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        assert isinstance(device["bf16_instructions"], bool)
    assert "tok/s" in out


def test_teacher_prefix_sharing_matches_separate_passes(tiny_lm):
    bos = [tiny_lm.tokenizer.bos_token_id]
    ctx = tiny_lm.encode(CONTEXT, add_bos=False)
    sentences = [
        tiny_lm.encode(s, add_bos=False)
        for s in (SENTENCE, "Question: When? Answer: 1526", "Question: What is Douprur? Answer: a town")
    ]
    specs = [TeacherSpec(bos + ctx + s, len(ctx)) for s in sentences] + [TeacherSpec(bos + ctx, 0)]
    for topk in (0, 32):
        shared = teacher_dists(tiny_lm.model, tiny_lm, specs, topk=topk, share_prefix=8)
        separate = teacher_dists(tiny_lm.model, tiny_lm, specs, topk=topk, share_prefix=0)
        for a, b in zip(shared, separate):
            assert a.logp.shape == b.logp.shape
            assert torch.allclose(a.logp, b.logp, atol=1e-4)


def test_student_prefix_sharing_gives_the_same_loss_and_gradients(tiny_lm):
    bos = [tiny_lm.tokenizer.bos_token_id]
    prefix = tiny_lm.encode("Question: Where does Lena Hart live? Answer: Orvik\n\n", add_bos=False)
    sentences = [tiny_lm.encode(s, add_bos=False) for s in (SENTENCE, "Question: When? Answer: 1526")]
    batch = [Example(bos + prefix + s, len(prefix), "qa") for s in sentences]
    batch.append(Example(bos + sentences[0], 0, "qa"))  # no shared prefix: the plain path
    results = []
    for share in (8, 0):
        torch.manual_seed(0)
        student = build_student(tiny_lm, TrainParams(lora_dropout=0.0, share_prefix=share))
        with torch.no_grad():
            for name, param in student.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.02)  # so that gradients reach lora_A too
        trainer = Trainer(student, tiny_lm, TrainParams(lora_dropout=0.0, share_prefix=share), 1)
        loss = trainer.loss(batch, None)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.requires_grad}
        results.append((float(loss.detach()), grads, trainer.tokens_in_step))
    (shared_loss, shared_grads, shared_tokens), (plain_loss, plain_grads, plain_tokens) = results
    assert shared_loss == pytest.approx(plain_loss, rel=1e-5)
    assert all(torch.allclose(shared_grads[n], plain_grads[n], atol=1e-6, rtol=1e-4) for n in plain_grads)
    assert plain_tokens - shared_tokens == len(prefix)  # the shared prefix was run once, not twice


def test_answer_only_examples_share_the_demonstrations_before_their_different_questions(tiny_lm):
    # With the loss on the answer alone each example's unscored part ends with its own question; the
    # demonstrations before it still run once, for the student and for the teacher.
    demos = tiny_lm.encode("Question: Where does Lena Hart live? Answer: Orvik\n\n", add_bos=False)
    bos = [tiny_lm.tokenizer.bos_token_id]
    framed = []
    for question, answer in (
        ("Question: Who founded Douprur? Answer:", " Drexrain"),
        ("Question: When? Answer:", " 1526"),
    ):
        head = bos + demos + tiny_lm.encode(question, add_bos=False)
        framed.append((head + tiny_lm.encode(answer, add_bos=False), len(head)))
    groups, plain = group_by_prefix(framed, 8)
    common = len(bos + demos) + 2  # the demonstrations and "Question:" (two tokens here)
    assert not plain and [len(k) for k in groups] == [common] and framed[0][1] > common
    batch = [Example(ids, first, "qa") for ids, first in framed]
    losses, tokens = [], []
    for share in (8, 0):
        torch.manual_seed(0)
        p = TrainParams(lora_dropout=0.0, share_prefix=share)
        trainer = Trainer(build_student(tiny_lm, p), tiny_lm, p, 1)
        losses.append(float(trainer.loss(batch, None)))
        tokens.append(trainer.tokens_in_step)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and tokens[1] - tokens[0] == common
    specs = [TeacherSpec(ids, first - 1) for ids, first in framed]
    shared, alone = (teacher_dists(tiny_lm.model, tiny_lm, specs, topk=16, share_prefix=share) for share in (8, 0))
    assert all(torch.allclose(a.logp, b.logp, atol=1e-4) for a, b in zip(shared, alone))


def test_step_counts_shared_prefixes_once_as_computed_and_per_example_as_work(tiny_lm):
    bos = [tiny_lm.tokenizer.bos_token_id]
    prefix = tiny_lm.encode("Question: Where does Lena Hart live? Answer: Orvik\n\n", add_bos=False)
    sentences = [tiny_lm.encode(s, add_bos=False) for s in (SENTENCE, "Question: When? Answer: 1526")]
    batch = [Example(bos + prefix + s, len(prefix), "qa") for s in sentences]
    p = TrainParams(lora_dropout=0.0, share_prefix=8)
    trainer = Trainer(build_student(tiny_lm, p), tiny_lm, p, 1)
    trainer.step(batch)
    assert trainer.report.example_tokens == sum(len(e.ids) for e in batch)
    assert trainer.report.student_tokens == trainer.report.example_tokens - len(prefix)


def test_retain_questions_are_unrelated_and_the_teacher_reads_them_without_the_context(tiny_lm):
    from methods.retain import RetainQuestions, RetainStream
    from methods.selfparam import InjectionPlan
    from tasks.qa import load_documents

    p = small(retain_qa_per_target=2.0, retain_per_target=0, context_loss=False)
    plan = InjectionPlan(
        tiny_lm,
        [Context("c0", CONTEXT, [SENTENCE])],
        p,
        RetainStream(tiny_lm, "model", 8, 0),
        random.Random(0),
        RetainQuestions(5),
    )
    examples = plan.epoch(0)
    assert [e.kind for e in examples] == ["qa", "retain_qa", "retain_qa"]
    context_ids = tiny_lm.encode(CONTEXT, add_bos=False)
    for e in examples[1:]:
        spec = plan.specs[e.teacher[0]]
        assert (spec.ids, spec.first) == (e.ids, e.first)
        assert tiny_lm.tokenizer.decode(e.ids[e.first + 1 :]).startswith("Question: ")
        assert context_ids[:5] != spec.ids[1:6]
    # seeded: the same stream repeats, another seed gives other questions, none of a scored context
    assert RetainQuestions(5).take(20) == RetainQuestions(5).take(20) != RetainQuestions(6).take(20)
    scored = {qa.question for d in load_documents("fictional", "", 100, 0) for qa in d.probes + d.train_qa}
    assert not {s.split(" Answer: ")[0].removeprefix("Question: ") for s in RetainQuestions(5).take(500)} & scored


def test_a_retain_question_pool_is_drawn_once_per_injection_and_reused_every_epoch(tiny_lm):
    from methods.retain import RetainQuestions, RetainStream
    from methods.selfparam import InjectionPlan

    def plan_for(pool: int) -> InjectionPlan:
        p = small(retain_qa_per_target=2.0, retain_qa_pool=pool, retain_per_target=0, context_loss=False)
        contexts = [Context("c0", CONTEXT, [SENTENCE]), Context("c1", CONTEXT + " Again.", [SENTENCE])]
        stream = RetainStream(tiny_lm, "model", 8, 0)
        return InjectionPlan(tiny_lm, contexts, p, stream, random.Random(0), RetainQuestions(5))

    def questions(examples: list) -> list[tuple]:
        return [tuple(e.ids) for e in examples if e.kind == "retain_qa"]

    pooled, fresh = plan_for(3), plan_for(0)
    epochs = [pooled.epoch(e) for e in range(3)]
    assert questions(epochs[0])[:2] == questions(fresh.epoch(0))[:2]  # the same stream, from its start
    seen = {q for examples in epochs for q in questions(examples)}
    assert len(seen) == 6  # 3 per context, cycled: 12 examples over 3 epochs, 6 distinct
    assert questions(epochs[0])[:2] != questions(epochs[0])[2:]  # each context its own questions
    keys = {e.teacher[0] for examples in epochs for e in examples if e.kind == "retain_qa"}
    assert len(keys) == 6 and all(k in pooled.specs for k in keys)  # one teacher entry per distinct question
    assert len(set(questions(fresh.epoch(1)) + questions(fresh.epoch(2)))) == 8  # fresh: never repeated


def test_retain_readings_put_an_unrelated_document_in_context_for_the_untouched_model(tiny_lm, monkeypatch):
    import methods.selfparam as sp
    from methods.retain import RetainQuestions

    pairs = RetainQuestions(5).readings(3)
    assert pairs == RetainQuestions(5).readings(3) != RetainQuestions(6).readings(3)
    for text, sentence in pairs:  # each question is about its own document
        assert sentence.split(" Answer: ")[1].strip() in text
    assert RetainQuestions(5).take(20) == RetainQuestions(5).take(20)  # its own stream: take() unchanged

    models: list[bool] = []  # per teacher pass: the untouched base model?
    real = sp.teacher_dists

    def spy(model, lm, specs, *args, **kwargs):
        models.append(model is tiny_lm.model)
        return real(model, lm, specs, *args, **kwargs)

    monkeypatch.setattr(sp, "teacher_dists", spy)
    p = small(teacher="current", retain_read_per_target=1.0, retain_per_target=0, context_loss=False)
    method = SelfParam(tiny_lm, p, RunParams(), seed=0)
    method.inject([Context("c0", CONTEXT, [SENTENCE])])
    assert models.count(True) >= 1 and models.count(False) >= 1  # readings: base; targets: the snapshot
    plan = sp.InjectionPlan(
        tiny_lm, [Context("c0", CONTEXT, [SENTENCE])], p, method.retain, random.Random(0), RetainQuestions(5)
    )
    examples = plan.epoch(0)
    assert [e.kind for e in examples] == ["qa", "retain_read"]
    text, sentence = RetainQuestions(5).readings(1)[0]
    spec = plan.specs[examples[1].teacher[0]]
    assert (spec.ids, spec.first) == (examples[1].ids, examples[1].first)
    assert tiny_lm.encode(text, add_bos=False)[:8] == examples[1].ids[1:9]  # raw style: BOS, then the document


def test_retain_teacher_current_with_the_original_target_teacher(tiny_lm, monkeypatch):
    """Targets scored by the untouched model, retain texts by the frozen current model."""
    import methods.selfparam as sp

    seen: list[tuple[bool, bool, int]] = []  # (base model?, carries an adapter?, specs scored)
    real = sp.teacher_dists

    def spy(model, lm, specs, *args, **kwargs):
        trained = any(v.abs().sum() > 0 for k, v in model.state_dict().items() if "lora_B" in k)
        seen.append((model is tiny_lm.model, trained, len(specs)))
        return real(model, lm, specs, *args, **kwargs)

    monkeypatch.setattr(sp, "teacher_dists", spy)
    method = SelfParam(
        tiny_lm, small(teacher="original", retain_teacher="current", retain_per_target=1.0), RunParams(), seed=0
    )
    method.inject([Context("c0", CONTEXT, [SENTENCE])])
    seen.clear()
    method.inject(
        [
            Context(
                "c1",
                "Fistear is a person. Fistear worked as a botanist.",
                ["Question: What job did Fistear have? Answer: botanist"],
            )
        ]
    )
    assert {(base, trained) for base, trained, _ in seen} == {(True, False), (False, True)}
    with pytest.raises(BenchError, match="unknown retain_teacher"):
        SelfParam(tiny_lm, small(retain_teacher="newest"), RunParams(), seed=0)


CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}<|assistant|>"


def test_retain_chats_are_the_models_own_replies_read_without_the_context(tiny_lm, monkeypatch):
    from methods.retain import RetainChats, RetainQuestions, RetainStream
    from methods.selfparam import InjectionPlan

    monkeypatch.setattr(tiny_lm.tokenizer, "chat_template", CHAT_TEMPLATE, raising=False)
    p = small(retain_chat_per_target=2.0, retain_per_target=0, context_loss=False)
    chats = RetainChats(tiny_lm, "model", 8, 6, 3, seed=0)
    plan = InjectionPlan(
        tiny_lm,
        [Context("c0", CONTEXT, [SENTENCE])],
        p,
        RetainStream(tiny_lm, "model", 8, 0),
        random.Random(0),
        RetainQuestions(0),
        chats,
    )
    examples = plan.epoch(0)
    assert [e.kind for e in examples] == ["qa", "retain_chat", "retain_chat"]
    context_ids = tiny_lm.encode(CONTEXT, add_bos=False)
    for e in examples[1:]:
        spec = plan.specs[e.teacher[0]]
        assert (spec.ids, spec.first) == (e.ids, e.first)  # the teacher reads what the student reads
        assert context_ids[:5] != spec.ids[1:6]
        prompt = tiny_lm.tokenizer.decode(e.ids[: e.first + 1])
        assert "<|user|>" in prompt and prompt.rstrip().endswith("<|assistant|>")
        reply = tiny_lm.generate([prompt], max_new_tokens=6, stop_at_newline=False)[0]
        assert e.ids[e.first + 1 :] == (tiny_lm.encode(reply, add_bos=False) or [tiny_lm.tokenizer.eos_token_id])
    assert len(chats.pool or []) == 3 and plan.epoch(1)[1].ids == chats.pool[2][0]  # the pool cycles


def test_retain_chats_off_asks_nothing_of_the_model(tiny_lm, monkeypatch):
    from methods.retain import RetainChats, RetainQuestions, RetainStream
    from methods.selfparam import InjectionPlan

    monkeypatch.setattr(tiny_lm, "generate", lambda *a, **k: pytest.fail("generated without retain chats"))
    plan = InjectionPlan(
        tiny_lm,
        [Context("c0", CONTEXT, [SENTENCE])],
        small(retain_per_target=0, retain_pool=0, context_loss=False),
        RetainStream(tiny_lm, "model", 8, 0),
        random.Random(0),
        RetainQuestions(0),
        RetainChats(tiny_lm, "model", 8, 6, 3, seed=0),
    )
    assert [e.kind for e in plan.epoch(0)] == ["qa"]


def test_merge_adapter_freezes_what_was_learned_into_the_weights_and_trains_a_fresh_adapter(tiny_lm):
    method = SelfParam(tiny_lm, small(merge_adapter=True, lora_dropout=0.0), RunParams(), seed=0)
    method.inject([Context("c0", CONTEXT, [SENTENCE])])
    adapter_params = method.footprint().changed_params
    dtypes = {v.dtype for k, v in method.student.state_dict().items() if "lora_" in k}
    ids = torch.tensor([tiny_lm.encode(SENTENCE)])
    with torch.no_grad():
        learned = method.student.eval()(ids).logits
        untouched = tiny_lm.model(ids).logits
        student = method.student_for_injection().eval()
        merged = student(ids).logits
    assert not torch.allclose(learned, untouched, atol=1e-3)  # something was learned...
    assert torch.allclose(merged, learned, atol=2e-2 * learned.abs().max().item())  # ...and kept
    assert [k for k, v in student.state_dict().items() if "lora_B" in k]
    assert all(not v.any() for k, v in student.state_dict().items() if "lora_B" in k)  # a fresh adapter
    assert {v.dtype for k, v in student.state_dict().items() if "lora_" in k} == dtypes
    footprint = method.footprint()
    assert footprint.changed_params > adapter_params and set(footprint.detail) == {"merged_lora_params"}
    with pytest.raises(BenchError, match="merge_adapter needs params=lora"):
        SelfParam(tiny_lm, small(merge_adapter=True, params="full"), RunParams(), seed=0)


def adapted_layers(model: torch.nn.Module) -> set[int]:
    return {int(n.split(".layers.")[1].split(".")[0]) for n, _ in model.named_modules() if n.endswith("lora_A")}


def test_lora_depth_adapts_only_the_top_layers_and_backward_stops_below_them(tiny_lm):
    layers = tiny_lm.model.config.num_hidden_layers
    student = build_student(tiny_lm, TrainParams(lora_depth=0.5))
    assert adapted_layers(student) == {layers - 1}
    assert adapted_layers(build_student(tiny_lm, TrainParams())) == set(range(layers))
    ids = torch.tensor([tiny_lm.encode(SENTENCE)])
    hidden = student(ids, output_hidden_states=True).hidden_states  # embeddings, then each layer's output
    assert [h.requires_grad for h in hidden] == [False] * layers + [True]  # no graph below the adapter
    assert adapted_layers(merge_adapter(student)) == {layers - 1}  # the fresh adapter keeps the depth


def test_making_and_merging_an_adapter_prints_no_library_deprecation_warning(tiny_lm):
    # peft's check of the model triggers a transformers FutureWarning that would otherwise be
    # printed at every injection of a sequence.
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        merge_adapter(build_student(tiny_lm, TrainParams()))


def test_teacher_targets_move_to_the_students_device():
    """``Trainer.loss`` moves its targets to the student's device (a teacher may sit elsewhere):
    every tensor goes, and one already there is not copied."""
    from methods.training.teacher import Dist

    dist = Dist(torch.randn(3, 4), torch.zeros(3, 4, dtype=torch.long), torch.randn(3, 2, 8).bfloat16())
    same = dist.to(torch.device("cpu"))
    assert same.logp is dist.logp and same.index is dist.index and same.hidden is dist.hidden
    moved = dist.to(torch.device("meta"))
    assert {t.device.type for t in (moved.logp, moved.index, moved.hidden)} == {"meta"}
    assert Dist(torch.randn(2, 5)).to(torch.device("meta")).index is None
