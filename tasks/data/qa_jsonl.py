"""Any QA data set written as JSON lines, given as ``--dataset path/to/file.jsonl``.

One context per line: ``{"id": "...", "context": "...", "probes": [{"question": "...",
"answers": ["..."]}], "train_qa": [...], "group": "..."}``; ``id``, ``train_qa`` and ``group`` are
optional. ``group`` (e.g. the source article) keeps related contexts together in the dev or the
test split and lets ``sample=spread`` take contexts from as many groups as possible; without it
each context is split on its own (by a hash of its text).
"""

from __future__ import annotations

from pathlib import Path

from benchmark.registry import register_dataset
from benchmark.types import Document
from tasks.data.base import QADataset, check_documents, optional_text, parse_qa_list, read_jsonl, require_text


@register_dataset("qa-jsonl")
class QAJsonl(QADataset):
    description = "your own QA contexts as JSON lines (--dataset FILE.jsonl or --set data_path=FILE)"

    def documents(self, limit: int | None = None) -> list[Document]:
        path = Path(self.path)
        docs: list[Document] = []
        for number, record in read_jsonl(path):
            where = f"{path}:{number}"
            docs.append(
                Document(
                    id=str(record.get("id", f"{path.stem}-{number}")),
                    text=require_text(record, "context", where),
                    probes=parse_qa_list(record.get("probes"), where, "probes"),
                    train_qa=parse_qa_list(record.get("train_qa"), where, "train_qa"),
                    source=where,
                    group=optional_text(record, "group", where),
                )
            )
        check_documents(docs)  # the whole file is checked, so a bad line is never silently skipped
        return docs[:limit]
