"""The SELF-PARAM paper's published numbers (Wang et al., ICLR 2025, arXiv 2410.00487), transcribed
from its Tables 1, 2 and 4, and the names of its models.

Each table is kept as the paper prints it: its row labels ("Base, C+Q", "SELF-PARAM, Q", ...) in its
order, its columns in its order, one value per cell, and None where the paper reports none ("–").
Nothing here names a method of this harness: a method says under which of these labels the paper
reports it (``paper_rows``, see ``benchmark.method_info``), and result files carry that.
"""

from __future__ import annotations

from dataclasses import dataclass

Column = tuple[str, int | str]  # (the paper's model or data set, number of contexts or filter rule)


@dataclass(frozen=True)
class Published:
    """One of the paper's tables: ``rows`` maps each row label, in the paper's order, to one value
    per column of ``columns`` (None: not reported); ``label`` heads the row labels."""

    number: str
    caption: str
    label: str
    columns: tuple[Column, ...]
    rows: dict[str, tuple[float | None, ...]]

    def __post_init__(self) -> None:
        for row, values in self.rows.items():
            if len(values) != len(self.columns):
                raise ValueError(f"Table {self.number}, {row!r}: {len(values)} values for {len(self.columns)} columns")

    def value(self, row: str, column: Column) -> float | None:
        """The published value of one cell, or None (not reported, or no such row or column)."""
        if row not in self.rows or column not in self.columns:
            return None
        return self.rows[row][self.columns.index(column)]

    def headers(self) -> list[str]:
        """The column headers as the paper prints them ("Mistral-7B 100", "INSPIRED r1")."""
        return [f"{a} {b}" for a, b in self.columns]


def _columns(firsts: tuple[str, ...], seconds: tuple[int | str, ...]) -> tuple[Column, ...]:
    return tuple((a, b) for a in firsts for b in seconds)


# Table 1: batch injection on PwC, average QA-F1, by (paper model, number of contexts).
PAPER_TABLE1 = Published(
    number="1",
    caption="batch injection, PwC, average QA-F1",
    label="Method",
    columns=_columns(("OpenLLaMA-3B-v2", "Mistral-7B", "Llama3-8B"), (100, 500)),
    rows={
        "Base, C+Q": (0.5043, 0.4869, 0.5461, 0.5725, 0.5368, 0.5089),
        "Base, Q": (0.1122, 0.0814, 0.1503, 0.1382, 0.1051, 0.0967),
        "FT (C), Q": (0.2085, 0.1231, 0.1659, 0.1433, 0.1065, 0.0878),
        "FT (S), Q": (0.1925, 0.1784, 0.2350, 0.3459, 0.3179, 0.2848),
        "MemoryLLM-8B": (None, None, None, None, 0.1435, 0.0841),
        "InfLLM": (0.1437, 0.1003, 0.1619, 0.1783, 0.1301, 0.1244),
        "DPR": (0.2795, 0.2528, 0.3175, 0.3092, 0.2184, 0.2310),
        "BM25": (0.1475, 0.1872, 0.3104, 0.3135, 0.3083, 0.2862),
        "RAPTOR": (0.1344, 0.1529, 0.2133, 0.1969, 0.2000, 0.2055),
        "SELF-PARAM, Q": (0.5082, 0.5048, 0.4521, 0.4384, 0.4368, 0.4221),
    },
)
# Table 1's storage column S as printed, in the number of contexts (None: "–").
PAPER_TABLE1_STORAGE: dict[str, str | None] = {
    "Base, C+Q": None,
    "Base, Q": None,
    "FT (C), Q": "0",
    "FT (S), Q": "0",
    "MemoryLLM-8B": "O(1)",
    "InfLLM": "O(n)",
    "DPR": "O(n)",
    "BM25": "O(n)",
    "RAPTOR": "O(n)",
    "SELF-PARAM, Q": "0",
}
PAPER_TABLE1_DATASET = "pwc"  # the data set of Table 1, by its name in this harness

# Table 2: conversational recommendation with Mistral-7B, Recall@1 under the filter rules r1..r4
# (r1: no filtering, r2: seen items filtered, r3: out-of-vocabulary items filtered, r4: both).
PAPER_TABLE2 = Published(
    number="2",
    caption="conversational recommendation, Recall@1 (Mistral-7B)",
    label="Method",
    columns=_columns(("INSPIRED", "REDIAL"), ("r1", "r2", "r3", "r4")),
    rows={
        "Base": (0.0277, 0.0277, 0.0356, 0.0316, 0.0316, 0.0293, 0.0333, 0.0312),
        "FT (C)": (0.0000, 0.0000, 0.0000, 0.0000, 0.0000, 0.0000, 0.0000, 0.0000),
        "FT (S)": (0.0000, 0.0000, 0.0000, 0.0000, 0.0000, 0.0000, 0.0000, 0.0000),
        "DPR": (0.0277, 0.0198, 0.0277, 0.0198, 0.0337, 0.0295, 0.0350, 0.0314),
        "BM25": (0.0198, 0.0158, 0.0198, 0.0158, 0.0318, 0.0289, 0.0331, 0.0306),
        "RAPTOR": (0.0198, 0.0198, 0.0356, 0.0316, 0.0324, 0.0299, 0.0343, 0.0316),
        "SELF-PARAM": (0.0357, 0.0316, 0.0395, 0.0357, 0.0337, 0.0310, 0.0360, 0.0326),
    },
)

# Table 4: ablation of the model that writes the target sentences (batch injection, QA-F1), by
# (paper model, number of contexts), in the paper's column order.
PAPER_TABLE4 = Published(
    number="4",
    caption="ablation of the model that writes the target sentences (batch, QA-F1)",
    label="Generator",
    columns=(("Mistral-7B", 100), ("Llama3-8B", 100), ("Mistral-7B", 500), ("Llama3-8B", 500)),
    rows={
        "gpt-4o-mini": (0.4521, 0.4368, 0.4384, 0.4221),
        "the model's own instruct variant (Mistral-7B-Instruct-v0.3 / Llama-3-8B-Instruct)": (
            0.4502,
            0.4341,
            0.4836,
            0.4464,
        ),
    },
)

# Model ids (lower-cased substrings) that are the paper's models, by the names its tables use.
_PAPER_MODELS = (
    ("open_llama_3b_v2", "OpenLLaMA-3B-v2"),
    ("openllama-3b-v2", "OpenLLaMA-3B-v2"),
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


def paper_row(table: Published, labels: tuple[str, ...]) -> str | None:
    """The first of a method's ``paper_rows`` labels that is a row of ``table``, or None."""
    return next((label for label in labels if label in table.rows), None)
