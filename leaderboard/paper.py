"""What the tables take from the paper: its published scores and the names of its models.

Only numbers stated in the paper are listed here; a cell the paper does not give stays empty. Row
names, order and storage classes are not here: each method declares them (``benchmark.method_info``)
and result files carry them (``leaderboard.meta``).
"""

from __future__ import annotations

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
