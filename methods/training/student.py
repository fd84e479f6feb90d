"""The student: a trainable copy of the base model (LoRA through ``peft``, full or MLP-only), what it
stores, and its LM head run on selected hidden states only."""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch

from benchmark.errors import BenchError
from benchmark.models import LM
from benchmark.types import Footprint
from methods.training.compiled_layers import compile_decoder_layers
from methods.training.lora_forward import use_short_lora_forward

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TrainParams:
    """How the student is parameterised and optimised (the official code's values by default)."""

    params: str = "lora"  # lora | full | mlp
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = LORA_TARGETS
    # LoRA only: the share of decoder layers, counted from the top, that get adapters (1.0 = all,
    # as the official code). Nothing below the lowest adapted layer trains, so the backward pass
    # stops there: fewer operations a step, at the cost of what only lower layers could learn.
    lora_depth: float = 1.0
    # Under lora_depth < 1: keep the output of the layers below the lowest adapter per token
    # sequence, up to this many MiB, and run only the layers above in the student's passes and in
    # those of a teacher sharing those weights (the current model's frozen copy), so that an
    # example trained on every epoch, or read by both, runs the frozen layers once (``frozen_layers``;
    # the same function). 0 = every pass runs every layer.
    frozen_layer_cache_mb: int = 512
    lr: float = 2e-5
    weight_decay: float = 0.01  # AdamW's default, as in the official code
    schedule: str = "constant"  # constant | linear (decay to zero over the run)
    epochs: int = 50
    batch_size: int = 1  # examples per optimizer step
    max_grad_norm: float = 0.0  # 0 = no clipping
    frozen_bf16: bool = True  # store frozen student weights in bf16 under bf16-autocast
    # The student's attention kernel in training: on CPU, "eager" is ~10% faster than "sdpa" for
    # the short sequences trained on here (its backward pass is plain matmuls), sdpa faster and far
    # smaller for long ones (conversations). "" keeps the model's own. Answers always go through
    # the base model's kernel (``attention_kernel``).
    attn_implementation: str = "eager"
    # A forward+backward pass whose longest example has more than this many tokens trains with
    # sdpa attention whatever ``attn_implementation`` says; 0 = never. Eager keeps an (L, L) score
    # map per head and layer for backward, so its memory grows with tokens x L: at a 2048-token
    # pass, by estimate ~0.85 GB of maps at L = 256, 2.2 GB at 658 (the longest SQuAD test
    # paragraph, where FT(C) and PRAG went over 4 GiB; measured: README, Memory). Shorter passes
    # (the fictional set's QA examples; not PRAG's long rewrites) keep eager and train as before.
    # The same function either way: only float rounding differs.
    sdpa_above_tokens: int = 256
    # Training examples whose unscored parts start with the same tokens, at least this many, run
    # the longest prefix they share once and share its key/value cache (the demonstrations before
    # each question, also when the loss is on the answer alone); 0 = off (a ~17-token prefix ran
    # no faster shared on a CPU; a ~50-token one saves about a quarter of the step time).
    share_prefix: int = 0
    # The LM head, log-softmax and loss run on at most this many scored rows at a time, and a batch
    # with more rows recomputes each chunk's logits in the backward pass: with a 49k vocabulary,
    # fp32 logits cost ~200 KB a row, several copies of them kept for backward, so a batch of long
    # examples scored at every token (context suffixes) would otherwise hold gigabytes. 0 = off.
    # 256, not 1024: the blocks then have one size in most chunks, which the heap reuses; mixed
    # sizes up to 1024 rows fragmented it (a loss loop of 200 steps: 6.1 GiB peak at 1024 rows,
    # 2.2 GiB at 256, the same time per row; README, Memory).
    loss_chunk_rows: int = 256
    # A batch whose student pass would run more than this many padded tokens (a shared prefix counted
    # once, as run) is split into micro-batches of whole examples, in length order, each run forward
    # and backward on its own; their gradients add up to the whole batch's before its one optimizer
    # step, so the update is the same. Backward keeps ~1.5 MB a token of SmolLM2-135M activations,
    # plus eager attention's (L, L) maps: one pass of 16 long examples needed 17-38 GB. A batch
    # within the budget runs as one pass, as before. 0 = off. One step of 16 x ~800-token examples,
    # bf16-autocast, peak RSS: 6.6 / 4.2 / 3.0 GiB at 4096 / 2048 / 1024 with sdpa attention,
    # 10.4 / 6.4 / 4.6 GiB with eager, and no slower for the smaller parts.
    step_tokens: int = 2048
    # LoRA only: before each injection after the first, add the adapter into the weights it adapts
    # and train a fresh one (zero update, new random A). The earlier injections' updates are then
    # frozen instead of rewritten by the next one's optimizer; the model stores one set of changed
    # weights whatever the number of injections, not one adapter per injection.
    merge_adapter: bool = False
    # Run the student's decoder layers compiled (``compiled_layers``): the same function, its many
    # small operations fused. On 2 CPU cores a quick SELF-PARAM step took 0.74x the time (README,
    # Throughput) after about half a minute of compiling once per process. Needs a C++ compiler on
    # a CPU; Llama-style layers only.
    compile_layers: bool = False

    RANGES: ClassVar[dict[str, str]] = {
        "lora_r": ">= 1",
        "lora_alpha": "> 0",
        "lora_dropout": "[0, 1)",
        "lora_depth": "(0, 1]",
        "lr": "> 0",
        "weight_decay": ">= 0",
        "epochs": ">= 0",
        "batch_size": ">= 1",
        "max_grad_norm": ">= 0",
        "share_prefix": ">= 0",
        "loss_chunk_rows": ">= 0",
        "step_tokens": ">= 0",
        "frozen_layer_cache_mb": ">= 0",
        "sdpa_above_tokens": ">= 0",
    }


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (or the model itself): where its config,
    attention setting and embeddings live."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def build_student(lm: LM, p: TrainParams) -> torch.nn.Module:
    """A trainable copy of the base model; ``lm.model`` itself is never touched."""
    model = lm.clone_model()
    for param in model.parameters():
        param.requires_grad_(False)
    if p.params == "lora":
        from peft import LoraConfig

        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        targets = [t for t in p.lora_targets if t in present]
        if not targets:
            raise BenchError(f"none of the LoRA target modules {list(p.lora_targets)} exist in model {lm.name!r}")
        config = LoraConfig(
            r=p.lora_r,
            lora_alpha=p.lora_alpha,
            lora_dropout=p.lora_dropout,
            target_modules=targets,
            layers_to_transform=_top_layers(model, p.lora_depth, lm.name),
            task_type="CAUSAL_LM",
        )
        model = _with_adapter(model, config)
    elif p.params == "full":
        for param in model.parameters():
            param.requires_grad_(True)
    elif p.params == "mlp":
        for name, param in model.named_parameters():
            if ".mlp." in name:
                param.requires_grad_(True)
    else:
        raise BenchError(f"unknown params {p.params!r}; use lora, full or mlp")
    if p.frozen_bf16 and lm.precision == "bf16-autocast":
        _store_frozen_in_bf16(model)
    if p.attn_implementation:
        base = unwrapped(model)
        try:
            base.set_attn_implementation(p.attn_implementation)
        except (ValueError, ImportError) as exc:
            raise BenchError(f"attn_implementation {p.attn_implementation!r}: {str(exc).splitlines()[0]}") from None
    if p.compile_layers:
        decoder = unwrapped(model).get_decoder()
        if not hasattr(decoder, "layers"):
            message = f"compile_layers: model {lm.name!r} has no list of decoder layers"
            raise BenchError(f"{message}; use --set compile_layers=false")
        compile_decoder_layers(decoder.layers)
    return model


