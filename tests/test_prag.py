"""PRAG on the tiny random model: one LoRA per context from a shared start, BM25 over whole contexts,
the retrieved contexts' LoRAs concatenated into one adapter, storage that grows with the contexts."""

from __future__ import annotations

import json

import pytest
import torch

import methods.prag as prag
from benchmark.config import RunParams
from benchmark.errors import BenchError
from benchmark.runner import RunRequest, run
from benchmark.schema import nested_scores
from benchmark.types import Context, Prompt
from methods.prag import MERGED, PRAG, TRAINED, PRAGParams, lora_layers, read_adapter, write_adapter
from methods.training import build_student

CONTEXTS = [
    Context(
        "douprur",
        "Douprur is a harbour town. It was founded by Drexrain Lintrim in 1526.",
        ["Question: Who founded Douprur? Answer: Drexrain Lintrim", "Question: When was Douprur founded? Answer: 1526"],
    ),
    Context(
        "fistear",
        "Fistear is a painter who lives in Voltan and paints lighthouses.",
        ["Question: Where does Fistear live? Answer: Voltan", "Question: What does Fistear paint? Answer: lighthouses"],
    ),
    Context(
        "quorra",
        "The Quorra river floods the Miskel valley every spring.",
        ["Question: Which valley does the Quorra flood? Answer: the Miskel valley"],
    ),
]


def params(**overrides) -> PRAGParams:
    """Enough training on the random model that documents' LoRAs differ clearly."""
    return PRAGParams(**{"epochs": 3, "batch_size": 2, "lr": 1e-2, "rewrites": 0, **overrides})


def injected(tiny_lm, contexts=CONTEXTS, **overrides) -> PRAG:
    method = PRAG(tiny_lm, params(**overrides), RunParams(), seed=0)
    method.inject(contexts)
    return method


def logits(model: torch.nn.Module, lm, text: str) -> torch.Tensor:
    ids = torch.tensor([lm.encode(text)])
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits[0]


def delta(layer, name: str) -> torch.Tensor:
    """An adapter's weight update scaling * B @ A at one LoRA module."""
    return layer.scaling[name] * layer.lora_B[name].weight @ layer.lora_A[name].weight


def test_trains_one_lora_per_context_from_a_shared_start_and_answers(tiny_lm, monkeypatch):
    starts: list[dict] = []
    real = prag.Trainer

    def spy(model, *args, **kwargs):
        starts.append(read_adapter(lora_layers(model)))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(prag, "Trainer", spy)
    before = {k: v.clone() for k, v in tiny_lm.model.state_dict().items()}
    method = injected(tiny_lm)
    assert list(method.adapters) == [c.id for c in CONTEXTS]
    assert len(starts) == len(CONTEXTS)  # one training per context, each from the same initialisation
    for start in starts:
        assert all(
            torch.equal(a, a0) and torch.equal(b, b0) for (a, b), (a0, b0) in zip(start.values(), starts[0].values())
        )
    first, second = (method.adapters[c.id] for c in CONTEXTS[:2])
    assert any(not torch.equal(first[k][1], second[k][1]) for k in first)  # trained apart
    modules = {name.rsplit(".", 1)[-1] for name in first}
    assert modules == {"gate_proj", "up_proj", "down_proj"}  # PRAG's FFN-only LoRA
    assert method.stats["train_steps"] > 0

    answers = method.answer([Prompt("p0", "Who founded Douprur?"), Prompt("p1", "What does Fistear paint?")])
    assert [a.retrieved[0] for a in answers] == ["douprur", "fistear"]  # BM25 over whole contexts
    assert all(len(a.retrieved) == 3 and isinstance(a.text, str) for a in answers)
    assert method.generate([Prompt("p0", "Who founded Douprur?")]) == [answers[0].text]
    after = tiny_lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # lm.model is never touched


