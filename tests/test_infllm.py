"""InfLLM: exact when the window covers the stream, representatives by attention, retrieval logged."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from benchmark.config import RunParams
from benchmark.types import Context, Prompt
from methods.infllm import InfLLM, InfLLMParams
from methods.infllm.memory import InfLLMStream, LayerMemory, MemoryConfig


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model runs many small operations: one thread avoids thread hand-offs that dominate
    on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _stream_ids(tiny_lm, n: int = 70) -> list[int]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 2000, (n,), generator=gen).tolist()
    return [tiny_lm.tokenizer.bos_token_id] + ids[1:]


def _plain_logits(tiny_lm, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return tiny_lm.model(torch.tensor([ids])).logits[0]


def test_window_larger_than_stream_gives_the_plain_models_logits(tiny_lm):
    ids = _stream_ids(tiny_lm)
    stream = InfLLMStream(
        tiny_lm.model, MemoryConfig(n_init=4, n_local=128, block_size=8, topk=2, repr_topk=2, chunk_size=16)
    )
    chunks = [stream.forward_chunk(ids[i : i + 16])[0] for i in range(0, len(ids), 16)]
    got = torch.cat(chunks)
    assert stream.n_blocks == 0
    torch.testing.assert_close(got, _plain_logits(tiny_lm, ids), atol=1e-4, rtol=1e-4)


def test_short_window_evicts_into_blocks_and_changes_the_output(tiny_lm):
    ids = _stream_ids(tiny_lm)
    stream = InfLLMStream(
        tiny_lm.model, MemoryConfig(n_init=4, n_local=16, block_size=8, topk=2, repr_topk=2, chunk_size=8)
    )
    chunks = [stream.forward_chunk(ids[i : i + 8])[0] for i in range(0, len(ids), 8)]
    memory = stream.memories[0]
    # 70 tokens: 4 initial, whole blocks of 8 while more than n_local stay behind
    assert memory.init_k.shape[1] == 4
    assert stream.n_blocks == (70 - 4 - 16) // 8
    assert memory.recent_k.shape[1] + 4 + 8 * stream.n_blocks == 70
    assert memory.block_start == [4 + 8 * i for i in range(stream.n_blocks)]
    plain = _plain_logits(tiny_lm, ids)
    assert torch.allclose(chunks[0], plain[:8], atol=1e-4)  # nothing evicted yet
    assert not torch.allclose(torch.cat(chunks)[-8:], plain[-8:], atol=1e-3)


def _identity_rope(positions: torch.Tensor):
    return torch.ones(len(positions), 4), torch.zeros(len(positions), 4)


def _received_attention(q: torch.Tensor, k: torch.Tensor, n_local: int) -> torch.Tensor:
    """Reference, query by query: the attention each key gets from the queries that have it in
    their local window (identity rotation, so local and global keys score alike)."""
    heads, length = q.shape[0], q.shape[1]
    received = torch.zeros(heads, length)
    for h in range(heads):
        for i in range(length):
            p = torch.softmax(q[h, i] @ k[0, : i + 1].T, dim=-1)
            local = torch.arange(i + 1) > i - n_local
            received[h, : i + 1] += p * local
    return received


def test_block_representatives_are_the_most_attended_keys():
    """Keys aligned with the queries get the attention; a key with a larger norm pointing away gets
    none. The accumulated scores must equal the attention each key received (naive reference), and
    the block's representatives must be its most-attended keys, not its largest ones."""
    cfg = MemoryConfig(n_init=0, n_local=8, block_size=8, topk=1, repr_topk=2, chunk_size=8)
    memory = LayerMemory(cfg, n_heads=2, n_kv_heads=1, scaling=1.0, rope=_identity_rope)
    gen = torch.Generator().manual_seed(1)
    direction = torch.tensor([1.0, 0.0, 0.0, 0.0])
    q = direction.repeat(2, 16, 1) + 0.05 * torch.randn(2, 16, 4, generator=gen)
    k = 0.1 * torch.randn(1, 16, 4, generator=gen)
    k[0, 2] = 3.0 * direction  # attended
    k[0, 5] = 4.0 * direction  # attended most
    k[0, 6] = -6.0 * direction  # largest norm, never attended
    v = torch.randn(1, 16, 4, generator=gen)
    memory.forward(q[:, :8], k[:, :8], v[:, :8])
    torch.testing.assert_close(memory.recent_score, _received_attention(q[:, :8], k[:, :8], 8), atol=1e-5, rtol=1e-5)
    memory.forward(q[:, 8:], k[:, 8:], v[:, 8:])  # 16 tokens: the first 8 become a block
    assert memory.n_blocks == 1 and memory.block_start == [0]
    received = _received_attention(q, k, 8)
    torch.testing.assert_close(memory.recent_score, received[:, 8:], atol=1e-5, rtol=1e-5)
    index = memory.block_repr_index[0]
    for h in range(2):
        assert set(index[h].tolist()) == set(received[h, :8].topk(2).indices.tolist()) == {2, 5}
        torch.testing.assert_close(memory.block_repr[0, h].mean(dim=0), (k[0, 2] + k[0, 5]) / 2)


