"""The runner: everything generic about a run (config, seeds, resume, timing, result files), and the
one pipeline every episode goes through: build the method, inject, ask, check, score, record.

A task only plans (``Task.plan``: what to inject at each step and what to ask) and scores
(``Task.score``); ``run_episode`` below carries the plan out the same way for every task.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmark.allocator import malloc_record
from benchmark.api import EpisodePlan, Method, Task
from benchmark.checkpoint import RESUME_OVERHEAD, RESUMED_TRAIN, Checkpoints, checkpoint_folder
from benchmark.config import DEFAULT_MODELS, RUN_PROFILES, TASK_SEP, RunParams, build_params
from benchmark.device_info import device_record
from benchmark.errors import BenchError, UnavailableError
from benchmark.method_info import MethodInfo
from benchmark.models import LM, load_lm
from benchmark.models.bf16_matmul import bf16_matmul_policy
from benchmark.peak_memory import peak_rss_bytes, reset_peak_gpu_memory, reset_peak_rss
from benchmark.registry import METHODS, TASKS
from benchmark.results import (
    PartialLog,
    RunLock,
    config_hash,
    git_commit,
    lock_path,
    package_versions,
    partial_path,
    result_path,
    short_commit,
    write_json_atomic,
)
from benchmark.schema import SCHEMA_VERSION, EpisodeRecord, Result, split_scores, with_units
from benchmark.task_info import TaskInfo
from benchmark.threads import omp_wait_policy


@dataclass
class RunRequest:
    """What ``bench run`` was asked for; ``None`` fields take the profile's defaults."""

    method: str
    task: str
    dataset: str | None = None
    model: str | None = None
    profile: str = "quick"
    seed: int = 0
    device: str = "auto"
    overrides: dict[str, str] = field(default_factory=dict)
    out: Path = Path("runs")
    force: bool = False
    # Seconds between training checkpoints inside an injection (0: after every step; None: off).
    # Not part of the run's identity: it changes no result.
    checkpoint_every: float | None = 60.0


@dataclass
class RunOutcome:
    path: Path
    result: dict[str, Any]
    reused: bool  # the finished result file already existed
    resumed_episodes: int  # episodes taken from an interrupted earlier attempt


@dataclass
class ResolvedRun:
    """A request with its classes found, its parameters built and its result file named."""

    request: RunRequest
    method_cls: type[Method]
    task_cls: type[Task]
    dataset: str
    model: str
    params: dict[str, Any]
    identity: dict[str, Any]
    config: dict[str, Any]
    path: Path

    def new_method(self, lm: LM, seed: int) -> Method:
        """A fresh method with the run's settings, its random stream seeded by ``seed``."""
        return self.method_cls(lm, self.params["method"], self.params["run"], seed)


def resolve(request: RunRequest, check_available: bool = True) -> ResolvedRun:
    """Check names, availability and ``--set`` keys; raises ``BenchError`` before any work.

    ``check_available=False`` names the result file without asking whether this machine can run
    the method: a sweep's driver names the files of cells that a cluster's workers check and run.
    """
    method_cls = METHODS.get(request.method)
    task_cls = TASKS.get(request.task)
    for kind, cls in (("method", method_cls), ("task", task_cls)):
        reason = cls.unavailable_reason() if check_available else None
        if reason:
            raise UnavailableError(f"{kind} {cls.name!r} cannot run here: {reason}")
    params = build_run_params(request.profile, request.overrides, method_cls=method_cls, task_cls=task_cls)
    problem = task_cls.method_problem(method_cls) or (
        method_cls.params_problem(params["method"]) if check_available else None
    )
    if problem:
        raise BenchError(problem)
    dataset = request.dataset or task_cls.default_dataset
    model = request.model or DEFAULT_MODELS[request.profile]
    data_file = Path(dataset).resolve() if Path(dataset).is_file() else None
    identity = {
        "task": task_cls.name,
        "method": method_cls.name,
        "dataset": data_file.name if data_file else dataset,
        "model": model,
        "profile": request.profile,
        "seed": request.seed,
    }
    config = {
        **identity,
        "device": request.device,
        "data_file": str(data_file) if data_file else None,
        "params": {scope: dataclasses.asdict(p) for scope, p in params.items()},
    }
    return ResolvedRun(
        request=request,
        method_cls=method_cls,
        task_cls=task_cls,
        dataset=dataset,
        model=model,
        params=params,
        identity=identity,
        config=config,
        path=result_path(request.out, identity, config),
    )


