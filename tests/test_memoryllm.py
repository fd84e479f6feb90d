"""MemoryLLM: the unavailable path of the official checkpoint, its remote-code opt-in, and
memoryllm-mini's memory pool."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch

from benchmark.config import RunParams
from benchmark.errors import BenchError
from benchmark.results import git_commit
from benchmark.types import Context, Prompt
from methods import memoryllm as memoryllm_module
from methods.memoryllm import MemoryLLM, MemoryLLMMini, MemoryLLMMiniParams, MemoryLLMParams
from methods.memoryllm.mini import MemoryPool, PoolConfig, build


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model runs many small operations: one thread avoids thread hand-offs that dominate
    on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_official_checkpoint_unavailable_reason_names_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(memoryllm_module, "cached_snapshot", lambda repo: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = MemoryLLM.unavailable_reason()
    assert "YuWangX/memoryllm-8b" in reason and "not in the local Hugging Face cache" in reason
    assert "no CUDA GPU" in reason

    monkeypatch.setattr(memoryllm_module, "cached_snapshot", lambda repo: tmp_path)
    assert "cache" not in MemoryLLM.unavailable_reason()  # only the GPU is missing now
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert MemoryLLM.unavailable_reason() is None


def test_bench_list_and_run_show_the_one_line_reason(bench, monkeypatch, tmp_path):
    monkeypatch.setattr(memoryllm_module, "cached_snapshot", lambda repo: None)
    code, out, _ = bench("list")
    assert code == 0
    line = next(row for row in out.splitlines() if row.startswith("memoryllm "))
    assert "no: checkpoint YuWangX/memoryllm-8b is not in the local Hugging Face cache" in line

    code, out, err = bench("run", "--method", "memoryllm", "--task", "batch", "--profile", "smoke", "--out", tmp_path)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "method 'memoryllm' cannot run here: checkpoint YuWangX/memoryllm-8b" in err
    assert not list(tmp_path.rglob("*.json*"))


REMOTE_CODE_LINE = (
    "bench: error: memoryllm runs the Python code that comes with checkpoint YuWangX/memoryllm-8b "
    "(trust_remote_code, off by default); allow it with --set trust_remote_code=true"
)


@pytest.fixture
def machine_can_run(monkeypatch, tmp_path):
    """This machine has the checkpoint and a GPU, as far as memoryllm's availability checks can tell;
    every call to the two ``from_pretrained`` for the checkpoint is recorded (and the model's stops
    the load); the run's own model loads as usual."""
    import transformers

    monkeypatch.setattr(memoryllm_module, "cached_snapshot", lambda repo: tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(MemoryLLM, "_loaded", {})
    calls: list[tuple[str, str, dict]] = []
    real_tokenizer = transformers.AutoTokenizer.from_pretrained
    real_model = transformers.AutoModelForCausalLM.from_pretrained

    def tokenizer(repo_id, *args, **kwargs):
        if repo_id != memoryllm_module.OFFICIAL_CHECKPOINT:
            return real_tokenizer(repo_id, *args, **kwargs)
        calls.append(("tokenizer", repo_id, kwargs))
        return object()

    def model(repo_id, *args, **kwargs):
        if repo_id != memoryllm_module.OFFICIAL_CHECKPOINT:
            return real_model(repo_id, *args, **kwargs)
        calls.append(("model", repo_id, kwargs))
        raise OSError("the fake checkpoint stops here")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tokenizer)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model)
    return calls


def test_remote_code_is_off_by_default_and_recorded_in_the_config(monkeypatch):
    from benchmark.runner import RunRequest, resolve

    assert MemoryLLMParams().trust_remote_code is False
    assert "--set trust_remote_code=true" in MemoryLLM.params_problem(MemoryLLMParams())
    assert MemoryLLM.params_problem(MemoryLLMParams(trust_remote_code=True)) is None
    for overrides, expected in (
        ({}, False),
        ({"trust_remote_code": "true"}, True),
        ({"method.trust_remote_code": "yes"}, True),
        ({"trust_remote_code": "off"}, False),
    ):
        request = RunRequest(method="memoryllm", task="batch", profile="smoke", overrides=overrides)
        config = resolve(request, check_available=False).config
        assert config["params"]["method"]["trust_remote_code"] is expected
    monkeypatch.setattr(MemoryLLM, "unavailable_reason", classmethod(lambda cls: None))
    with pytest.raises(BenchError, match="trust_remote_code"):  # before the model or data load
        resolve(RunRequest(method="memoryllm", task="batch", profile="smoke"))