def test_retrieval_picks_the_block_matching_the_query():
    cfg = MemoryConfig(n_init=0, n_local=4, block_size=4, topk=1, repr_topk=1, chunk_size=4)
    memory = LayerMemory(cfg, n_heads=1, n_kv_heads=1, scaling=1.0, rope=_identity_rope)
    basis = torch.eye(4)
    for b in range(3):  # three blocks, each dominated by one direction
        k = 0.01 * torch.ones(1, 4, 4)
        k[0, 1] = 5 * basis[b]
        memory.forward(basis[b].repeat(1, 4, 1), k, torch.randn(1, 4, 4))
    memory.forward(basis[3].repeat(1, 4, 1), torch.zeros(1, 4, 4), torch.zeros(1, 4, 4))
    assert memory.n_blocks == 3
    for b in range(3):
        _, retrieved = memory.clone().forward(basis[b].repeat(1, 1, 1), torch.zeros(1, 1, 4), torch.zeros(1, 1, 4))
        assert retrieved == [b]


def test_method_answers_from_a_stream_longer_than_the_window(tiny_lm):
    params = InfLLMParams(n_init=4, n_local=32, block_size=8, topk=2, repr_topk=2, chunk_size=16)
    method = InfLLM(tiny_lm, params, RunParams(precision="fp32", max_new_tokens=3), seed=0)
    contexts = [Context(f"c{i}", f"Entity number {i} lives in the town of Place{i}. " * 3) for i in range(4)]
    method.inject(contexts[:2])
    length_after_first = method.stream.length
    method.inject(contexts[2:])  # a sequential step: the same stream keeps growing
    assert method.stream.length > length_after_first > 0
    assert method.stream.length > params.n_local and method.stream.n_blocks > 0
    blocks_before = method.stream.n_blocks
    answers = method.answer([Prompt("c0", "Where does entity 0 live?"), Prompt("c3", "Where?")])
    assert len(answers) == 2 and all(isinstance(a.text, str) for a in answers)
    assert method.stream.n_blocks == blocks_before  # answering leaves the memory as injected
    entry = method.retrieval_log[0]
    assert entry["prompt_id"] == "c0"
    assert len(entry["retrieved_blocks"]) == len(tiny_lm.model.model.layers)
    assert all(len(blocks) == params.topk for blocks in entry["retrieved_blocks"])
    assert method.stats["probes"] == 2
    retrieved = [a.retrieved or () for a in answers]
    assert all(0 < len(ids) <= params.topk and set(ids) <= {c.id for c in contexts} for ids in retrieved)
    footprint = method.footprint()
    assert footprint.detail["kv_blocks"] == blocks_before
    assert footprint.extra_bytes >= footprint.detail["kv_blocks_bytes"] > 0


def test_one_context_within_the_window_answers_like_the_c_plus_q_prompt(tiny_lm):
    """Layout "context" with a window longer than the stream is the Base C+Q prompt, token for token."""
    params = InfLLMParams(n_init=4, n_local=256, block_size=8, topk=2, repr_topk=2, chunk_size=16)
    run = RunParams(precision="fp32", max_new_tokens=6)
    method = InfLLM(tiny_lm, params, run, seed=0)
    text = "Tomas Ferrow owns a red kayak and a small dog called Pip."
    method.inject([Context("c0", text)])
    questions = ["What is the name of Tomas Ferrow's dog?", "What colour is the kayak?"]
    got = method.generate([Prompt("c0", q) for q in questions])
    expected = tiny_lm.generate(
        [tiny_lm.format_prompt(Prompt("c0", q, text)) for q in questions], max_new_tokens=6, batch_size=1
    )
    assert got == expected
    assert method.stream.n_blocks == 0
    # the stream plus the question tail is the C+Q prompt's token sequence, with the same logits
    full = tiny_lm.encode(tiny_lm.format_prompt(Prompt("c0", questions[0], text)))
    fork = method.stream.fork()
    tail = method._around_context(Prompt("c0", questions[0]))[1]
    logits, _ = fork.feed(tiny_lm.encode(tail, add_bos=False))
    assert fork.length == len(full)
    torch.testing.assert_close(logits, _plain_logits(tiny_lm, full)[-1], atol=1e-4, rtol=1e-4)


