"""MemoryLLM (Wang et al., ICML 2024): knowledge injected into a self-updating memory pool.

- ``memoryllm``: the official checkpoint (``YuWangX/memoryllm-8b``, its own modelling code through
  ``trust_remote_code``) and its ``inject_memory``. It needs the checkpoint in the local Hugging Face
  cache and a CUDA GPU (8B parameters plus a 1.67B-parameter memory pool); otherwise ``bench list``
  shows why and ``bench run`` stops with that reason. Loading the checkpoint runs the Python code
  that comes with it, so, as in transformers, that is off by default: the method's
  ``trust_remote_code`` setting (``--set trust_remote_code=true``, recorded in the result's config)
  allows it. Without it ``bench run`` stops with one line naming the setting before anything of the
  checkpoint is read (the runner has loaded the run's model and data by then: the method first sees
  its parameters when the runner builds it for the first episode).
- ``memoryllm-mini``: the same mechanism re-implemented on the run's model (``methods.memoryllm.mini``),
  with a mechanism trained by ``bench train memoryllm-mini`` (``methods.memoryllm.train``).

Both methods are here; ``mini`` is the memory pool and its update, ``train`` trains it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from benchmark.api import Method
from benchmark.errors import BenchError
from benchmark.models import LM, first_answer_line
from benchmark.registry import register_method
from benchmark.types import Context, Footprint, Prompt
from methods.memoryllm.mini import MemoryPool, PoolConfig, build
from methods.memoryllm.train import (
    TRAIN_PROFILES,
    MiniTrainParams,
    checkpoint_path,
    load_mechanism,
    saved_summary,
    settings_mismatch,
    train_mechanism,
)

log = logging.getLogger(__name__)

OFFICIAL_CHECKPOINT = "YuWangX/memoryllm-8b"


def cached_snapshot(repo_id: str) -> Path | None:
    """The local snapshot folder of a hub repository when its config and weights are cached."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    config = try_to_load_from_cache(repo_id, "config.json")
    if not isinstance(config, str):
        return None
    folder = Path(config).parent
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        return None
    return folder


def official_unavailable_reason(repo_id: str = OFFICIAL_CHECKPOINT) -> str | None:
    problems = []
    if cached_snapshot(repo_id) is None:
        problems.append(f"checkpoint {repo_id} is not in the local Hugging Face cache (hf download {repo_id})")
    if not torch.cuda.is_available():
        problems.append("torch sees no CUDA GPU")
    return " and ".join(problems) or None


@dataclass
class MemoryLLMParams:
    checkpoint: str = OFFICIAL_CHECKPOINT
    # Run the checkpoint's own modelling code (transformers' trust_remote_code): off unless asked for
    trust_remote_code: bool = False
    min_inject_tokens: int = 16  # the official minimum context length for one injection
    max_inject_tokens: int = 512  # longer contexts are injected in pieces

    RANGES: ClassVar[dict[str, str]] = {"min_inject_tokens": ">= 1", "max_inject_tokens": ">= 1"}


def remote_code_refusal(params: MemoryLLMParams) -> str | None:
    """Why these settings may not load the checkpoint: its code runs only with trust_remote_code."""
    if params.trust_remote_code:
        return None
    return (
        f"memoryllm runs the Python code that comes with checkpoint {params.checkpoint} "
        f"(trust_remote_code, off by default); allow it with --set trust_remote_code=true"
    )


