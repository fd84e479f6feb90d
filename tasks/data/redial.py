"""ReDial (Li et al., 2018): movie-recommendation dialogs in the official JSON-lines format.

Each line holds ``messages`` (``text``, ``senderWorkerId``), ``initiatorWorkerId`` (the seeker:
"User") and ``respondentWorkerId`` (the recommender: "System"); movies appear as ``@movieId`` and
are replaced by their titles from ``movies_with_mentions.csv`` (or the line's own
``movieMentions``). The same parser reads the shared 500-conversation subset, a full
``train_data.jsonl``, or the official ``redial_dataset.zip`` as published.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmark.errors import BenchError
from benchmark.registry import register_dataset
from tasks.data.base import not_utf8, read_jsonl
from tasks.data.crs import SYSTEM, USER, Conversation, CRSDataset, clean_text, merge_turns

MOVIES_CSV = "movies_with_mentions.csv"
ZIP_TRAIN = "train_data.jsonl"
_MENTION = re.compile(r"@(\d+)")


def read_movie_titles(handle: io.TextIOBase, where: str) -> dict[str, str]:
    """``movieId -> movieName`` from ReDial's catalogue CSV (whitespace in names collapsed)."""
    reader = csv.DictReader(handle)
    if not reader.fieldnames or not {"movieId", "movieName"} <= set(reader.fieldnames):
        raise BenchError(f"{where}: expected the columns movieId,movieName")
    return {row["movieId"].strip(): clean_text(row["movieName"]) for row in reader if row["movieId"]}


def _member_text(archive: zipfile.ZipFile, member: str, where: str) -> str:
    """A file inside the archive as text; one that is not UTF-8 is named with its line."""
    data = archive.read(member)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise not_utf8(where, data) from None


def parse_redial_record(record: dict[str, Any], where: str, titles: dict[str, str]) -> Conversation:
    """One official-format ReDial line as a conversation with titles in place of ``@id``."""
    messages = record.get("messages")
    seeker, recommender = record.get("initiatorWorkerId"), record.get("respondentWorkerId")
    if not isinstance(messages, list) or seeker is None or recommender is None:
        raise BenchError(f"{where}: expected 'messages', 'initiatorWorkerId' and 'respondentWorkerId'")
    own = {str(k): clean_text(v) for k, v in (record.get("movieMentions") or {}).items() if isinstance(v, str)}
    parsed = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("text"), str):
            raise BenchError(f"{where}: messages[{i}] has no text")
        sender = message.get("senderWorkerId")
        if sender not in (seeker, recommender):
            raise BenchError(f"{where}: messages[{i}] comes from worker {sender!r}, neither participant")
        movies: list[str] = []

        def title(match: re.Match[str], movies: list[str] = movies) -> str:
            name = titles.get(match.group(1)) or own.get(match.group(1))
            if not name:
                return match.group(0)  # an unknown id stays as written
            movies.append(name)
            return name

        text = _MENTION.sub(title, html.unescape(message["text"]))  # the files keep "&quot;" etc.
        parsed.append((USER if sender == seeker else SYSTEM, text, tuple(movies)))
    conv_id = record.get("conversationId")
    return Conversation(f"redial-{conv_id if conv_id is not None else where}", merge_turns(parsed), where)


@register_dataset("redial")
class ReDial(CRSDataset):
    description = "ReDial movie dialogs (recommendation task): 500 training conversations, 3,552 probes"
    default_train = "train_subset500.jsonl"

    def read_conversations(self, path: Path) -> list[Conversation]:
        if zipfile.is_zipfile(path):
            return self._read_zip(path)
        return self._read_lines(read_jsonl(path), str(path), self._titles_beside(path))

    def _titles_beside(self, path: Path) -> dict[str, str]:
        for candidate in (path.parent / MOVIES_CSV, self.root / self.name / MOVIES_CSV):
            if candidate.exists():
                try:
                    with candidate.open(encoding="utf-8", newline="") as handle:
                        return read_movie_titles(handle, str(candidate))
                except UnicodeDecodeError:
                    raise not_utf8(candidate) from None
        return {}  # each line's own movieMentions still name its movies

    def _read_zip(self, path: Path) -> list[Conversation]:
        with zipfile.ZipFile(path) as archive:
            names = {Path(n).name: n for n in archive.namelist()}
            if ZIP_TRAIN not in names:
                raise BenchError(f"{path}: no {ZIP_TRAIN} inside the archive")
            titles: dict[str, str] = {}
            if MOVIES_CSV in names:
                csv_text = _member_text(archive, names[MOVIES_CSV], f"{path}:{MOVIES_CSV}")
                titles = read_movie_titles(io.StringIO(csv_text, newline=""), f"{path}:{MOVIES_CSV}")
            lines = _member_text(archive, names[ZIP_TRAIN], f"{path}:{ZIP_TRAIN}").splitlines()
        records = []
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    records.append((number, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise BenchError(f"{path}:{ZIP_TRAIN}:{number}: malformed JSON ({exc.msg})") from None
        return self._read_lines(records, f"{path}:{ZIP_TRAIN}", titles)

    @staticmethod
    def _read_lines(records: Iterable[tuple[int, Any]], where: str, titles: dict[str, str]) -> list[Conversation]:
        return [parse_redial_record(record, f"{where}:{number}", titles) for number, record in records]