def test_top1_answers_with_the_retrieved_contexts_lora_alone(tiny_lm):
    method = injected(tiny_lm, top_k=1)
    prompt = Prompt("p", "Where does Fistear live?")
    answer = method.answer([prompt])[0]
    assert answer.retrieved == ("fistear",)

    reference = build_student(tiny_lm, method.params)  # a student holding one context's LoRA only
    layers = lora_layers(reference)
    text = tiny_lm.format_prompt(prompt)
    write_adapter(layers, method.adapters["douprur"])
    other = logits(reference, tiny_lm, text)
    write_adapter(layers, method.adapters["fistear"])
    alone = logits(reference, tiny_lm, text)
    assert not torch.allclose(alone, other, atol=1e-3)  # the contexts' LoRAs answer differently

    merged = logits(method.model, tiny_lm, text)  # the student as it answered
    assert torch.allclose(merged, alone, atol=1e-6)
    assert answer.text == tiny_lm.generate([text], model=reference, max_new_tokens=RunParams().max_new_tokens)[0]


def test_top2_merged_update_is_the_sum_of_the_two_contexts_updates(tiny_lm):
    method = injected(tiny_lm, top_k=2)
    [answer] = method.answer([Prompt("p", "Who founded the harbour town Douprur, and where does Fistear live?")])
    assert set(answer.retrieved) == {"douprur", "fistear"}
    student = method.merge(answer.retrieved)
    for name, layer in method.layers.items():
        expected = sum(layer.scaling[TRAINED] * b @ a for a, b in (method.adapters[c][name] for c in answer.retrieved))
        assert torch.allclose(delta(layer, MERGED), expected, atol=1e-6)
        assert layer.lora_A[MERGED].weight.shape[0] == 2 * method.params.lora_r

    # The same model as the base with both updates added into its weights.
    plain = tiny_lm.clone_model()
    modules = dict(plain.named_modules())
    with torch.no_grad():
        for name, layer in method.layers.items():
            modules[name.removeprefix("base_model.model.")].weight += delta(layer, MERGED)
    text = tiny_lm.format_prompt(Prompt("p", "Where does Fistear live?"))
    assert torch.allclose(logits(student, tiny_lm, text), logits(plain, tiny_lm, text), atol=1e-5)


def test_fewer_contexts_than_top_k_leave_the_rest_of_the_merged_adapter_zero(tiny_lm):
    method = injected(tiny_lm, contexts=CONTEXTS[:1], top_k=3)
    [answer] = method.answer([Prompt("p", "Who founded Douprur?")])
    assert answer.retrieved == ("douprur",)
    for name, layer in method.layers.items():
        a, b = method.adapters["douprur"][name]
        assert torch.allclose(delta(layer, MERGED), layer.scaling[TRAINED] * b @ a, atol=1e-6)


@pytest.mark.parametrize(("inference", "calls"), [("parametric", 1), ("combine", 2)])
def test_prompts_with_the_same_retrieved_set_share_one_merge_and_batch(tiny_lm, monkeypatch, inference, calls):
    method = injected(tiny_lm, contexts=CONTEXTS[:2], top_k=2, epochs=1, inference=inference)
    seen: list[list[str]] = []
    real = tiny_lm.generate
    monkeypatch.setattr(tiny_lm, "generate", lambda texts, **kw: (seen.append(texts), real(texts, **kw))[1])
    prompts = [Prompt("a", "Who founded Douprur?"), Prompt("b", "When was Douprur founded?"), Prompt("c", "Fistear?")]
    answers = method.answer(prompts)
    assert [a.retrieved[0] for a in answers] == ["douprur", "douprur", "fistear"]
    # The merged update is a sum: both orders of the same two contexts are one set. With their text
    # in the prompt (PRAG-Combine), the order is part of the prompt.
    assert len(seen) == calls and method.stats["merged_sets"] == calls
    with_text = [any(c.text in t for c in CONTEXTS[:2]) for batch in seen for t in batch]
    assert all(with_text) if inference == "combine" else not any(with_text)