def build_run_params(
    profile: str,
    overrides: Mapping[str, str],
    method_cls: type[Method] | None = None,
    task_cls: type[Task] | None = None,
    extra: Mapping[str, tuple[type, Mapping[str, Any]]] | None = None,
) -> dict[str, Any]:
    """A run's settings by scope: ``run`` (``RunParams``), then ``task`` and ``method`` (their ``Params``)
    when given, then any ``extra`` scope (a method's training settings); each takes the profile's
    values (with a task's ``profile@task`` entry on top), then the ``--set`` overrides."""
    scopes: dict[str, tuple[type, Mapping[str, Any]]] = {"run": (RunParams, RUN_PROFILES)}
    if task_cls is not None:
        scopes["task"] = (task_cls.Params, task_cls.profiles)
    if method_cls is not None:
        scopes["method"] = (method_cls.Params, method_cls.profiles)
    scopes.update(extra or {})
    return build_params(scopes, profile, overrides, task=task_cls.name if task_cls is not None else None)


def load_run_lm(model: str, run: RunParams, device: str = "auto", seed: int = 0) -> LM:
    """The base model of a run: on ``device``, with the run's precision, prompt format and demonstrations
    (``seed`` initialises the tiny test model)."""
    return load_lm(
        model, device=device, precision=run.precision, prompt_format=run.prompt_format, seed=seed, fewshot=run.fewshot
    )


def set_up(resolved: ResolvedRun, lm: LM | None = None) -> tuple[LM, Task]:
    """How every run starts: the random state seeded, the base model loaded (unless given) and the
    task's data loaded and checked against it (every data error is raised here, before any work)."""
    request, run_params = resolved.request, resolved.params["run"]
    seed_everything(request.seed)
    if lm is None:
        lm = load_run_lm(resolved.model, run_params, request.device, request.seed)
    task = resolved.task_cls(resolved.params["task"], run_params, resolved.dataset, run_params.data_path, request.seed)
    task.prepare(lm)
    return lm, task


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def episode_seed(seed: int, episode: str) -> int:
    """A seed per episode, so a resumed episode is computed exactly as the first attempt would."""
    return zlib.crc32(f"{seed}:{episode}".encode())


def run(request: RunRequest, lm: LM | None = None) -> RunOutcome:
    """Run (or resume, or reuse) one method on one task; returns the result and its file.

    The result file's lock is taken before the model loads, so a second identical run stops at once;
    it is released however the run ends (finished, failed, Ctrl-C, SIGTERM).
    """
    resolved = resolve(request)
    finished = reuse(resolved.path, request.force)
    if finished:
        return finished
    with RunLock(lock_path(resolved.path), resolved.path):
        # a run that held the lock a moment ago may have just finished the file
        return reuse(resolved.path, request.force) or compute(resolved, lm)


def reuse(path: Path, force: bool) -> RunOutcome | None:
    """The finished result file, unless absent or ``--force``."""
    if force or not path.exists():
        return None
    import json

    return RunOutcome(path, json.loads(path.read_text()), reused=True, resumed_episodes=0)


def compute(resolved: ResolvedRun, lm: LM | None) -> RunOutcome:
    """Load the model and data, run the pending episodes into the partial log, write the result."""
    with bf16_matmul_policy() as bf16_kernel:  # fast bf16 products on CPUs without bf16 instructions
        return _compute(resolved, lm, bf16_kernel)


