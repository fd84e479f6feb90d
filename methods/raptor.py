"""RAPTOR (Sarthi et al., ICLR 2024): a tree of recursive cluster summaries, searched collapsed.

Leaves are ~100-token chunks of the injected contexts. Each layer's nodes are embedded, reduced with
UMAP (global, then within each global cluster), clustered by Gaussian mixtures whose size is chosen
by BIC, with soft assignment (a node joins every cluster whose probability exceeds a threshold);
each cluster is summarised by the benchmark's own LM and the summaries form the next layer.
Retrieval ranks every node of every layer by cosine similarity to the question ("collapsed tree")
and keeps the best under a token budget. A new injection rebuilds the tree over all leaves (as
RAPTOR's ``add_documents`` does); summaries of unchanged clusters come from a cache.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from benchmark.errors import BenchError
from benchmark.registry import register_method
from benchmark.types import Context, Footprint, Prompt
from methods.retrieval import (
    BUNDLED_ENCODER,
    Passage,
    RetrievalMethod,
    RetrievalParams,
    count_tokens,
    embed,
    load_encoder,
)

# RAPTOR's summarisation instruction (its GPT-3.5 summariser), sent through the chat template.
SUMMARY_PROMPT = "Write a summary of the following, including as many key details as possible: {text}:"

Summarizer = Callable[[list[str]], list[str]]  # cluster texts -> their summaries


@dataclass
class RaptorParams(RetrievalParams):
    top_k: int = 5  # nodes of any layer, best first (then cut to max_context_tokens)
    chunk_tokens: int = 100  # leaf size in model tokens
    encoder: str = BUNDLED_ENCODER  # sentence-transformers name or path
    embed_batch_size: int = 32
    reduction_dim: int = 10  # UMAP output dimensions
    max_clusters: int = 50  # largest mixture tried when choosing by BIC
    threshold: float = 0.1  # soft assignment: probability needed to join a cluster
    max_layers: int = 5  # summary layers at most
    min_nodes: int = 12  # a layer with fewer nodes is the top (RAPTOR: reduction_dim + 2)
    summary_tokens: int = 100  # generated tokens per summary
    max_cluster_tokens: int = 3500  # a cluster longer than this is clustered again

    RANGES: ClassVar[dict[str, str]] = {
        "embed_batch_size": ">= 1",
        "reduction_dim": ">= 1",
        "max_clusters": ">= 1",
        "threshold": "[0, 1]",
        "max_layers": ">= 0",
        "min_nodes": ">= 0",
        "summary_tokens": ">= 1",
        "max_cluster_tokens": ">= 1",
    }


@dataclass
class Node:
    passage: Passage
    layer: int
    children: tuple[int, ...] = ()  # indices of the nodes it summarises


@register_method("raptor")
class Raptor(RetrievalMethod):
    description = "RAPTOR: recursive cluster summaries by the LM, collapsed-tree dense retrieval"
    display_name = "RAPTOR"
    family = "retrieval"
    storage_class = "O(n)"
    table_order = 80
    paper_rows = ("RAPTOR",)
    Params = RaptorParams
    profiles = {
        "smoke": {"chunk_tokens": 48, "min_nodes": 3, "summary_tokens": 16, "max_context_tokens": 256},
        "quick": {"summary_tokens": 64, "max_layers": 2, "top_k": 3},
        "paper": {},
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.encoder = load_encoder(self.params.encoder, str(self.lm.device))
        self.leaves: list[Passage] = []
        self.leaf_vectors = np.zeros((0, 0), dtype=np.float32)
        self.nodes: list[Node] = []
        self.vectors = np.zeros((0, 0), dtype=np.float32)  # one unit row per node of self.nodes
        self.layers: list[list[int]] = []  # node indices per layer; layer 0 are the leaves
        self.summary_cache: dict[str, str] = {}
        self.summarizer: Summarizer = self.summarize_with_lm
        self.stats.update({"summaries": 0, "summary_s": 0.0, "summary_passages": 0})

    # ---- building ----------------------------------------------------------------------
    def inject(self, contexts: list[Context]) -> None:
        start = time.perf_counter()
        self.index(self.chunk(contexts))
        self.stats["index_s"] += time.perf_counter() - start

    def index(self, passages: list[Passage]) -> None:
        """Add leaves and rebuild the tree over all of them."""
        vectors = embed(self.encoder, [p.text for p in passages], self.params.embed_batch_size)
        self.leaves.extend(passages)
        self.leaf_vectors = vectors if not len(self.leaf_vectors) else np.vstack([self.leaf_vectors, vectors])
        self.build()

    def build(self) -> None:
        nodes = [Node(p, 0) for p in self.leaves]
        vectors = [self.leaf_vectors]
        layers = [list(range(len(nodes)))]
        current = layers[0]
        rng_seed = self.seed
        for layer in range(1, self.params.max_layers + 1):
            if len(current) < max(2, self.params.min_nodes):
                break
            layer_vectors = np.vstack(vectors)[current]
            tokens = [nodes[i].passage.tokens for i in current]
            clusters = self.cluster(layer_vectors, tokens, rng_seed + layer)
            if len(clusters) >= len(current):
                break  # no reduction: this is the top
            texts = [self.cluster_text([nodes[current[j]].passage.text for j in members]) for members in clusters]
            summaries = self.summaries(texts)
            made = [(members, text) for members, text in zip(clusters, summaries) if text.strip()]
            if not made:
                break
            new_texts = [text.strip() for _, text in made]
            counts = count_tokens(self.lm, new_texts)
            start = len(nodes)
            for (members, _), text, n in zip(made, new_texts, counts):
                nodes.append(Node(Passage(text, n), layer, tuple(current[j] for j in members)))
            vectors.append(embed(self.encoder, new_texts, self.params.embed_batch_size))
            current = list(range(start, len(nodes)))
            layers.append(current)
        self.nodes = nodes
        self.vectors = np.vstack(vectors) if nodes else np.zeros((0, 0), dtype=np.float32)
        self.layers = layers
        self.passages = [node.passage for node in nodes]

    def cluster(self, vectors: np.ndarray, tokens: list[int], seed: int) -> list[list[int]]:
        """RAPTOR's clustering: global then local mixtures, clusters too long to summarise split again."""
        n = len(vectors)
        clusters: list[list[int]] = []
        global_neighbors = max(2, int(math.sqrt(n - 1)))
        for members in soft_clusters(vectors, self.params, global_neighbors, seed):
            if len(members) <= self.params.reduction_dim + 1:
                clusters.append(members)
                continue
            local = soft_clusters(vectors[members], self.params, 10, seed)
            clusters.extend([members[j] for j in group] for group in local)
        limit = self.summary_input_tokens()
        final: list[list[int]] = []
        for members in clusters:
            if sum(tokens[j] for j in members) <= limit or len(members) == 1:
                final.append(members)  # a single node too long is cut when summarised
            elif len(members) < n:
                sub = self.cluster(vectors[members], [tokens[j] for j in members], seed + 1)
                final.extend([members[j] for j in group] for group in sub)
            else:  # clustering cannot split it: consecutive runs (neighbouring chunks) that fit
                final.extend(pack(members, tokens, limit))
        return final

    # ---- summaries -------------------------------------------------------------------------
    def summary_input_tokens(self) -> int:
        """How much cluster text one summary may read: RAPTOR's limit, and the model's window."""
        overhead = len(self.lm.encode(self.summary_prompt("")))
        return max(
            16, min(self.params.max_cluster_tokens, self.lm.max_length - self.params.summary_tokens - overhead - 8)
        )

    def cluster_text(self, texts: list[str]) -> str:
        text = "\n\n".join(texts)
        limit = self.summary_input_tokens()
        ids = self.lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= limit else self.lm.tokenizer.decode(ids[:limit])

    def summary_prompt(self, text: str) -> str:
        message = SUMMARY_PROMPT.format(text=text)
        try:
            return self.lm.apply_chat_template(message)
        except BenchError:  # a base model without a chat template
            return f"{message}\nSummary:"

    def summaries(self, texts: list[str]) -> list[str]:
        """Summaries of cluster texts, each computed once per episode."""
        keys = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self.summary_cache))
        if missing:
            start = time.perf_counter()
            by_key = dict(zip(keys, texts))
            made = self.summarizer([by_key[k] for k in missing])
            if len(made) != len(missing):
                raise RuntimeError(f"summarizer returned {len(made)} summaries for {len(missing)} clusters")
            self.summary_cache.update(zip(missing, made))
            self.stats["summaries"] += len(missing)
            self.stats["summary_s"] += time.perf_counter() - start
        return [self.summary_cache[k] for k in keys]

    def summarize_with_lm(self, texts: list[str]) -> list[str]:
        """The benchmark's own LM summarises (greedy, several lines, bounded length)."""
        return self.lm.generate(
            [self.summary_prompt(t) for t in texts],
            max_new_tokens=self.params.summary_tokens,
            batch_size=self.run.eval_batch_size,
            stop_at_newline=False,
            progress="summarising",
        )

    # ---- retrieval -------------------------------------------------------------------------
    def fit(self, prompt: Prompt, passages: list[Passage]) -> tuple[str | None, list[Passage]]:
        """As for every retriever; counts the summaries that reach a prompt (RAPTOR's whole point)."""
        context, used = super().fit(prompt, passages)
        self.stats["summary_passages"] += sum(p.context_id is None for p in used)
        return context, used

    def search(self, queries: list[str], k: int) -> list[list[int]]:
        """Collapsed tree: every node of every layer ranked by cosine similarity."""
        scores = embed(self.encoder, queries, self.params.embed_batch_size) @ self.vectors.T
        return [[int(i) for i in np.argsort(-row, kind="stable")[:k]] for row in scores]

    def footprint(self) -> Footprint:
        vectors = int(self.vectors.nbytes) if len(self.nodes) else 0
        text = self.text_bytes()
        return Footprint(
            extra_bytes=vectors + text,
            detail={"index_bytes": vectors, "text_bytes": text, "nodes": len(self.nodes), "layers": len(self.layers)},
        )