def test_the_opt_in_is_judged_before_the_checkpoint_is_looked_for(tiny_lm, monkeypatch):
    """Even where the checkpoint is missing, a run without the opt-in names the opt-in first."""
    monkeypatch.setattr(memoryllm_module, "cached_snapshot", lambda repo: None)
    with pytest.raises(BenchError, match=r"trust_remote_code.*--set trust_remote_code=true"):
        MemoryLLM(tiny_lm, MemoryLLMParams(), RunParams(precision="fp32"))
    with pytest.raises(BenchError, match="not in the local Hugging Face cache"):  # opted in: the next check
        MemoryLLM(tiny_lm, MemoryLLMParams(trust_remote_code=True), RunParams(precision="fp32"))


def test_bench_run_without_the_opt_in_stops_before_loading_the_checkpoint(bench, machine_can_run, tmp_path):
    code, out, err = bench(
        "run",
        "--method",
        "memoryllm",
        "--task",
        "batch",
        "--profile",
        "smoke",
        "--set",
        "episodes=1",
        "--device",
        "cpu",
        "--out",
        tmp_path,
    )
    assert code == 2, err
    assert err.strip().splitlines() == [REMOTE_CODE_LINE]
    assert machine_can_run == []  # neither the tokenizer nor the model was asked for
    assert not list(tmp_path.rglob("*__*.json"))  # no result file


def test_bench_run_with_the_opt_in_passes_it_to_from_pretrained(bench, machine_can_run, tmp_path):
    code, out, err = bench(
        "run",
        "--method",
        "memoryllm",
        "--task",
        "batch",
        "--profile",
        "smoke",
        "--set",
        "episodes=1",
        "--set",
        "trust_remote_code=true",
        "--device",
        "cpu",
        "--out",
        tmp_path,
    )
    assert code == 2, err  # the fake checkpoint stops the load
    assert err.strip().splitlines() == [
        "bench: error: cannot load YuWangX/memoryllm-8b with trust_remote_code: the fake checkpoint stops here"
    ]
    model_calls = [kwargs for kind, repo, kwargs in machine_can_run if kind == "model"]
    assert [repo for kind, repo, _ in machine_can_run] == ["YuWangX/memoryllm-8b"] * 2
    assert len(model_calls) == 1
    assert model_calls[0]["trust_remote_code"] is True and model_calls[0]["local_files_only"] is True


def test_load_passes_the_setting_as_given(machine_can_run):
    """``_load`` forwards the setting, never a literal True."""
    with pytest.raises(BenchError):
        MemoryLLM._load("YuWangX/memoryllm-8b", False)
    assert machine_can_run[-1][0] == "model" and machine_can_run[-1][2]["trust_remote_code"] is False


def _pool(tiny_lm, k: int = 4, blocks: int = 4, seed: int = 0) -> MemoryPool:
    parts, mechanism = build(tiny_lm.model, PoolConfig(k, blocks, lora_r=2))
    mechanism.init_bos(parts, tiny_lm.tokenizer.bos_token_id)
    return MemoryPool(parts, mechanism, torch.Generator().manual_seed(seed))


def _ids(tiny_lm, text: str) -> torch.Tensor:
    return torch.tensor(tiny_lm.encode(text, add_bos=False))


def test_pool_keeps_its_size_and_replaces_k_random_tokens_per_injection(tiny_lm):
    k, blocks = 4, 4
    pool = _pool(tiny_lm, k, blocks)
    n_layers, n = len(tiny_lm.model.model.layers), k * blocks
    pool.inject(_ids(tiny_lm, "The first context is about a town called Orvik by the sea."))
    assert pool.memory.shape == (n_layers, n, tiny_lm.model.config.hidden_size)
    drops = []
    for step in range(3):
        old = pool.memory.clone()
        ids = _ids(tiny_lm, f"Context number {step} says the river Sela flows past the mill.")
        expected_new = pool.delta(ids, old)
        pool.inject(ids)
        assert pool.memory.shape == old.shape  # constant size
        assert pool.last_dropped.shape == (n_layers, k)  # K dropped in every layer
        for layer in range(n_layers):
            dropped = set(pool.last_dropped[layer].tolist())
            kept = [i for i in range(n) if i not in dropped]
            assert len(kept) == n - k
            torch.testing.assert_close(pool.memory[layer, : n - k], old[layer, kept])  # order kept
        torch.testing.assert_close(pool.memory[:, n - k :], expected_new)  # the K new tokens last
        drops.append(pool.last_dropped.clone())
    assert pool.injections == 4
    assert any(not torch.equal(d[0], d[1]) for d in drops)  # layers drop independently
    assert not torch.equal(drops[0], drops[1])  # and differently at each injection