def _compute(resolved: ResolvedRun, lm: LM | None, bf16_kernel: str) -> RunOutcome:
    request, path = resolved.request, resolved.path
    commit = git_commit()  # the code this process runs: read before any work, not at the end
    # This run's own peak memory, not that of whatever ran before it in the process.
    peak_rss_scope = "run" if reset_peak_rss() else "process"
    reset_peak_gpu_memory()
    lm, task = set_up(resolved, lm)

    log = PartialLog(partial_path(path), {"config_hash": config_hash(resolved.config), "git_commit": commit})
    checkpoints = Checkpoints(checkpoint_folder(path), config_hash(resolved.config), request.checkpoint_every)
    if request.force:
        checkpoints.remove_all()
    done = [] if request.force else log.load()
    if log.other_commit is not None:
        # Episodes and checkpoints of other code would be mixed into this code's result under one commit.
        checkpoints.remove_all()  # the partial log is rewritten below, without its episodes
        print(
            f"partial log of {path.name} was written at commit {log.other_commit}, this checkout is "
            f"{short_commit(commit)}: starting the cell over",
            file=sys.stderr,
        )
    done_ids = {r["episode"] for r in done}
    episodes = task.episodes()
    log.start([r for r in done if r["episode"] in episodes])
    started = datetime.now(UTC)
    pending = [e for e in episodes if e not in done_ids]
    bar = tqdm(
        pending,
        desc=f"{resolved.method_cls.name} on {resolved.task_cls.name}",
        unit="episode",
        disable=len(episodes) < 2,
        file=sys.stderr,
    )
    methods = MethodPool(resolved, lm, checkpoints, rebuilt=rebuilt_after_resume(task, episodes, done_ids))
    records = list(done)
    for episode in bar:
        seed_everything(episode_seed(request.seed, episode))
        tick = time.perf_counter()
        record = run_episode(task, episode, methods)
        record["cost"]["wall_s"] = uninterrupted_seconds(time.perf_counter() - tick, record["cost"])
        log.append(record)
        checkpoints.remove_stream(episode)
        records.append(record)
    order = {e: i for i, e in enumerate(episodes)}
    records.sort(key=lambda r: order[r["episode"]])
    # The task's aggregate as flat summaries plus details (``nested_scores`` gives it back), and each
    # episode with its per-unit scores: the same conversion that reads schema-1 files.
    scores, details = split_scores(task.aggregate(records))

    result: Result = {
        "schema_version": SCHEMA_VERSION,
        "task": resolved.identity["task"],
        "method": resolved.identity["method"],
        "dataset": resolved.identity["dataset"],
        "model": resolved.identity["model"],
        "profile": resolved.identity["profile"],
        "seed": resolved.identity["seed"],
        # What tables show of the method (row name, storage class S, order, role), so they need not import it.
        "method_info": MethodInfo.of_class(resolved.method_cls).record(),
        # What tables know of the task's scores (labels, the primary one, units, curves), likewise.
        "task_info": TaskInfo.of_class(resolved.task_cls).record(),
        "config": resolved.config,
        "overrides": dict(request.overrides),
        # Which profile entries set the defaults: a task-specific one ("quick@sequential") on top.
        "profile_entries": {
            scope: [
                k for k in (request.profile, f"{request.profile}{TASK_SEP}{resolved.task_cls.name}") if k in profiles
            ]
            for scope, profiles in (
                ("run", RUN_PROFILES),
                ("task", resolved.task_cls.profiles),
                ("method", resolved.method_cls.profiles),
            )
        },
        "model_info": {
            **lm.info,
            "max_length": lm.max_length,
            "prompt_format": lm.prompt_format,
            "fewshot": lm.fewshot,
        },
        "versions": package_versions(),
        # What the cost figures depend on beyond the code: CPU threads, how idle ones wait, the malloc,
        # the bf16 matrix-product kernel.
        "threads": {
            "torch": torch.get_num_threads(),
            "omp_wait_policy": omp_wait_policy(),
            **malloc_record(),
            "bf16_matmul": bf16_kernel,  # how bf16 CPU products ran: "native" or "fp32 products"
        },
        "device": device_record(lm.device),
        "git_commit": commit,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "scores": scores,
        "details": details,
        "cost": {**total_cost(records), "peak_rss_scope": peak_rss_scope},
        "episodes": [cast(EpisodeRecord, with_units(r)) for r in records],
    }
    distinct = sorted({json.dumps(r["provenance"], sort_keys=True) for r in records if r.get("provenance")})
    if distinct:  # what the method loaded from outside the repository, once per distinct value
        result["method_provenance"] = [json.loads(p) for p in distinct]
    if (at_end := git_commit()) != commit:
        # Files imported late (a task's data module, a lazily loaded method) may come from either.
        result["git_commit_at_end"] = at_end
        print(
            f"warning: the checkout changed during the run ({commit} at the start, {at_end} at the end); "
            "the result records both",
            file=sys.stderr,
        )
    write_json_atomic(path, result)
    log.remove()
    checkpoints.remove_all()
    return RunOutcome(path, dict(result), reused=False, resumed_episodes=len(done_ids & set(episodes)))


