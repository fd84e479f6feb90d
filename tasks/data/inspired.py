"""INSPIRED (Hayati et al., 2020): sociable movie-recommendation dialogs.

Two formats are read: the UniCRS/KGSF JSON lines (one dialog per line, a list of turns with
``text``, ``role`` RECOMMENDER/SEEKER and ``movie``/``movie_name``), which the shared subset uses,
and the original repository's TSV files (``data/dialog_data/train.tsv``: one utterance per row,
grouped by ``dialog_id``), which hold the full training set.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmark.errors import BenchError
from benchmark.registry import register_dataset
from tasks.data.base import not_utf8, read_json_lines
from tasks.data.crs import SYSTEM, USER, Conversation, CRSDataset, merge_turns

ROLES = {"RECOMMENDER": SYSTEM, "SEEKER": USER}


def _role(value: object, where: str) -> str:
    if value not in ROLES:
        raise BenchError(f"{where}: speaker {value!r} is neither RECOMMENDER nor SEEKER")
    return ROLES[value]


@register_dataset("inspired")
class Inspired(CRSDataset):
    description = "INSPIRED movie dialogs (recommendation task): 100 training conversations, 228 probes"
    default_train = "train_subset100.jsonl"

    def read_conversations(self, path: Path) -> list[Conversation]:
        if path.suffix.lower() == ".tsv":
            return self._read_tsv(path)
        return self._read_jsonl(path)

    def _read_jsonl(self, path: Path) -> list[Conversation]:
        conversations = []
        for number, dialog in _read_json_lists(path):
            where = f"{path}:{number}"
            messages = []
            for i, turn in enumerate(dialog):
                if not isinstance(turn, dict) or not isinstance(turn.get("text"), str):
                    raise BenchError(f"{where}: turn {i} has no text")
                movies = turn.get("movie") or turn.get("movie_name") or []
                messages.append(
                    (
                        _role(turn.get("role"), f"{where}: turn {i}"),
                        turn["text"],
                        tuple(m for m in movies if isinstance(m, str) and m.strip()),
                    )
                )
            conversations.append(Conversation(f"inspired-{path.stem}-{number}", merge_turns(messages), where))
        return conversations

    def _read_tsv(self, path: Path) -> list[Conversation]:
        try:
            handle = path.open(encoding="utf-8", newline="")
        except OSError as exc:
            raise BenchError(f"cannot read data file {path}: {exc.strerror}") from None
        dialogs: dict[str, list[tuple[str, str, tuple[str, ...]]]] = {}
        with handle:
            try:
                reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
                if not reader.fieldnames or not {"dialog_id", "speaker", "text"} <= set(reader.fieldnames):
                    raise BenchError(f"{path}: expected the INSPIRED columns dialog_id, speaker, text")
                for number, row in enumerate(reader, start=2):
                    text = (row["text"] or "").replace("QUOTATION_MARK", '"')
                    movies = tuple(m.strip() for m in (row.get("movies") or "").split(";") if m.strip())
                    speaker = _role(row["speaker"], f"{path}:{number}")
                    dialogs.setdefault(row["dialog_id"], []).append((speaker, text, movies))
            except UnicodeDecodeError:
                raise not_utf8(path) from None
        return [
            Conversation(f"inspired-{dialog_id}", merge_turns(messages), f"{path} ({dialog_id})")
            for dialog_id, messages in dialogs.items()
        ]


def _read_json_lists(path: Path) -> Iterator[tuple[int, list[Any]]]:
    """(line number, list of turns) per line; ``read_jsonl`` insists on objects, these are lists."""
    for number, value in read_json_lines(path):
        if isinstance(value, dict) and isinstance(value.get("dialog"), list):
            value = value["dialog"]
        if not isinstance(value, list):
            raise BenchError(f"{path}:{number}: expected a list of turns per line")
        yield number, value