def test_plain_layout_and_answers_before_any_injection(tiny_lm):
    params = InfLLMParams(n_init=4, n_local=32, block_size=8, topk=2, repr_topk=2, chunk_size=16, layout="plain")
    run = RunParams(precision="fp32", max_new_tokens=4)
    method = InfLLM(tiny_lm, params, run, seed=0)
    prompt = Prompt("c0", "Where does entity 0 live?")
    before = method.generate([prompt])  # nothing injected: the plain model on the context-free prompt
    assert before == tiny_lm.generate([tiny_lm.format_prompt(prompt)], max_new_tokens=4, batch_size=1)
    method.inject([Context(f"c{i}", f"Entity number {i} lives in the town of Place{i}. " * 3) for i in range(3)])
    assert method.stream.n_blocks > 0
    assert len(method.generate([prompt])) == 1
    assert method.retrieval_log[-1]["prompt_id"] == "c0"


def test_batch_run_records_retrieval_per_probe(tiny_lm, tmp_path):
    import json

    from benchmark.runner import RunRequest, run

    outcome = run(RunRequest(method="infllm", task="batch", profile="smoke", out=tmp_path), lm=tiny_lm)
    data = json.loads(outcome.path.read_text())
    episode = data["episodes"][0]
    assert episode["cost"]["probes"] == len(episode["predictions"]) > 0
    assert episode["footprint"]["kv_blocks"] > 0
    assert all("retrieved" in p and "retrieval_recall@1" in p for p in episode["predictions"])
    assert "retrieval_recall@k" in data["scores"]


def test_centred_attention_scoring_retrieves_despite_a_shared_query_component():
    """Every query shares a large component that one block's representatives (a sink-like token)
    answer strongly. The paper's dot-product score retrieves that block for every question; with
    the mean query read so far subtracted and blocks scored by the attention the queries pay their
    representatives, the block matching the question's own content is retrieved."""
    shared, basis = torch.tensor([0.0, 0.0, 0.0, 1.0]), torch.eye(4)

    def memory_for(cfg):
        memory = LayerMemory(cfg, n_heads=1, n_kv_heads=1, scaling=1.0, rope=_identity_rope)
        keys = [8 * shared, 2 * basis[0], 2 * basis[1], 2 * basis[2]]  # block 0: the sink-like block
        for key in keys + [torch.zeros(4)]:
            k = 0.01 * torch.ones(1, 4, 4)
            k[0, 1] = key
            memory.forward((3 * shared + 0.1 * key).repeat(1, 4, 1), k, torch.randn(1, 4, 4))
        return memory

    def retrieve(memory, b):
        query = (3 * shared + basis[b]).repeat(1, 1, 1)
        return memory.clone().forward(query, torch.zeros(1, 1, 4), torch.zeros(1, 1, 4))[1]

    paper = MemoryConfig(
        n_init=0, n_local=4, block_size=4, topk=1, repr_topk=1, chunk_size=4, block_score="dot", center_queries=False
    )
    fixed = replace(paper, block_score="attention", center_queries=True)
    dot, ours = memory_for(paper), memory_for(fixed)
    assert dot.n_blocks == ours.n_blocks == 4
    assert [retrieve(dot, b) for b in range(3)] == [[0], [0], [0]]
    assert [retrieve(ours, b) for b in range(3)] == [[1], [2], [3]]


def test_prompt_head_is_kept_among_the_initial_tokens(tiny_lm):
    """With layout "context", the demonstrations before the contexts stay always attended instead
    of becoming a memory block that every question retrieves."""
    run = RunParams(precision="fp32", max_new_tokens=3)
    method = InfLLM(
        tiny_lm, InfLLMParams(n_init=4, n_local=32, block_size=8, topk=2, repr_topk=2, chunk_size=16), run, seed=0
    )
    head, _ = method._around_context(Prompt("", "?"))
    assert method.config.n_init == max(4, len(tiny_lm.encode(head.rstrip(" "))))
    method.inject([Context(f"c{i}", f"Entity number {i} lives in the town of Place{i}. " * 3) for i in range(4)])
    assert all("prompt" not in method.stream.block_labels(b) for b in range(method.stream.n_blocks))
    off = InfLLM(tiny_lm, InfLLMParams(n_init=4, init_prompt=False), run, seed=0)
    assert off.config.n_init == 4