def uninterrupted_seconds(seconds: float, cost: Mapping[str, Any]) -> float:
    """What an uninterrupted run would have spent of ``seconds`` that include the episode's resume
    costs (``cost``, as ``episode_cost`` makes it): without its ``resume_overhead_s``, with its
    ``resumed_train_s`` (the keys' meaning is in ``benchmark.checkpoint``)."""
    return seconds - float(cost.get(RESUME_OVERHEAD, 0.0)) + float(cost.get(RESUMED_TRAIN, 0.0))


def rebuilt_after_resume(task: Task, episodes: list[str], done_ids: set[str]) -> set[str]:
    """Pending episodes that an uninterrupted run would have given the method of the episode just
    before them (same method key), but that must build it again because that episode was done by
    an earlier attempt, whose record already holds the key's setup injection."""
    keys = [task.method_key(e) for e in episodes]
    return {
        e
        for (before, key_before), (e, key) in zip(zip(episodes, keys), zip(episodes[1:], keys[1:]))
        if before in done_ids and e not in done_ids and key == key_before
    }


class MethodPool:
    """The method of each episode: a fresh one per method key (``Task.method_key``), its random
    stream and checkpoints named by that key. Only the last key's method is kept, so a shared one
    lives while consecutive episodes use it. ``rebuilt``: episodes whose fresh method repeats a setup
    already counted (see ``rebuilt_after_resume``)."""

    def __init__(
        self,
        resolved: ResolvedRun,
        lm: LM,
        checkpoints: Checkpoints | None = None,
        rebuilt: set[str] | None = None,
    ) -> None:
        self.resolved, self.lm, self.checkpoints = resolved, lm, checkpoints
        self.rebuilt = rebuilt or set()
        self.key: str | None = None
        self.method: Method | None = None

    def get(self, key: str) -> tuple[Method, bool]:
        """The key's method and whether it was just built (so it still needs its setup injection)."""
        if self.method is not None and key == self.key:
            return self.method, False
        self.method = None  # let the previous one go before the next is built
        method = self.resolved.new_method(self.lm, episode_seed(self.resolved.request.seed, key))
        if self.checkpoints is not None:
            method.checkpoints = self.checkpoints.for_stream(key)
        self.key, self.method = key, method
        return method, True


@dataclass
class StartedEpisode:
    """An episode's method and plan after its setup; ``stats_before`` are the method's counters
    before it (empty for a method just built), so the episode records only what it added."""

    method: Method
    plan: EpisodePlan
    fresh: bool  # built for this episode, and so set up by it
    stats_before: dict[str, Any]
    repeated_setup: bool = False  # its setup repeats one an earlier attempt recorded: not counted again


def start_episode(task: Task, episode: str, methods: MethodPool, watch: Stopwatch) -> StartedEpisode:
    """The episode's method and plan, with the plan's setup injected into a method just built.

    A shared method is set up under its key's seed, so its injection is the same whichever
    episode builds it. Rebuilt on resume after an episode that recorded its setup, the setup's
    seconds go to ``resume_overhead_s`` and its counters are left out, so that the run's totals
    equal an uninterrupted run's.
    """
    key = task.method_key(episode)
    method, fresh = methods.get(key)
    before = {} if fresh else dict(method.stats)
    plan = task.plan(episode, method)
    repeated = fresh and bool(plan.setup) and episode in methods.rebuilt
    if fresh and plan.setup:
        if key != episode:
            seed_everything(episode_seed(methods.resolved.request.seed, key))
        with watch(RESUME_OVERHEAD if repeated else "inject_s"):
            method.inject(plan.setup)
        if repeated:
            before = dict(method.stats)
    return StartedEpisode(method, plan, fresh, before, repeated)


