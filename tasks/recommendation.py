"""Conversational recommendation (the paper's INSPIRED / ReDial experiment), scored by Recall@k r1–r4.

Injected material: training conversations, "System: …" / "User: …" lines. Probes: the
recommendation points of the test dialogs, asked with the paper's recommender prompt through the
chat template (greedy); the reply is parsed and scored in ``tasks.crs_scoring``.

Episodes: the method is built and injected once per run, then the probes are answered in shards
of ``probes_per_episode``; each shard is an episode, saved when done, so an interrupted run
resumes at the first unfinished shard (re-injecting once, with the same seed). Sharding splits the
evaluation only: every shard shares one method key (``method_key``), so the runner answers all of
them with the same injected model, as in one episode.

Target sentences (for methods that train on them) come from the conversations themselves: at
every recommender turn that names a movie not mentioned before, "Question: <the probe's prompt
around the last few turns> Answer: 1. <title>\\n2. …" (``target_form=probe``), or "Question: <the
last few turns> Which movies should the recommender suggest next? Answer: <titles>"
(``question``). They teach the mapping the probe asks for — dialog so far -> recommended titles —
in the paper's "Question: … Answer: …" form; the probe form asks it exactly as the probes do.
``--set targets=local`` (or ``openai``) generates QA pairs from the conversation text instead, as
the paper did with gpt-4o-mini.

A test dialog found inside the training conversations stops the run before anything is asked
(``check_probes_not_injected``).

Base, C+Q does not apply: a recommendation point has no gold context to put in the prompt (the
dialog is the prompt already); the retrieval methods are the way to put training conversations in
context.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from benchmark.api import EpisodePlan, Method, Step, Task
from benchmark.errors import BenchError
from benchmark.grounding import split_generator
from benchmark.metrics import cluster_summary, summarize
from benchmark.models import LM
from benchmark.registry import open_dataset, register_task
from benchmark.report import fmt_ci
from benchmark.targets import make_targets
from benchmark.task_info import MetricInfo
from benchmark.types import QA, Answer, Context, Document, Prompt
from tasks.crs_scoring import FILTER_NAMES, FILTERS, KS, TitleMatcher, parse_recommendations, score_list
from tasks.data.crs import (
    SYSTEM,
    Conversation,
    CRSDataset,
    RecProbe,
    Turn,
    check_probes_not_injected,
    render_turns,
)

# The recommender prompt of the paper's CRS evaluation, character for character.
RECOMMENDER_PROMPT = (
    "Pretend you are a movie recommender system. \n I will give you a conversation between a user and "
    "you (a recommender system). Based on the conversation, you reply me with 20 recommendations "
    "without extra sentences.\n Here is the conversation: {}"
)
# SmolLM2-135M-Instruct answers the paper's prompt by continuing the dialog ("System: …") rather
# than listing titles (3 of 3 probes tried); without the empty "System: " slot and with this last
# line it writes a numbered list (3 of 3). ``prompt_style=list`` adds it; ``paper`` is the original.
LIST_INSTRUCTION = "\n\nNow list 20 movie titles, one per line, numbered 1 to 20."
PROMPT_STYLES = ("paper", "list")
TARGET_QUESTION = "Which movies should the recommender suggest next?"
TARGET_FORMS = ("question", "probe")


@dataclass
class RecommendationParams:
    num_probes: int = 40  # recommendation points asked, evenly spaced over the test file; 0 = all
    # "test": the evenly spaced points; "dev": the points halfway between them, disjoint from test,
    # to choose settings on (needs num_probes > 0 and at most half the file).
    split: str = "test"
    probes_per_episode: int = 16  # probes answered and saved together (the unit a run resumes by)
    num_conversations: int = 20  # training conversations injected (the first N of the file); 0 = all
    max_list_tokens: int = 160  # generation budget for the 20-title list (the paper: 512)
    prompt_style: str = "paper"  # paper: the paper's prompt verbatim | list: plus a closing "list 20 titles" line
    candidates: str = "entities"  # titles a line may map to: entities (the paper's code) | items
    max_distance: int = 2  # r3/r4 drop matches farther than this edit distance (the paper: 2)
    target_turns: int = 6  # dialog turns quoted in a target sentence's question
    # How a target sentence asks for the titles: "probe" (the probe's own prompt around the turns,
    # ``prompt_style`` included, and the titles as the numbered list it asks for), or "question"
    # ("<turns>\nWhich movies should the recommender suggest next?", the titles joined by commas).
    # On INSPIRED dev points SELF-PARAM trained on "question" targets opened 27 of 40 replies with
    # "System: …", on "probe" targets 9 (README, recommendation).
    target_form: str = "probe"

    RANGES: ClassVar[dict[str, str]] = {
        "num_probes": ">= 0",
        "probes_per_episode": ">= 1",
        "num_conversations": ">= 0",
        "max_list_tokens": ">= 1",
        "max_distance": ">= 0",
        "target_turns": ">= 1",
    }


@register_task("recommendation")
class RecommendationTask(Task):
    description = "conversational recommendation (INSPIRED, ReDial): inject conversations, Recall@k r1-r4"
    Params = RecommendationParams
    params: RecommendationParams
    profiles = {
        "smoke": {"num_probes": 4, "probes_per_episode": 2, "num_conversations": 3, "max_list_tokens": 24},
        "quick": {"prompt_style": "list"},
        "paper": {"num_probes": 0, "probes_per_episode": 256, "num_conversations": 0, "max_list_tokens": 512},
    }
    default_dataset = "redial"
    dataset_kind = "crs"
    display_name = "conversational recommendation"
    metrics = (
        # Recall@k under filter r: hit or miss of each gold item, averaged over gold items
        *(MetricInfo(f"recall@1_{r}", f"R@1 {r}", short=r, primary=r == "r1") for r in FILTERS),
        *(MetricInfo(f"recall@{k}_r1", f"R@{k} r1") for k in KS[1:]),
        *(MetricInfo(f"recall@{k}_{r}", f"R@{k} {r}", board=False) for r in FILTERS if r != "r1" for k in KS[1:]),
        MetricInfo("list_length", "list lines per reply", higher_is_better=None, unit="lines", board=False),
        MetricInfo("in_catalogue", "share of list lines near a catalogue title", board=False),
    )
    compared = tuple(f"recall@{k}_{r}" for r in FILTERS for k in KS)
    paired_unit = "gold items"
    resampled_unit = "test points"
    paper_table = "2"
    paper_metrics = tuple(f"recall@1_{r}" for r in FILTERS)

    # ---- data ------------------------------------------------------------------------------
    def prepare(self, lm: LM) -> None:
        p = self.params
        if p.candidates not in ("entities", "items"):
            raise BenchError(f"candidates must be 'entities' or 'items', not {p.candidates!r}")
        if p.target_form not in TARGET_FORMS:
            raise BenchError(f"target_form must be one of {', '.join(TARGET_FORMS)}, not {p.target_form!r}")
        if p.prompt_style not in PROMPT_STYLES:
            raise BenchError(f"prompt_style must be one of {', '.join(PROMPT_STYLES)}, not {p.prompt_style!r}")
        if p.probes_per_episode < 1 or p.num_probes < 0 or p.num_conversations < 0 or p.max_list_tokens < 1:
            raise BenchError(
                "num_probes and num_conversations must be >= 0, probes_per_episode and max_list_tokens >= 1"
            )
        self.lm = lm
        data = self._dataset()
        self.catalogue = data.catalogue()
        self.probes = select_probes(data.probes(), p.num_probes, p.split)
        for probe in self.probes:
            missing = [i for i in probe.gold + probe.seen if i not in self.catalogue.titles]
            if missing:
                raise BenchError(f"probe {probe.id!r}: entity ids {missing[:5]} are not in entity2id.json")
        self.conversations = self._training_conversations(data.conversations())
        check_probes_not_injected(self.probes, self.conversations)
        self.prompts: dict[str, str] = {}
        self.dropped_turns: dict[str, int] = {}
        for probe in self.probes:
            self.prompts[probe.id], self.dropped_turns[probe.id] = self._fit(probe)
        titles = self.catalogue.titles
        pool = (
            titles.values() if p.candidates == "entities" else [titles[i] for i in self.catalogue.items if i in titles]
        )
        self.matcher = TitleMatcher(pool)
        self._targets: dict[str, list[str]] | None = None

    def _dataset(self) -> CRSDataset:
        return cast(CRSDataset, open_dataset(self.dataset, self.dataset_kind, self.data_path, self.seed))

    def _training_conversations(self, conversations: list[Conversation]) -> list[Conversation]:
        """The first N training conversations, in file order."""
        n = self.params.num_conversations
        if n and len(conversations) < n:
            raise BenchError(
                f"{self.dataset!r} has {len(conversations)} training conversations, fewer than the {n} asked for"
            )
        return conversations[:n] if n else conversations

    def _fit(self, probe: RecProbe) -> tuple[str, int]:
        """The probe's prompt; the oldest turns are dropped if it would not fit the model window."""
        reserve = self.params.max_list_tokens
        starts = turn_starts(probe.dialog)
        for dropped in range(max(1, len(starts) - 1)):  # the last start is the empty reply slot
            dialog = probe.dialog[starts[dropped] :] if dropped else probe.dialog
            question = build_question(dialog, self.params.prompt_style)
            text = self.lm.format_prompt(Prompt(probe.id, question, chat=True))
            if len(self.lm.encode(text)) + reserve <= self.lm.max_length:
                return question, dropped
        raise BenchError(
            f"probe {probe.id!r}: even its last turn with a {reserve}-token answer does not "
            f"fit model {self.lm.name!r} ({self.lm.max_length} tokens)"
        )

    # ---- injection ---------------------------------------------------------------------------
    def targets(self) -> dict[str, list[str]]:
        """Target sentences per conversation, made once per run from the conversations alone.

        They quote training conversations only, which ``prepare`` has checked against the probes.
        With the ``dataset`` generator, a conversation in which the recommender never names a new
        movie (about 1 in 100) has no target sentence; it is still injected as context.
        """
        if self._targets is None:
            p = self.params
            ask = probe_asker(p.prompt_style) if p.target_form == "probe" else ask_as_question
            documents = [
                Document(c.id, c.text(), (), tuple(recommendation_qa(c, p.target_turns, ask)), c.source)
                for c in self.conversations
            ]
            if split_generator(self.run.targets)[0] == "dataset":
                documents = [d for d in documents if d.train_qa]
                if not documents:
                    raise BenchError(
                        f"no training conversation of {self.dataset!r} names a recommended movie, "
                        "so there are no target sentences; try --set targets=local"
                    )
            self._targets = make_targets(documents, self.run, self.lm, self.seed)
        return self._targets

    def contexts(self, method: Method) -> list[Context]:
        targets = self.targets() if method.uses_targets else {}
        return [Context(c.id, c.text(), list(targets.get(c.id, []))) for c in self.conversations]

    @classmethod
    def method_problem(cls, method_cls: type[Method]) -> str | None:
        if method_cls.sees_gold_context:
            return (
                f"method {method_cls.name!r} does not apply to the recommendation task: a recommendation "
                "point has no gold context (the dialog is already the prompt); use base_q, or a "
                "retrieval method to put training conversations in context"
            )
        return None

    # ---- episodes ----------------------------------------------------------------------------
    def episodes(self) -> list[str]:
        size = self.params.probes_per_episode
        return [f"probes-{i:04d}" for i in range(0, len(self.probes), size)]

    def _shard(self, episode: str) -> list[RecProbe]:
        start = int(episode.rsplit("-", 1)[1])
        return self.probes[start : start + self.params.probes_per_episode]

    def method_key(self, episode: str) -> str:
        return "inject"  # one injected method answers every shard, seeded the same whichever builds it

    def plan(self, episode: str, method: Method) -> EpisodePlan:
        """The training conversations as setup (injected once per run), then the shard's probes."""
        shard = self._shard(episode)
        prompts = [
            Prompt(p.id, self.prompts[p.id], chat=True, max_new_tokens=self.params.max_list_tokens, multiline=True)
            for p in shard
        ]
        return EpisodePlan(
            setup=self.contexts(method),
            steps=[Step(prompts, expected=shard)],
            record={"probe_ids": [p.id for p in shard]},
        )

    def score(self, step: Step, answers: list[Answer]) -> dict[str, Any]:
        return {"predictions": self.score_replies(step.expected, [a.text for a in answers])}

    def episode_record(self, plan: EpisodePlan, steps: list[dict[str, Any]]) -> dict[str, Any]:
        return {**plan.record, **steps[0]}  # one step: its predictions are the shard's

    def score_replies(self, probes: list[RecProbe], answers: list[str]) -> list[dict[str, Any]]:
        titles = self.catalogue.titles
        items = [self.matcher.joined(parse_recommendations(a), self.params.max_distance) for a in answers]
        matches = self.matcher.match([line for lines in items for line in lines])
        records: list[dict[str, Any]] = []
        offset = 0
        for probe, answer, lines in zip(probes, answers, items):
            matched = matches[offset : offset + len(lines)]
            offset += len(lines)
            gold = [titles[g] for g in probe.gold]
            record: dict[str, Any] = {
                "probe_id": probe.id,
                "dialog_id": probe.dialog_id,
                "gold": gold,
                "output": answer,
                "items": [line.title for line in lines],
                "matches": [[title, distance] for title, distance in matched],
                "hits": score_list(matched, gold, [titles[s] for s in probe.seen], self.params.max_distance),
            }
            if self.dropped_turns.get(probe.id):
                record["turns_dropped"] = self.dropped_turns[probe.id]
            records.append(record)
        return records

    # ---- scores ------------------------------------------------------------------------------
    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        predictions = [p for r in records for p in r["predictions"]]
        scores: dict[str, Any] = {}
        for name in FILTERS:
            for k in KS:
                scores[f"recall@{k}_{name}"] = per_gold_item(predictions, name, k, self.seed)
        scores["list_length"] = summarize([len(p["items"]) for p in predictions], seed=self.seed)
        near = [
            sum(d <= self.params.max_distance for _, d in p["matches"]) / len(p["matches"])
            for p in predictions
            if p["matches"]
        ]
        if near:  # replies with no parsable line have no share to report
            scores["in_catalogue"] = summarize(near, seed=self.seed)
        return scores

    @classmethod
    def summary(cls, scores: dict[str, Any]) -> str:
        from tabulate import tabulate

        rows = []
        for name in FILTERS:
            row = [FILTER_NAMES[name], fmt_ci(scores[f"recall@1_{name}"])]
            row += [f"{scores[f'recall@{k}_{name}']['mean']:.4f}" for k in KS[1:]]
            rows.append(row + [scores[f"recall@1_{name}"]["n"]])
        headers = ["filter", "Recall@1 [95% CI]"] + [f"Recall@{k}" for k in KS[1:]] + ["gold items"]
        table = tabulate(rows, headers=headers, tablefmt="github")
        length, near = scores["list_length"], scores.get("in_catalogue")
        note = f"{length['mean']:.1f} list lines per reply over {length['n']} probes"
        if near:
            note += f"; {near['mean']:.0%} of lines within the edit-distance limit of a catalogue title"
        return f"{table}\n{note}"


