"""What the conversational-recommendation data sets (ReDial, INSPIRED) share.

Two kinds of material come from a CRS data set:
- training conversations (the injected material), each parsed by the data set's own loader into
  ``Conversation`` turns and rendered as "User: …" / "System: …" lines;
- recommendation points to probe (``RecProbe``), read from the CRSLab/UniCRS-derived files that the
  SELF-PARAM paper's evaluation uses: ``crs/<dataset>/test.jsonl`` (``input`` = the dialog so far,
  ``rec`` = gold entity ids, ``prev_entity`` = entities mentioned before), with the entity
  catalogue ``entity2id.json`` (DBpedia URI -> id) and ``item_ids.json`` (the recommendable ids).

Where files live: the shared data folder (``benchmark.paths``), or ``--set data_path=`` naming
either another folder laid out the same way (``crs/``, ``redial/``, ``inspired/``) or a single
training-conversation file (the full ReDial zip, an INSPIRED train file) while the probes stay in
the shared folder.
"""

from __future__ import annotations

import json
import re
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from benchmark.api import Dataset
from benchmark.errors import BenchError
from benchmark.metrics import normalize_answer
from benchmark.paths import shared_data_dir
from tasks.data.base import not_utf8, read_jsonl

USER, SYSTEM = "User", "System"
_PARENS = re.compile(r"\([^()]*\)")
_SPACES = re.compile(r"\s+")
_TURN_START = re.compile(r"^(User|System): ?", re.MULTILINE)


@dataclass(frozen=True)
class Turn:
    """One speaker's consecutive messages, merged, with the movie titles they mention."""

    speaker: str  # USER or SYSTEM
    text: str
    movies: tuple[str, ...] = ()


@dataclass(frozen=True)
class Conversation:
    id: str
    turns: tuple[Turn, ...]
    source: str = ""  # "file:line" for error messages

    def text(self) -> str:
        """The injected form: one "System: …" / "User: …" line per turn."""
        return render_turns(self.turns)


@dataclass(frozen=True)
class RecProbe:
    """A point in a test dialog where the recommender names items: what to ask, what counts."""

    id: str
    dialog_id: str
    dialog: str  # the paper's ``input``: "\nUser: …\nSystem: …\nSystem: " (ends where the reply goes)
    gold: tuple[int, ...]  # entity ids of the recommended items
    seen: tuple[int, ...]  # entity ids mentioned earlier in the dialog (the r2 / r4 filter)


@dataclass
class Catalogue:
    """Entity titles by id, and which ids are recommendable items."""

    titles: dict[int, str]
    items: frozenset[int]


def render_turns(turns: tuple[Turn, ...] | list[Turn]) -> str:
    return "\n".join(f"{t.speaker}: {t.text}" for t in turns)


def parse_dialog(dialog: str) -> list[Turn]:
    """Turns of a probe's ``input`` string (the inverse of ``render_turns``, empty last turn dropped)."""
    starts = list(_TURN_START.finditer(dialog))
    turns = []
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(dialog)
        text = clean_text(dialog[match.end() : end])
        if text:
            turns.append(Turn(match.group(1), text))
    return turns