def test_the_stream_check_reads_each_question_from_one_shared_pool_and_leaves_training_as_it_was(tiny_lm, monkeypatch):
    import methods.memoryllm.train as memoryllm_train

    pool = _pool(tiny_lm)
    texts = [f"Person {i} lives in the town of Orvik{i} and keeps {i} goats." for i in range(9)]
    examples = [
        (memoryllm_train.Sample(_ids(tiny_lm, t), _ids(tiny_lm, "Question: Where? Answer: Orvik"), 4), [])
        for t in texts
    ]
    read: list[torch.Tensor] = []
    real_loss = memoryllm_train.answer_loss

    def spy(stream_pool, memory, sample):
        read.append(memory.clone())
        return real_loss(stream_pool, memory, sample)

    monkeypatch.setattr(memoryllm_train, "answer_loss", spy)
    drops_before = pool.generator.get_state().clone()
    out = memoryllm_train.evaluate_stream(tiny_lm, pool, examples)
    assert len(read) == 9 and len(out["answer_loss_by_8"]) == 2  # 8 injections, then 1
    k = pool.cfg.num_tokens
    torch.testing.assert_close(read[0][:, :k], read[0][:, -k:])  # the first fills the pool by repeating
    assert not torch.equal(read[1][:, :k], read[1][:, -k:])  # the second lands in that same pool
    assert torch.equal(pool.generator.get_state(), drops_before)  # training's drops are untouched
    assert pool.memory is None and pool.injections == 0


def test_queries_attend_to_the_pool(tiny_lm):
    pool = _pool(tiny_lm)
    pool.inject(_ids(tiny_lm, "Lena Hart is a baker who lives in the city of Orvik."))
    question = _ids(tiny_lm, "Question: Where does Lena Hart live? Answer:")
    start = pool.prefix_length(pool.memory)
    with torch.no_grad():
        first, _ = pool.read(question, pool.prefix_cache(pool.memory), start)
        other = pool.memory.clone()
        other[:, :4] = torch.randn_like(other[:, :4])
        second, _ = pool.read(question, pool.prefix_cache(other), start)
        empty, _ = pool.read(question, pool.prefix_cache(None), 0)
    assert not torch.allclose(first, second)
    assert not torch.allclose(first, empty)


def test_mini_method_injects_answers_and_reports_its_footprint(tiny_lm):
    params = MemoryLLMMiniParams(num_tokens=4, num_blocks=4, lora_r=2, checkpoint="none")
    method = MemoryLLMMini(tiny_lm, params, RunParams(precision="fp32", max_new_tokens=3), seed=0)
    method.inject(
        [
            Context("a", "Tomas Ferrow owns a red kayak and a small dog called Pip."),
            Context("b", "The Kessel bridge was built in 1874 from grey stone."),
        ]
    )
    answers = method.generate([Prompt("a", "What is the name of Tomas Ferrow's dog?")])
    assert len(answers) == 1 and isinstance(answers[0], str)
    footprint = method.footprint()
    layers = len(tiny_lm.model.model.layers)
    assert footprint.detail["memory_pool_bytes"] == layers * 16 * tiny_lm.model.config.hidden_size * 4
    assert footprint.extra_bytes > footprint.detail["memory_pool_bytes"]
    assert method.stats["injections"] == 2


def test_the_result_file_records_which_mechanism_answered(tmp_path):
    from benchmark.runner import RunRequest, run

    outcome = run(RunRequest(method="memoryllm-mini", task="sequential", profile="smoke", out=tmp_path))
    assert outcome.result["method_provenance"] == [{"mechanism": "untrained (checkpoint=none)"}]
    episodes = outcome.result["episodes"]
    assert len(episodes) > 1 and all(e["provenance"] == {"mechanism": "untrained (checkpoint=none)"} for e in episodes)
    plain = run(RunRequest(method="base_q", task="sequential", profile="smoke", out=tmp_path)).result
    assert "method_provenance" not in plain and not any("provenance" in e for e in plain["episodes"])


def test_mini_without_a_trained_mechanism_says_how_to_get_one(tiny_lm, monkeypatch, tmp_path):
    import methods.memoryllm.train as memoryllm_train

    monkeypatch.setattr(memoryllm_train, "cache_dir", lambda: tmp_path)
    params = MemoryLLMMiniParams(num_tokens=4, num_blocks=4, lora_r=2, checkpoint="auto")
    with pytest.raises(BenchError, match="bench train memoryllm-mini"):
        MemoryLLMMini(tiny_lm, params, RunParams(precision="fp32"), seed=0)