def test_footprint_is_the_stored_loras_and_grows_with_each_context(tiny_lm):
    method = injected(tiny_lm, contexts=CONTEXTS[:1], epochs=1)
    one = method.footprint()
    config = tiny_lm.model.config
    r, hidden, inner = method.params.lora_r, config.hidden_size, config.intermediate_size
    per_context = config.num_hidden_layers * 3 * r * (hidden + inner) * 4  # gate, up, down; A and B; fp32
    assert one.detail["lora_bytes"] == per_context and one.detail["adapters"] == 1
    assert one.detail["text_bytes"] == 0  # the parametric variant keeps no text
    kept = {k: (a.clone(), b.clone()) for k, (a, b) in method.adapters["douprur"].items()}

    method.inject(CONTEXTS[1:2])  # a sequential step adds a LoRA and an index entry
    two = method.footprint()
    assert two.detail["lora_bytes"] == 2 * per_context and two.detail["adapters"] == 2
    assert two.extra_bytes > one.extra_bytes and two.changed_params == 2 * one.changed_params
    assert len(method.index.passages) == 2
    assert all(
        torch.equal(a, kept[k][0]) and torch.equal(b, kept[k][1]) for k, (a, b) in method.adapters["douprur"].items()
    )
    assert method.answer([Prompt("p", "Where does Fistear live?")])[0].retrieved[0] == "fistear"


@pytest.mark.parametrize("qa_with_document", ["half", "all"])
def test_training_examples_put_the_document_before_the_qa_pairs(tiny_lm, qa_with_document):
    method = PRAG(tiny_lm, params(qa_with_document=qa_with_document), RunParams(), seed=0)
    context = Context("c", CONTEXTS[0].text, CONTEXTS[0].targets + CONTEXTS[1].targets[:1])  # three pairs
    document = tiny_lm.encode(context.text, add_bos=False)
    examples = method.examples(context)
    follows = [e.ids[1 : 1 + len(document)] == document for e in examples]
    assert follows == ([True, True, False] if qa_with_document == "half" else [True, True, True])
    for example, sentence in zip(examples, context.targets):
        ids = tiny_lm.encode(sentence, add_bos=False)
        assert example.ids[-len(ids) :] == ids
        assert example.first == 0  # raw layout, loss_span=document: every token after BOS is scored
    sentence_only = PRAG(tiny_lm, params(loss_span="sentence"), RunParams(), seed=0).examples(context)
    assert sentence_only[0].first == len(document)  # the prediction of the sentence's first token


REWRITE = "Drexrain Lintrim founded the harbour town of Douprur in 1526."


def test_rewrites_by_the_model_under_test_are_trained_with_the_first_half_of_the_pairs(tiny_lm, tmp_path, monkeypatch):
    monkeypatch.setenv("SELFPARAM_BENCH_CACHE", str(tmp_path))
    asked: list[tuple[list[str], dict]] = []

    def generate(prompts, **kwargs):
        asked.append((prompts, kwargs))
        return [f" {REWRITE} \n" for _ in prompts]

    monkeypatch.setattr(tiny_lm, "generate", generate)
    context = Context("c", CONTEXTS[0].text, CONTEXTS[0].targets + CONTEXTS[1].targets[:1])  # three pairs
    method = PRAG(tiny_lm, params(rewrites=1, rewrite_max_tokens=40), RunParams(), seed=0)
    method.rewrite([context])
    [(prompts, kwargs)] = asked
    assert CONTEXTS[0].text in prompts[0]  # the model is asked to rewrite the document itself
    assert (kwargs["sample_temperature"], kwargs["sample_top_k"], kwargs["max_new_tokens"]) == (0.7, 50, 40)
    assert method.rewritten == {"c": [REWRITE]} and method.stats["rewrites"] == 1

    examples = method.examples(context)
    document, rewrite = (tiny_lm.encode(t, add_bos=False) for t in (context.text, REWRITE))

    def passage(ids: list[int]) -> str:
        for name, text in (("document", document), ("rewrite", rewrite)):
            if ids[1 : 1 + len(text)] == text:
                return name
        return "alone"

    after = [passage(e.ids) for e in examples]
    assert after == ["document", "document", "rewrite", "rewrite", "alone"]  # the official code's five
    pairs = [tiny_lm.encode(t, add_bos=False) for t in context.targets]
    assert [e.ids[-len(pairs[i]) :] == pairs[i] for e, i in zip(examples, [0, 1, 0, 1, 2])] == [True] * 5

    def refuse(prompts, **kwargs):
        raise AssertionError("the rewrite should come from the cache")

    monkeypatch.setattr(tiny_lm, "generate", refuse)
    again = PRAG(tiny_lm, params(rewrites=1, rewrite_max_tokens=40), RunParams(), seed=0)
    again.rewrite([context])
    assert again.rewritten == method.rewritten


