"""Writing the lm-eval tasks' data: the harness's probes as local JSON files.

One file per data set, ``<data dir>/<dataset>.json``: a header (how the prompts were written) and
one row per question with its accepted answers, its context id and two ready prompts, without
(``prompt``) and with (``prompt_cq``) the gold context. The prompts come from the harness's own
prompt formatter, so lm-eval asks exactly what ``bench run`` asks. The data folder is
``$SELFPARAM_BENCH_LMEVAL_DATA``, else ``lm_eval/`` in the harness cache.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch

from benchmark.config import RunParams
from benchmark.errors import BenchError
from benchmark.models import LM
from benchmark.paths import cache_dir
from benchmark.registry import open_dataset
from benchmark.results import write_json_atomic
from benchmark.types import Document, Prompt
from tasks.batch import BatchParams
from tasks.data.base import QADataset

FORMAT_VERSION = 1
ENV_DATA_DIR = "SELFPARAM_BENCH_LMEVAL_DATA"
Formatter = Callable[[Prompt], str]


def default_data_dir() -> Path:
    env = os.environ.get(ENV_DATA_DIR)
    return Path(env) if env else cache_dir() / "lm_eval"


def data_file(dataset: str, data_dir: str | Path | None = None) -> Path:
    return Path(data_dir or default_data_dir()) / f"{dataset}.json"


def default_contexts() -> int:
    """How many contexts an automatic export takes: the batch task's default batch."""
    return BatchParams().num_contexts


# ---- prompts --------------------------------------------------------------------------------------
def model_free_formatter(fewshot: int | None = None) -> tuple[Formatter, dict[str, Any]]:
    """The harness's raw prompt (with its default demonstrations), for exports made without a model."""
    fewshot = RunParams().fewshot if fewshot is None else fewshot
    # No model: this LM only formats prompts.
    lm = LM(
        model=None,  # type: ignore[arg-type]
        tokenizer=None,
        name="",
        device=torch.device("cpu"),
        prompt_format="raw",
        fewshot=fewshot,
    )
    return lm.format_prompt, {"prompt_format": "raw", "fewshot": fewshot, "bos": None, "model": None}


def model_formatter(lm: Any) -> tuple[Formatter, dict[str, Any]]:
    """The prompts ``lm`` gets in the harness, as text that lm-eval's HFLM tokenises identically.

    The harness puts BOS first; HFLM does so only when the text starts with the BOS string, so that
    string is written in front whenever the harness would add the token.
    """
    tok = lm.tokenizer
    bos_text = getattr(tok, "bos_token", None)

    def formatter(prompt: Prompt) -> str:
        text: str = lm.format_prompt(prompt)
        plain = tok(text, add_special_tokens=False)["input_ids"]
        if bos_text and lm.encode(text) == [tok.bos_token_id, *plain]:
            text = bos_text + text
        return text

    header = {"prompt_format": lm.prompt_format, "fewshot": lm.fewshot, "bos": bos_text, "model": lm.name}
    return formatter, header


# ---- QA data sets ---------------------------------------------------------------------------------
def qa_documents(dataset: str, limit: int | None) -> list[Document]:
    """The first ``limit`` test contexts of a registered QA data set in its default order, as a
    batch run takes them (fewer if it has fewer)."""
    data = cast(QADataset, open_dataset(dataset, "qa"))
    return data.select("test", data.default_sample, limit)


def qa_rows(documents: list[Document], formatter: Formatter) -> list[dict[str, Any]]:
    rows = []
    for doc in documents:
        for i, qa in enumerate(doc.probes):
            rows.append(
                {
                    "id": f"{doc.id}#{i}",
                    "context_id": doc.id,
                    "question": qa.question,
                    "answers": list(qa.answers),
                    "context": doc.text,
                    "prompt": formatter(Prompt(doc.id, qa.question)),
                    "prompt_cq": formatter(Prompt(doc.id, qa.question, doc.text)),
                }
            )
    return rows


def export_qa(
    dataset: str,
    data_dir: str | Path | None = None,
    documents: list[Document] | None = None,
    limit: int | None = None,
    lm: Any = None,
) -> Path:
    """Write ``<data dir>/<dataset>.json`` from ``documents`` (default: the first ``limit``; 0 = all)."""
    if documents is None:
        documents = qa_documents(dataset, (default_contexts() if limit is None else limit) or None)
    formatter, header = model_formatter(lm) if lm is not None else model_free_formatter()
    payload = {
        "format": FORMAT_VERSION,
        "kind": "qa",
        "dataset": dataset,
        **header,
        "contexts": len(documents),
        "rows": qa_rows(documents, formatter),
    }
    return _write(data_file(dataset, data_dir), payload)


def _write(path: Path, payload: dict[str, Any]) -> Path:
    write_json_atomic(path, payload)
    return path


def read_export(path: Path) -> dict[str, Any]:
    try:
        payload: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BenchError(f"cannot read lm-eval data file {path}: {exc}") from None
    if payload.get("format") != FORMAT_VERSION:
        raise BenchError(f"{path} was written by another version; export it again (bench lm-eval --export)")
    return payload