def pack(members: list[int], tokens: list[int], limit: int) -> list[list[int]]:
    """Consecutive groups of members whose token counts sum to at most ``limit`` (at least one each)."""
    groups: list[list[int]] = []
    used = 0
    for j in members:
        if groups and used + tokens[j] <= limit:
            groups[-1].append(j)
            used += tokens[j]
        else:
            groups.append([j])
            used = tokens[j]
    return groups


def soft_clusters(vectors: np.ndarray, params: RaptorParams, neighbors: int, seed: int) -> list[list[int]]:
    """Reduce, fit a Gaussian mixture of the size BIC prefers, assign softly (RAPTOR's GMM step)."""
    n = len(vectors)
    if n < params.reduction_dim + 3:  # too few for UMAP: one cluster, as RAPTOR's local step does
        return [list(range(n))]
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    # One BLAS thread: these matrices are tiny, and threads that contend for a few busy cores make
    # the mixture fits about 15 times slower.
    with threadpool_limits(limits=1, user_api="blas"):
        reduced = reduce(vectors, params.reduction_dim, neighbors, seed)
        sizes = range(1, min(params.max_clusters, n) + 1)
        fits = [GaussianMixture(k, random_state=seed).fit(reduced) for k in sizes]
    best = min(fits, key=lambda gm: gm.bic(reduced))
    probs = best.predict_proba(reduced)
    member = probs > params.threshold
    member[np.arange(n), probs.argmax(axis=1)] = True  # every node belongs somewhere
    return [list(map(int, np.flatnonzero(member[:, c]))) for c in range(probs.shape[1]) if member[:, c].any()]


def reduce(vectors: np.ndarray, dim: int, neighbors: int, seed: int) -> np.ndarray:
    """UMAP with cosine distance to ``dim`` dimensions (needs at least ``dim + 3`` points)."""
    import umap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by setting random_state", numba notes
        reducer = umap.UMAP(
            n_neighbors=min(neighbors, len(vectors) - 1), n_components=dim, metric="cosine", random_state=seed
        )
        return reducer.fit_transform(vectors)