def select_probes(probes: list[RecProbe], n: int, split: str = "test") -> list[RecProbe]:
    """The ``test`` probes (``select_evenly``) or the ``dev`` ones: one halfway between each two test
    probes, so that settings chosen on dev never saw a scored probe."""
    if split == "test":
        return select_evenly(probes, n)
    if split != "dev":
        raise BenchError(f"split must be test or dev, not {split!r}")
    if not n or 2 * n > len(probes):
        raise BenchError(
            f"split dev needs num_probes between 1 and half of the {len(probes)} probes "
            f"(got {n}): otherwise no probe is left outside the test selection"
        )
    return [probes[(2 * i + 1) * len(probes) // (2 * n)] for i in range(n)]


def select_evenly(probes: list[RecProbe], n: int) -> list[RecProbe]:
    """``n`` probes spread evenly over the file (all when n is 0 or too large): many dialogs, not a few."""
    if not n or n >= len(probes):
        return probes
    return [probes[i * len(probes) // n] for i in range(n)]


def build_question(dialog: str, style: str) -> str:
    """The user message for one probe: the paper's prompt around the dialog, in the given style."""
    if style == "list":
        slot = "\nSystem: "
        body = dialog[: -len(slot)] if dialog.endswith(slot) else dialog
        return RECOMMENDER_PROMPT.format(body) + LIST_INSTRUCTION
    return RECOMMENDER_PROMPT.format(dialog)


def turn_starts(dialog: str) -> list[int]:
    """Offsets in a probe's dialog where each turn line begins ("User: " / "System: ")."""
    starts = [0]
    for marker in ("\nUser: ", "\nSystem: "):
        index = dialog.find(marker, 1)
        while index != -1:
            starts.append(index)
            index = dialog.find(marker, index + 1)
    return sorted(set(starts))


def target_question(turns: list[Turn] | tuple[Turn, ...]) -> str:
    return f"{render_turns(turns)}\n{TARGET_QUESTION}"


# A target's question and answer from the turns before a recommendation and the titles it names.
Asker = Callable[[Sequence[Turn], list[str]], tuple[str, str]]


def ask_as_question(turns: Sequence[Turn], titles: list[str]) -> tuple[str, str]:
    return target_question(list(turns)), ", ".join(titles)


def probe_asker(style: str) -> Asker:
    """Targets asked exactly as a probe is: the test file's dialog layout ("\\nSystem: …" lines
    ending in the empty reply slot) inside the probe's prompt, answered by a numbered list."""

    def ask(turns: Sequence[Turn], titles: list[str]) -> tuple[str, str]:
        dialog = f"\n{render_turns(list(turns))}\n{SYSTEM}: "
        return build_question(dialog, style), "\n".join(f"{n}. {t}" for n, t in enumerate(titles, 1))

    return ask


def recommendation_qa(conversation: Conversation, window: int, ask: Asker = ask_as_question) -> list[QA]:
    """A QA pair at every recommender turn that names movies not mentioned earlier in the dialog."""
    pairs: list[QA] = []
    mentioned: set[str] = set()
    for i, turn in enumerate(conversation.turns):
        new = [m for m in turn.movies if m.lower() not in mentioned]
        if turn.speaker == SYSTEM and new and i > 0:
            question, answer = ask(conversation.turns[max(0, i - window) : i], new)
            pairs.append(QA(question, (answer,)))
        mentioned.update(m.lower() for m in turn.movies)
    return pairs


def per_gold_item(predictions: list[dict[str, Any]], name: str, k: int, seed: int) -> dict[str, float]:
    """Recall@k under filter ``name``: the mean over gold items, as the paper averages it, with an
    interval that draws whole test points (a reply's gold items share one answer, so they are not
    independent), the unit the leaderboard's paired intervals draw too."""
    hits = {(i, j): float(h) for i, p in enumerate(predictions) for j, h in enumerate(p["hits"][name][str(k)])}
    return cluster_summary(hits, cluster=lambda key: key[0], seed=seed)