@register_method("memoryllm")
class MemoryLLM(Method):
    description = "MemoryLLM: the official 8B checkpoint with its self-updating memory pool (needs a GPU)"
    display_name = "MemoryLLM"
    family = "memory"
    storage_class = "O(1)"
    table_order = 50
    paper_rows = ("MemoryLLM-8B",)
    Params = MemoryLLMParams
    profiles = {"smoke": {}, "quick": {}, "paper": {}}
    _loaded: ClassVar[dict[str, tuple[Any, Any, torch.Tensor, torch.Tensor]]] = {}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return official_unavailable_reason()

    @classmethod
    def params_problem(cls, params: MemoryLLMParams) -> str | None:
        """Why a run with these settings must not start (the remote-code opt-in), or None."""
        return remote_code_refusal(params)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # judged before the machine's checkpoint and GPU, and before anything of the checkpoint loads
        refusal = self.params_problem(self.params)
        if refusal:
            raise BenchError(refusal)
        reason = official_unavailable_reason(self.params.checkpoint)
        if reason:
            raise BenchError(f"memoryllm cannot run here: {reason}")
        self.mem_model, self.mem_tokenizer = self._load(self.params.checkpoint, self.params.trust_remote_code)
        self.model = self.mem_model
        self.stats["injections"] = 0

    @classmethod
    def _load(cls, repo_id: str, trust_remote_code: bool):
        """Load once per process; every episode restores the pool the checkpoint shipped with."""
        if repo_id not in cls._loaded:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(repo_id, local_files_only=True)
                model = AutoModelForCausalLM.from_pretrained(
                    repo_id, trust_remote_code=trust_remote_code, local_files_only=True, dtype=torch.bfloat16
                )
            except Exception as exc:  # remote code written for an older transformers may not import
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise BenchError(f"cannot load {repo_id} with trust_remote_code: {first}") from None
            if not hasattr(model, "inject_memory"):
                raise BenchError(f"{repo_id} loaded as {type(model).__name__}, which has no inject_memory")
            model = model.cuda().eval()
            initial = (model.memory.data.detach().cpu().clone(), model.initialized.detach().cpu().clone())
            cls._loaded[repo_id] = (model, tokenizer, *initial)
        model, tokenizer, memory, initialized = cls._loaded[repo_id]
        model.memory.data.copy_(memory.to(model.memory.device))
        model.initialized.copy_(initialized.to(model.initialized.device))
        return model, tokenizer

    @torch.no_grad()
    def inject(self, contexts: list[Context]) -> None:
        p = self.params
        for context in tqdm(contexts, desc="injecting", leave=False, disable=len(contexts) < 5):
            ids = self.mem_tokenizer(context.text, add_special_tokens=False).input_ids
            for start in range(0, len(ids), p.max_inject_tokens):
                piece = ids[start : start + p.max_inject_tokens]
                if len(piece) < p.min_inject_tokens and start > 0:
                    continue  # a short tail would disturb the memory (the official warning)
                tensor = torch.tensor([piece], device=self.mem_model.device)
                self.mem_model.inject_memory(tensor, update_memory=True)
                self.stats["injections"] += 1

    @torch.no_grad()
    def generate(self, prompts: list[Prompt]) -> list[str]:
        tok, answers = self.mem_tokenizer, []
        for prompt in tqdm(prompts, desc="answering", leave=False, disable=len(prompts) < 2):
            # the model has its own trained bos embeddings: no BOS token (the official usage)
            ids = tok(self.lm.format_prompt(prompt), add_special_tokens=False, return_tensors="pt").input_ids
            ids = ids.to(self.mem_model.device)
            out = self.mem_model.generate(
                input_ids=ids,
                max_new_tokens=prompt.max_new_tokens or self.run.max_new_tokens,
                do_sample=False,
                pad_token_id=tok.eos_token_id,
            )
            text = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
            answers.append(text if prompt.multiline else first_answer_line(text))
        return answers

    def footprint(self) -> Footprint:
        memory = self.mem_model.memory
        size = memory.numel() * memory.element_size()
        return Footprint(
            extra_bytes=size, detail={"memory_pool_bytes": size, "memory_tokens": memory.shape[0] * memory.shape[1]}
        )


@dataclass
class MemoryLLMMiniParams:
    num_tokens: int = 16  # K: memory tokens written and dropped per injection, per layer
    num_blocks: int = 16  # pool = num_blocks x K tokens per layer
    lora_r: int = 8
    # "auto": the mechanism `bench train memoryllm-mini` saved for this model and pool shape;
    # "none": the untrained mechanism (the frozen model reading raw hidden states); or a file path
    checkpoint: str = "auto"
    # The `bench train` profile an "auto" mechanism must have been trained with, setting for setting:
    # the cache keeps one file per model and pool shape, whatever trained it last.
    train_profile: str = "quick"
    max_inject_tokens: int = 256  # longer contexts are injected in pieces

    RANGES: ClassVar[dict[str, str]] = {
        "num_tokens": ">= 1",
        "num_blocks": ">= 1",
        "lora_r": ">= 1",
        "max_inject_tokens": ">= 1",
    }

    def pool_config(self) -> PoolConfig:
        """The pool shape, which also names the trained mechanism's file."""
        return PoolConfig(self.num_tokens, self.num_blocks, lora_r=self.lora_r)


