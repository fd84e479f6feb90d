"""What the tables take from the paper: row order, row names, storage classes, published scores.

Only numbers stated in the paper are listed here; a cell the paper does not give stays empty.
"""

from __future__ import annotations

# Rows in the paper's order; methods not listed follow, alphabetically.
METHOD_ORDER = (
    "base_cq", "base_q", "ft_context", "ft_sentences", "memoryllm", "memoryllm-mini",
    "infllm", "raptor", "bm25", "dpr", "selfparam",
)
# The paper's tables open with its two reference rows, the ceiling (Base, C+Q) and then the floor
# (Base, Q: the untouched model without the context), against which the leaderboard measures gains.
FLOOR = METHOD_ORDER[1]

DISPLAY = {
    "base_cq": "Base, C+Q",
    "base_q": "Base, Q",
    "ft_context": "FT (C)",
    "ft_sentences": "FT (S)",
    "memoryllm": "MemoryLLM",
    "memoryllm-mini": "MemoryLLM (mini)",
    "infllm": "InfLLM",
    "raptor": "RAPTOR",
    "bm25": "BM25",
    "dpr": "DPR",
    "selfparam": "SELF-PARAM",
}

# Storage class S of each method in the number n of injected contexts: O(n) keeps every context (in
# the prompt, an index or a KV store); O(1) keeps a fixed-size state (weights, a memory pool).
STORAGE = {
    "base_cq": "O(n)",
    "base_q": "O(1)",
    "ft_context": "O(1)",
    "ft_sentences": "O(1)",
    "memoryllm": "O(1)",
    "memoryllm-mini": "O(1)",
    "infllm": "O(n)",
    "raptor": "O(n)",
    "bm25": "O(n)",
    "dpr": "O(n)",
    "selfparam": "O(1)",
}

# Table 1 of the paper (PwC, batch injection, QA-F1): {(paper model, contexts): {method: score}}.
PAPER_TABLE1 = {
    ("OpenLLaMA-3B", 100): {"base_cq": 0.5043, "base_q": 0.1122, "selfparam": 0.5082},
    ("OpenLLaMA-3B", 500): {"base_cq": 0.4869, "base_q": 0.0814, "selfparam": 0.5048},
    ("Mistral-7B", 100): {"base_cq": 0.5461, "selfparam": 0.4521},
    ("Mistral-7B", 500): {"base_cq": 0.5725, "selfparam": 0.4384},
    ("Llama3-8B", 100): {"base_cq": 0.5368, "selfparam": 0.4368},
    ("Llama3-8B", 500): {"base_cq": 0.5089, "selfparam": 0.4221},
}
PAPER_TABLE1_DATASET = "pwc"

# Model ids (lower-cased substrings) that are the paper's models.
_PAPER_MODELS = (
    ("open_llama_3b", "OpenLLaMA-3B"),
    ("openllama-3b", "OpenLLaMA-3B"),
    ("mistral-7b", "Mistral-7B"),
    ("llama-3-8b", "Llama3-8B"),
    ("llama3-8b", "Llama3-8B"),
)


def paper_model(model: str) -> str | None:
    """The paper's name for a model id (``mistralai/Mistral-7B-v0.1`` -> ``Mistral-7B``), or None."""
    lowered = model.lower()
    for pattern, name in _PAPER_MODELS:
        if pattern in lowered:
            return name
    return None


def method_rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def display(method: str) -> str:
    return DISPLAY.get(method, method)