def _top_layers(model: torch.nn.Module, depth: float, name: str) -> list[int] | None:
    """Indices of the top ``depth`` share of the decoder layers (at least one); None = all."""
    if depth >= 1.0:
        return None
    count = getattr(unwrapped(model).config, "num_hidden_layers", None)
    if not isinstance(count, int):
        raise BenchError(f"lora_depth: model {name!r} does not say how many layers it has; use --set lora_depth=1")
    keep = max(1, math.ceil(depth * count))
    return list(range(count - keep, count))


def own_attention(model: torch.nn.Module) -> str:
    """The attention kernel ``model`` runs now (transformers keeps the choice only on the config)."""
    return unwrapped(model).config._attn_implementation


@contextlib.contextmanager
def attention_kernel(model: torch.nn.Module, implementation: str) -> Iterator[None]:
    """Run ``model`` with another attention implementation for the duration, then restore its own.

    The student trains with ``attn_implementation`` (eager: faster for short examples on a CPU) but
    answers with the base model's kernel, so that trained methods and Base answer through the same
    attention code, and long prompts (conversations) need no (L, L) score maps per head."""
    own = own_attention(model) if implementation else ""
    if implementation == own:  # nothing asked (no config read: a cartridge has none), or no switch
        yield
        return
    base = unwrapped(model)
    base.set_attn_implementation(implementation)
    try:
        yield
    finally:
        base.set_attn_implementation(own)


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of the model as it is now (the ``current`` teacher of an injection).

    Only the trainable tensors are copied: the frozen ones do not change while the injection trains
    (a merged adapter is added into them before the next one), so the copy shares them instead of
    holding a second set of base weights (about 190 MB for SmolLM2-135M in bf16)."""
    shared = {id(p): p for p in model.parameters() if not p.requires_grad}
    teacher = copy.deepcopy(model, memo=shared)
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    lora_up = [p for name, p in teacher.named_parameters() if "lora_B" in name]
    if lora_up and all(not p.any() for p in lora_up):
        # A fresh adapter (after a merge, or before any training) adds exactly nothing: the copy
        # runs without it, a few small operations fewer in each adapted layer of every pass.
        teacher.base_model.disable_adapter_layers()
    return teacher


def merge_adapter(model: torch.nn.Module) -> torch.nn.Module:
    """The LoRA student with its adapter added into the adapted weights, and a fresh adapter.

    The frozen weights keep their dtype (bf16 under bf16-autocast): the merged update is rounded to
    it, as autocast would round the adapter's output.
    """
    config = model.peft_config["default"]
    adapted = _adapted_weights(model)  # the same modules at every merge
    with warnings.catch_warnings():
        # peft warns that merging unties the embeddings; with frozen_bf16 the LM head already has
        # its own copy, and neither is adapted, so nothing changes for them.
        warnings.filterwarnings("ignore", message="Input and output embeddings are no longer tied")
        merged = model.merge_and_unload()
    fresh = _with_adapter(merged, config)
    fresh._merged_modules = sorted(adapted)  # for the footprint: these weights now differ from the base's
    return fresh


def _with_adapter(model: torch.nn.Module, config) -> torch.nn.Module:
    """``peft.get_peft_model``, without the deprecation warning its own check of the model raises
    in this transformers version (printed again at every injection otherwise), with the short LoRA
    forward (``lora_forward``)."""
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        adapted = get_peft_model(model, config)
    use_short_lora_forward(adapted)
    return adapted


def _adapted_weights(model: torch.nn.Module) -> set[str]:
    """Names of the base weights a LoRA model adapts."""
    suffix = ".lora_A.default"
    return {name.removesuffix(suffix) for name, _ in model.named_modules() if name.endswith(suffix)}


def _store_frozen_in_bf16(model: torch.nn.Module) -> None:
    """Keep frozen matmul weights in bf16 so autocast does not re-cast them at every step.

    Embeddings stay fp32 (they feed the residual stream). A tied, frozen LM head gets its own bf16
    copy; its values are what autocast would have used anyway.
    """
    base = unwrapped(model)
    head = base.get_output_embeddings()
    embed = base.get_input_embeddings()
    if head is not None and not head.weight.requires_grad:
        if head.weight is embed.weight:
            head.weight = torch.nn.Parameter(head.weight.detach().to(torch.bfloat16), requires_grad=False)
        else:
            head.weight.data = head.weight.data.to(torch.bfloat16)
    for module in base.modules():
        if isinstance(module, torch.nn.Linear) and module is not head and not module.weight.requires_grad:
            module.weight.data = module.weight.data.to(torch.bfloat16)
            if module.bias is not None and not module.bias.requires_grad:
                module.bias.data = module.bias.data.to(torch.bfloat16)


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def student_footprint(model: torch.nn.Module | None, p: TrainParams) -> Footprint:
    """LoRA: the adapter bytes; full / MLP, or LoRA merged into the weights: the bytes of the
    changed weights (a second copy)."""
    if model is None:
        return Footprint()
    merged = set(getattr(model, "_merged_modules", ()))
    if merged:
        changed, kind = [m.base_layer.weight for name, m in model.named_modules() if name in merged], "merged_lora"
    else:
        changed, kind = trainable_parameters(model), p.params
    count = sum(t.numel() for t in changed)
    size = sum(t.numel() * t.element_size() for t in changed)
    return Footprint(extra_bytes=size, changed_params=count, detail={f"{kind}_params": count})


def split_lm(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(backbone returning hidden states, LM head): lets the head run on selected positions only."""
    base = unwrapped(model)
    return base.get_decoder(), base.get_output_embeddings()


def head_dtype(lm: LM, head: torch.nn.Module) -> torch.dtype:
    """The dtype the LM head's matmul runs in: bf16 under bf16-autocast, else its weight's."""
    return torch.bfloat16 if lm.precision == "bf16-autocast" else next(head.parameters()).dtype


def head_logits(model: torch.nn.Module, lm: LM, hidden: torch.Tensor) -> torch.Tensor:
    """fp32 logits of the LM head at the given final hidden states."""
    _, head = split_lm(model)
    with lm.autocast():
        logits = head(hidden)
    return logits.float()