@register_method("memoryllm-mini")
class MemoryLLMMini(Method):
    description = (
        "MemoryLLM-mini, a stand-in for MemoryLLM: a per-layer self-updating memory pool on the run's model "
        "(bench train memoryllm-mini)"
    )
    display_name = "MemoryLLM (mini)"
    stand_in = (
        "MemoryLLM's self-updating memory pool re-implemented on the run's model, its update trained "
        "here (bench train memoryllm-mini); not the published MemoryLLM checkpoint"
    )
    family = "memory"
    storage_class = "O(1)"
    table_order = 60
    Params = MemoryLLMMiniParams
    profiles = {
        "smoke": {"num_tokens": 4, "num_blocks": 4, "lora_r": 2, "checkpoint": "none", "train_profile": "smoke"},
        "quick": {},
        # memoryllm-7b: 30 x 256 tokens per layer
        "paper": {"num_tokens": 256, "num_blocks": 30, "train_profile": "paper"},
    }
    TrainParams = MiniTrainParams
    train_profiles = TRAIN_PROFILES

    @classmethod
    def params_problem(cls, params: MemoryLLMMiniParams) -> str | None:
        if params.train_profile not in TRAIN_PROFILES:
            return f"unknown train_profile {params.train_profile!r}; known: {', '.join(TRAIN_PROFILES)}"
        return None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        p = self.params
        self.pool_config = p.pool_config()
        self.parts, self.mechanism = build(self.model, self.pool_config)
        self.mechanism_file: Path | None = None  # the trained mechanism loaded, and its SHA-256
        self.mechanism_sha256 = ""
        self.trained = self._load_mechanism()
        self.mechanism.eval().requires_grad_(False)
        self.pool = MemoryPool(self.parts, self.mechanism, torch.Generator().manual_seed(self.seed))
        self.stats["injections"] = 0

    def provenance(self) -> dict[str, Any]:
        """The mechanism's file and how it was trained: ``bench train`` keeps it in the cache, and its
        weights differ in rounding between machines (their kernels), so results name the file they used."""
        if self.mechanism_file is None:
            return {"mechanism": "untrained (checkpoint=none)"}
        return {"mechanism": {"file": self.mechanism_file.name, "sha256": self.mechanism_sha256, **self.trained}}

    def _load_mechanism(self) -> dict[str, Any]:
        choice = self.params.checkpoint
        if choice == "none":
            self.mechanism.init_bos(self.parts, self.lm.tokenizer.bos_token_id)
            return {}
        path = checkpoint_path(self.lm.name, self.pool_config) if choice == "auto" else Path(choice)
        if not path.is_file():
            raise BenchError(
                f"no trained memoryllm-mini mechanism for model {self.lm.name!r} at {path}: run "
                f"`bench train memoryllm-mini` (same --model and pool sizes) first, or --set checkpoint=none"
            )
        self.mechanism_file = path
        self.mechanism_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        try:
            summary = load_mechanism(self.mechanism, path)
        except (RuntimeError, KeyError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BenchError(f"{path} does not fit this model and pool shape: {first}") from None
        profile = self.params.train_profile
        differ = settings_mismatch(summary, MiniTrainParams(**TRAIN_PROFILES[profile])) if choice == "auto" else []
        if differ:
            raise BenchError(
                f"the cached memoryllm-mini mechanism {path} was not trained with train profile {profile!r}: "
                f"{', '.join(differ)}; run `bench train memoryllm-mini --profile {profile}` (same --model), "
                f"or --set checkpoint={path} to use it as it is"
            )
        return summary

    @torch.no_grad()
    def inject(self, contexts: list[Context]) -> None:
        for context in tqdm(contexts, desc="injecting", leave=False, disable=len(contexts) < 5):
            ids = self.lm.encode(context.text, add_bos=False)
            for start in range(0, len(ids), self.params.max_inject_tokens):
                with self.lm.autocast():
                    self.pool.inject(torch.tensor(ids[start : start + self.params.max_inject_tokens]))
                self.stats["injections"] += 1

    @torch.no_grad()
    def generate(self, prompts: list[Prompt]) -> list[str]:
        tok, pool = self.lm.tokenizer, self.pool
        with self.lm.autocast():
            caches = pool.prefix_cache(pool.memory)
        start = pool.prefix_length(pool.memory)
        answers = []
        for prompt in tqdm(prompts, desc="answering", leave=False, disable=len(prompts) < 2):
            # the pool's own bos embedding stands for BOS; with an empty pool the model gets a real one
            ids = self.lm.encode(self.lm.format_prompt(prompt), add_bos=pool.memory is None)
            generated: list[int] = []
            with self.lm.answering():
                logits, cache = pool.read(torch.tensor(ids), caches, start)
                position = start + len(ids)
                for _ in range(prompt.max_new_tokens or self.run.max_new_tokens):
                    token = int(logits[-1].argmax())
                    if token == tok.eos_token_id:
                        break
                    generated.append(token)
                    if not prompt.multiline and "\n" in tok.decode(generated).lstrip():
                        break
                    logits, cache = pool.read(torch.tensor([token]), cache, position)
                    position += 1
            text = tok.decode(generated, skip_special_tokens=True)
            answers.append(text if prompt.multiline else first_answer_line(text))
        return answers

    def footprint(self) -> Footprint:
        pool_bytes = self.pool.nbytes()
        params = list(self.mechanism.parameters())
        mech_bytes = sum(t.numel() * t.element_size() for t in params)
        return Footprint(
            extra_bytes=pool_bytes + mech_bytes,
            changed_params=sum(t.numel() for t in params),
            detail={
                "memory_pool_bytes": pool_bytes,
                "mechanism_bytes": mech_bytes,
                "memory_tokens": self.pool_config.pool_size * len(self.parts.layers),
            },
        )

    @classmethod
    def cached_mechanism_problem(cls, lm: LM, params: MemoryLLMMiniParams, train: MiniTrainParams) -> str | None:
        """Why the cache holds no mechanism for this model and pool shape trained with ``train``, or None."""
        path = checkpoint_path(lm.name, params.pool_config())
        if not path.is_file():
            return f"none cached at {path}"
        differ = settings_mismatch(saved_summary(path), train)
        return f"the cached one was trained with {', '.join(differ)}" if differ else None

    @classmethod
    def train_mechanism(cls, lm: LM, params: MemoryLLMMiniParams, train: MiniTrainParams, seed: int) -> dict[str, Any]:
        """What `bench train memoryllm-mini` runs: train and save the mechanism for this model."""
        return train_mechanism(lm, params.pool_config(), train, seed)