def test_bench_train_saves_a_mechanism_that_run_loads(bench, tiny_lm, monkeypatch, tmp_path):
    import methods.memoryllm.train as memoryllm_train

    monkeypatch.setattr(memoryllm_train, "cache_dir", lambda: tmp_path)  # models stay where they are
    code, out, err = bench("train", "memoryllm-mini", "--profile", "smoke", "--model", "tiny-random-llama")
    assert code == 0, err
    assert '"steps": 2' in out and "heldout_after" in out and "heldout_stream_after" in out
    saved = list((tmp_path / "trained" / "memoryllm-mini").glob("*.pt"))
    assert len(saved) == 1
    params = MemoryLLMMiniParams(num_tokens=4, num_blocks=4, lora_r=2, checkpoint="auto", train_profile="smoke")
    method = MemoryLLMMini(tiny_lm, params, RunParams(precision="fp32"), seed=0)
    assert method.trained["steps"] == 2 and method.trained["git_commit"] == git_commit()
    recorded = method.provenance()["mechanism"]  # which file, and how it was trained
    assert recorded["sha256"] == hashlib.sha256(saved[0].read_bytes()).hexdigest()
    assert (recorded["file"], recorded["steps"], recorded["train"]["max_minutes"]) == (saved[0].name, 2, 1.0)
    assert any(float(p.abs().sum()) > 0 for name, p in method.mechanism.named_parameters() if name.endswith(".b"))

    code, _, err = bench("train", "base_q", "--profile", "smoke")
    assert code == 2 and "has nothing to train" in err


def test_mini_refuses_a_cached_mechanism_trained_with_other_settings(bench, tiny_lm, monkeypatch, tmp_path):
    """The cache keeps one mechanism per model and pool shape, whatever trained it last (an
    experiment with other settings, an older profile): "auto" must not pick that up silently."""
    import methods.memoryllm.train as memoryllm_train

    monkeypatch.setattr(memoryllm_train, "cache_dir", lambda: tmp_path)
    code, _, err = bench("train", "memoryllm-mini", "--profile", "smoke", "--model", "tiny-random-llama")
    assert code == 0, err
    quick = MemoryLLMMiniParams(num_tokens=4, num_blocks=4, lora_r=2, checkpoint="auto", train_profile="quick")
    with pytest.raises(BenchError, match=r"steps=2 \(expected 150\).*bench train memoryllm-mini --profile quick"):
        MemoryLLMMini(tiny_lm, quick, RunParams(precision="fp32"), seed=0)
    (saved,) = (tmp_path / "trained" / "memoryllm-mini").glob("*.pt")
    explicit = dataclasses.replace(quick, checkpoint=str(saved))  # a file named on purpose is used as it is
    assert MemoryLLMMini(tiny_lm, explicit, RunParams(precision="fp32"), seed=0).trained["steps"] == 2
    assert MemoryLLMMini.params_problem(dataclasses.replace(quick, train_profile="fast")) == (
        "unknown train_profile 'fast'; known: smoke, quick, paper"
    )


@pytest.mark.parametrize("profile", ["quick", "paper"])
def test_scored_profiles_train_the_mechanism_for_steps_not_minutes(profile):
    """A wall-time cap would make how much the mechanism is trained depend on the machine."""
    from methods.memoryllm.train import TRAIN_PROFILES, MiniTrainParams

    params = MiniTrainParams(**TRAIN_PROFILES[profile])
    assert params.max_minutes == 0 and params.steps >= 150


def test_warm_up_raises_the_learning_rate_linearly_then_holds_it():
    from methods.memoryllm.train import MiniTrainParams, warmed_up_lr

    p = MiniTrainParams(lr=1e-3, warmup_steps=4)
    assert [warmed_up_lr(p, s) for s in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert warmed_up_lr(MiniTrainParams(lr=1e-3), 0) == 1e-3  # no warm-up: lr from the first step


def test_bench_train_if_needed_trains_only_what_the_cache_lacks(bench, monkeypatch, tmp_path):
    import methods.memoryllm.train as memoryllm_train

    monkeypatch.setattr(memoryllm_train, "cache_dir", lambda: tmp_path)
    args = ("train", "all", "--if-needed", "--profile", "smoke", "--model", "tiny-random-llama")
    code, out, err = bench(*args)
    assert code == 0, err
    assert "memoryllm-mini: training (none cached at" in out and '"steps": 2' in out
    (saved,) = (tmp_path / "trained" / "memoryllm-mini").glob("*.pt")
    first = saved.read_bytes()
    code, out, err = bench(*args)
    assert code == 0 and "already holds a mechanism trained with these settings" in out and "steps" not in out
    assert saved.read_bytes() == first
    code, out, err = bench(*args, "--set", "steps=3")
    assert code == 0 and "trained with steps=2 (expected 3)" in out and '"steps": 3' in out