def clean_text(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def entity_title(uri: str) -> str:
    """A DBpedia URI as a title, the way the paper's evaluation code names catalogue entries.

    ``<http://dbpedia.org/resource/Police_Academy_(1984_film)>`` -> ``Police Academy``: last path
    segment, ``_``/``-``/``>`` as spaces, parenthesised parts removed, whitespace collapsed.
    """
    text = uri.split("/")[-1]
    text = text.replace("_", " ").replace("-", " ").replace(">", " ")
    return clean_text(_PARENS.sub("", text))


def merge_turns(messages: list[tuple[str, str, tuple[str, ...]]]) -> tuple[Turn, ...]:
    """Consecutive messages of one speaker become one turn (as in the probes' dialogs)."""
    turns: list[Turn] = []
    for speaker, text, movies in messages:
        text = clean_text(text)
        if not text:
            continue
        if turns and turns[-1].speaker == speaker:
            last = turns[-1]
            merged = last.movies + tuple(m for m in movies if m not in last.movies)
            turns[-1] = Turn(speaker, f"{last.text} {text}", merged)
        else:
            turns.append(Turn(speaker, text, tuple(dict.fromkeys(movies))))
    return tuple(turns)


def spoken_words(turns: tuple[Turn, ...] | list[Turn]) -> str:
    """What was said, normalised, without speaker labels (the probe files assign roles by position)."""
    return normalize_answer(" ".join(t.text for t in turns))


def check_probes_not_injected(probes: list[RecProbe], conversations: list[Conversation], min_words: int = 12) -> None:
    """Fail if a probe's dialog so far is part of a training conversation (a test dialog injected).

    Dialogs shorter than ``min_words`` are skipped: "Hello! Hi! What do you like?" opens many
    conversations. On the shared data this flags every probe (of at least 12 words) when the test
    conversations are given as training data, and none with the real training subsets.
    """
    separator = " \x00 "
    joined = separator + separator.join(spoken_words(c.turns) for c in conversations) + separator
    for probe in probes:
        said = spoken_words(parse_dialog(probe.dialog))
        if len(said.split()) < min_words:
            continue
        at = joined.find(f" {said} ")
        if at != -1:
            owner = conversations[joined.count("\x00", 0, at) - 1]
            raise BenchError(
                f"leakage: the dialog of probe {probe.id!r} is part of training conversation "
                f"{owner.id!r} ({owner.source}); the test dialogs must not be injected"
            )


def read_json(path: Path) -> object:
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as exc:
        raise BenchError(f"cannot read data file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None


class CRSDataset(Dataset):
    """A conversational-recommendation data set: training conversations, probes, catalogue.

    ``path`` (the run's ``data_path``) is empty for the shared data folder, a folder laid out like
    it, or a single training-conversation file for the subclass to parse.
    """

    kind: ClassVar[str] = "crs"
    default_train: ClassVar[str]  # the training file, relative to the data root

    def __init__(self, path: str = "", seed: int = 0) -> None:
        super().__init__(path, seed)
        given = Path(path) if path else None
        if given is not None and not given.exists():
            raise BenchError(f"data_path {path!r} does not exist")
        self.root = given if given is not None and given.is_dir() else shared_data_dir()
        self.train_path = given if given is not None and given.is_file() else self.root / self.name / self.default_train

    # ---- training conversations -------------------------------------------------------------
    @abstractmethod
    def read_conversations(self, path: Path) -> list[Conversation]:
        """Every conversation of a training file, in file order."""

    def conversations(self) -> list[Conversation]:
        if not self.train_path.exists():
            raise BenchError(
                f"training conversations for {self.name!r} not found at {self.train_path}; "
                "set data_path to a data folder or a training file"
            )
        conversations = self.read_conversations(self.train_path)
        if not conversations:
            raise BenchError(f"{self.train_path}: no conversations in the file")
        seen: set[str] = set()
        for conv in conversations:
            if conv.id in seen:
                raise BenchError(f"{conv.source}: duplicate conversation id {conv.id!r}")
            seen.add(conv.id)
        return conversations

    # ---- probes and catalogue ---------------------------------------------------------------
    def crs_dir(self) -> Path:
        folder = self.root / "crs" / self.name
        if not folder.is_dir():
            raise BenchError(
                f"recommendation probes for {self.name!r} not found: no folder {folder} "
                "(expected test.jsonl, entity2id.json, item_ids.json)"
            )
        return folder

    def probes(self) -> list[RecProbe]:
        path = self.crs_dir() / "test.jsonl"
        probes: list[RecProbe] = []
        ids: set[str] = set()
        for number, record in read_jsonl(path):
            where = f"{path}:{number}"
            dialog = record.get("input")
            if not isinstance(dialog, str) or not dialog.strip():
                raise BenchError(f"{where}: field 'input' is missing or empty")
            gold, seen = (_int_list(record, key, where) for key in ("rec", "prev_entity"))
            if not gold:
                raise BenchError(f"{where}: field 'rec' has no gold item")
            dialog_id = str(record.get("dialog_id", number))
            probe_id = f"{dialog_id}:{record.get('turn_id', number)}"
            if probe_id in ids:
                probe_id = f"{probe_id}@{number}"
            ids.add(probe_id)
            probes.append(RecProbe(probe_id, dialog_id, dialog, tuple(gold), tuple(seen)))
        if not probes:
            raise BenchError(f"{path}: no recommendation points in the file")
        return probes

    def catalogue(self) -> Catalogue:
        folder = self.crs_dir()
        entity2id = read_json(folder / "entity2id.json")
        item_ids = read_json(folder / "item_ids.json")
        if not isinstance(entity2id, dict) or not isinstance(item_ids, list):
            raise BenchError(f"{folder}: entity2id.json must map names to ids, item_ids.json list ids")
        titles = {int(i): entity_title(uri) for uri, i in entity2id.items()}
        return Catalogue({i: t for i, t in titles.items() if t}, frozenset(int(i) for i in item_ids))


def _int_list(record: dict[str, Any], key: str, where: str) -> list[int]:
    value = record.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
        raise BenchError(f"{where}: field {key!r} must be a list of entity ids")
    return value
