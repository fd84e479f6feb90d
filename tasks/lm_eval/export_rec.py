"""The recommendation data for the lm-eval tasks, and its scorer (the harness's CRS scorer).

Rows hold the paper's recommender prompt, the gold titles and the titles already mentioned in the
dialog; the file's header holds the catalogue the generated lines are matched against. Scoring is
``tasks.crs_scoring`` (list parsing, nearest catalogue title by edit distance, Recall@1 under
r1..r4, once per gold item), as in ``bench run --task recommendation``.

Exported without a model, ``prompt`` is the bare user message (run lm-eval with
``--apply_chat_template``); exported by ``bench lm-eval`` it is the chat-formatted text the
harness gives the model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

from benchmark.registry import open_dataset
from benchmark.types import Prompt
from tasks.crs_scoring import FILTERS, TitleMatcher, parse_recommendations, score_list
from tasks.data.crs import CRSDataset, RecProbe
from tasks.lm_eval.export import FORMAT_VERSION, Formatter, _write, data_file, model_formatter, read_export
from tasks.recommendation import RECOMMENDER_PROMPT, RecommendationParams, RecommendationTask, select_evenly


def export_recommendation(dataset: str, data_dir: str | Path | None = None, limit: int | None = None) -> Path:
    """Write the recommendation points of ``dataset`` without a model (bare user messages).

    ``limit`` points are taken evenly over the test file, as the task does (default: the task's
    default ``num_probes``; 0 = all).
    """
    params = RecommendationParams()
    data = cast(CRSDataset, open_dataset(dataset, RecommendationTask.dataset_kind))
    catalogue = data.catalogue()
    probes = select_evenly(data.probes(), params.num_probes if limit is None else limit)
    titles = catalogue.titles
    pool = titles.values() if params.candidates == "entities" else [titles[i] for i in catalogue.items if i in titles]
    messages = {p.id: RECOMMENDER_PROMPT.format(p.dialog) for p in probes}
    header = {"prompt_format": "message", "fewshot": 0, "bos": None, "model": None}
    return write_recommendation(dataset, data_dir, probes, messages, titles, pool, params, lambda p: p.question, header)


def export_task(task: Any, data_dir: str | Path, lm: Any) -> Path:
    """Write the points of a prepared ``RecommendationTask`` with the prompts ``lm`` gets from it."""
    formatter, header = model_formatter(lm)
    titles = task.catalogue.titles
    return write_recommendation(
        task.dataset, data_dir, task.probes, task.prompts, titles, task.matcher.choices, task.params, formatter, header
    )


def write_recommendation(
    dataset: str,
    data_dir: str | Path | None,
    probes: list[RecProbe],
    messages: dict[str, str],
    titles: dict[int, str],
    pool: Iterable[str],
    params: Any,
    formatter: Formatter,
    header: dict[str, Any],
) -> Path:
    path = data_file(dataset, data_dir)
    rows = []
    for probe in probes:
        message = messages[probe.id]
        rows.append(
            {
                "id": probe.id,
                "dialog_id": probe.dialog_id,
                "message": message,
                "prompt": formatter(Prompt(probe.id, message, chat=True)),
                "gold": [titles[g] for g in probe.gold],
                "seen": [titles[s] for s in probe.seen if s in titles],
                "data_file": str(path.resolve()),
            }
        )
    payload = {
        "format": FORMAT_VERSION,
        "kind": "recommendation",
        "dataset": dataset,
        **header,
        "max_distance": params.max_distance,
        "max_list_tokens": params.max_list_tokens,
        "catalogue": sorted(set(pool)),
        "rows": rows,
    }
    return _write(path, payload)


_MATCHERS: dict[tuple[str, int], tuple[Any, int]] = {}


def _matcher(path: str) -> tuple[Any, int]:
    """The catalogue matcher of one data file (built once per file version) and its distance limit."""
    key = (path, Path(path).stat().st_mtime_ns)
    if key not in _MATCHERS:
        payload = read_export(Path(path))
        _MATCHERS[key] = (TitleMatcher(payload["catalogue"]), int(payload["max_distance"]))
    return _MATCHERS[key]


def score_reply(doc: dict[str, Any], reply: str) -> dict[str, list[int]]:
    """Recall@1 hits per gold item under r1..r4 for one generated reply."""
    matcher, max_distance = _matcher(doc["data_file"])
    matches = matcher.match(matcher.joined(parse_recommendations(reply), max_distance))
    hits = score_list(matches, doc["gold"], doc["seen"], max_distance)
    return {f"recall@1_{name}": hits[name]["1"] for name in FILTERS}