def run_episode(task: Task, episode: str, methods: MethodPool) -> dict[str, Any]:
    """Carry out one episode's plan: set up the method, then per step inject, ask and score.

    Records the seconds spent injecting, answering and scoring, the method's own counters (what
    this episode added, for a shared method), what was injected, and the footprint after each step
    and at the end. A method that returns a wrong number of answers stops the run.
    """
    watch = Stopwatch()
    started = start_episode(task, episode, methods, watch)
    method, plan, before = started.method, started.plan, started.stats_before
    injected = list(plan.setup) if started.fresh and not started.repeated_setup else []
    steps: list[dict[str, Any]] = []
    for step in plan.steps:
        if step.inject:
            with watch("inject_s"):
                method.inject(step.inject)
            injected += step.inject
        with watch("eval_s"):
            answers = method.answer(step.prompts)
        if len(answers) != len(step.prompts):
            raise RuntimeError(f"{method.name} returned {len(answers)} answers for {len(step.prompts)} prompts")
        with watch("score_s"):
            scored = task.score(step, answers)
        steps.append({**step.info, **scored, "footprint_bytes": method.footprint().extra_bytes})
    footprint = method.footprint()
    stats = {k: v - before.get(k, 0) if isinstance(v, (int, float)) else v for k, v in method.stats.items()}
    record: dict[str, Any] = {"episode": episode, **task.episode_record(plan, steps)}
    if injected:
        record.update(num_contexts=len(injected), num_targets=sum(len(c.targets) for c in injected))
    record["cost"] = episode_cost(watch.seconds, stats)
    record["footprint"] = {
        "extra_bytes": footprint.extra_bytes,
        "changed_params": footprint.changed_params,
        **footprint.detail,
    }
    if provenance := method.provenance():
        record["provenance"] = provenance
    return record


def episode_cost(seconds: dict[str, float], stats: dict[str, Any]) -> dict[str, Any]:
    """An episode's cost: the stopwatch's ``seconds`` and what the method's counters (``stats``) added.

    A method that resumed an injection from a checkpoint counts, in ``stats``, the seconds of its
    replay (``resume_overhead_s``) and the killed attempt's training seconds up to the checkpoint
    (``resumed_train_s``; see ``TrainedMethod.record``). The ``inject_s`` stopwatch timed the first
    and missed the second: both are moved here, so that ``inject_s`` is an uninterrupted run's, and
    ``resume_overhead_s`` adds the stopwatch's own (a repeated setup). ``wall_s`` takes the same
    (``uninterrupted_seconds``).
    """
    cost = {**seconds, **stats}
    if RESUME_OVERHEAD in seconds or RESUME_OVERHEAD in stats:
        cost[RESUME_OVERHEAD] = seconds.get(RESUME_OVERHEAD, 0.0) + stats.get(RESUME_OVERHEAD, 0.0)
    if "inject_s" in seconds:
        cost["inject_s"] = uninterrupted_seconds(seconds["inject_s"], stats)
    return cost


class Stopwatch:
    """Accumulates wall seconds under named keys: ``with watch("inject_s"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start


def total_cost(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Run-level cost from the episodes: seconds, training tokens and throughput, memory, storage."""
    sums: dict[str, float] = {}
    for record in records:
        for key, value in record.get("cost", {}).items():
            if isinstance(value, (int, float)):
                sums[key] = sums.get(key, 0) + value
    train_s = sums.get("train_s", 0.0)
    footprints = [r.get("footprint", {}) for r in records]
    return {
        **sums,
        "train_tokens_per_s": sums.get("train_tokens", 0) / train_s if train_s else None,
        # Every example's whole sequence (a prefix shared by a batch once per example it serves).
        "train_example_tokens_per_s": sums.get("train_example_tokens", 0) / train_s if train_s else None,
        "peak_rss_bytes": peak_rss_bytes(),
        "footprint_bytes": max((f.get("extra_bytes", 0) for f in footprints), default=0),
        "changed_params": max((f.get("changed_params", 0) for f in footprints), default=0),
    }