def test_an_empty_rewrite_is_counted_and_not_trained(tiny_lm, tmp_path, monkeypatch):
    monkeypatch.setenv("SELFPARAM_BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(tiny_lm, "generate", lambda prompts, **kwargs: ["  \n" for _ in prompts])
    method = PRAG(tiny_lm, params(rewrites=1), RunParams(), seed=0)
    method.rewrite([CONTEXTS[0]])
    assert method.rewritten == {"douprur": []}
    assert (method.stats["rewrites"], method.stats["rewrites_empty"]) == (0, 1)
    assert len(method.examples(CONTEXTS[0])) == 2  # the document's pair, the pair alone


def test_paper_profile_keeps_the_official_three_pairs_and_one_rewrite():
    from benchmark.config import build_params

    paper = build_params({"method": (PRAGParams, PRAG.profiles)}, "paper", {}, task="batch")["method"]
    assert (paper.targets_per_epoch, paper.rewrites, paper.rewrite_max_tokens) == (3, 1, 512)
    assert (paper.lora_r, paper.lora_alpha, paper.lr, paper.epochs, paper.top_k) == (2, 32, 3e-4, 1, 3)


def test_a_context_without_target_sentences_trains_on_its_text(tiny_lm):
    method = PRAG(tiny_lm, params(), RunParams(), seed=0)
    [example] = method.examples(Context("c", "Only text here.", []))
    assert example.ids == tiny_lm.encode("Only text here.")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"params": "full"}, "params must be lora"),
        ({"inference": "icl"}, "unknown inference 'icl'"),
        ({"qa_with_document": "some"}, "unknown qa_with_document"),
        ({"loss_span": "all"}, "unknown loss_span"),
    ],
)
def test_bad_settings_are_refused(tiny_lm, overrides, message):
    assert message in PRAG.params_problem(params(**overrides))
    with pytest.raises(BenchError, match=message):
        PRAG(tiny_lm, params(**overrides), RunParams(), seed=0)


@pytest.mark.parametrize(("task", "inference"), [("batch", "parametric"), ("sequential", "combine")])
def test_smoke_runs(tmp_path, tiny_lm, task, inference):
    overrides = {"num_targets": "3", "inference": inference}
    overrides.update({"num_contexts": "2"} if task == "batch" else {"num_sequences": "1", "sequence_length": "2"})
    request = RunRequest(method="prag", task=task, profile="smoke", out=tmp_path, overrides=overrides)
    data = json.loads(run(request, lm=tiny_lm).path.read_text())
    assert data["method_info"]["display_name"] == "PRAG" and data["method_info"]["storage_class"] == "O(n)"
    assert data["cost"]["train_tokens"] > 0
    [episode] = data["episodes"]
    assert episode["footprint"]["adapters"] == 2 and episode["footprint"]["lora_bytes"] > 0
    assert "retrieval_recall@k" in nested_scores(data)
