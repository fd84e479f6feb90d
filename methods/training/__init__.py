"""Training machinery shared by SELF-PARAM and the fine-tuning baselines FT(C) and FT(S).

The student is a copy of the base model (``lm.clone_model()``), wrapped with LoRA through ``peft``
or trained in full / MLP-only. Training examples are short token sequences with a loss on a span
of next-token predictions: cross-entropy against the tokens themselves (fine-tuning) or the KL
divergence from a teacher's distributions (SELF-PARAM). What makes it fast on a CPU:

- examples are batched (length-bucketed, right-padded) instead of one per optimizer step;
- the LM head runs only at the positions that carry a loss, in chunks of rows whose logits are
  recomputed in the backward pass instead of kept (``loss_chunk_rows``); for token ids and top-k
  teachers it is fused with the loss (``head_loss``), which reads a few logits per row and their
  log-normaliser and writes each chunk's gradient once, in reused scratch blocks;
- a batch too long for memory runs as micro-batches whose gradients add up to the batch's before
  its one optimizer step (``step_tokens``);
- teacher distributions are computed once per example and cached (optionally as top-k with the
  rest of the probability mass kept as one tail bucket, so the KL stays a true divergence);
- under ``bf16-autocast`` the student's frozen weights are stored in bf16 once, instead of being
  cast again in every forward pass.

The parts: ``student`` (building the student, its footprint, its LM head), ``head_loss`` (the
head fused with the loss), ``examples`` (training examples, batching, running a batch through the
backbone with shared prefixes), ``teacher`` (the teacher's distributions, optionally its hidden
states, and the divergences) and ``loop`` (the ``Trainer``, epochs with checkpoint resume, and
``TrainedMethod``, the base of the methods that train). Their names are importable from here.
"""

from __future__ import annotations

from methods.training.examples import (
    Example,
    batches,
    cache_prefix,
    group_by_prefix,
    hidden_after_prefix,
    pad_right,
    padded_tokens,
    pick_layers,
    selected_hidden,
    selected_states,
    states_after_prefix,
    states_and_prefix_caches,
)
from methods.training.loop import (
    HiddenMatch,
    TrainedMethod,
    Trainer,
    TrainReport,
    epoch_stream,
    run_epochs,
    steps_per_epoch,
)
from methods.training.student import (
    LORA_TARGETS,
    TrainParams,
    attention_kernel,
    build_student,
    frozen_copy,
    head_logits,
    split_lm,
    student_footprint,
    trainable_parameters,
)
from methods.training.teacher import Dist, TeacherSpec, cat_dists, hidden_distance, kl_rows, teacher_dists

__all__ = [
    "LORA_TARGETS",
    "Dist",
    "Example",
    "HiddenMatch",
    "TeacherSpec",
    "TrainedMethod",
    "Trainer",
    "TrainParams",
    "TrainReport",
    "attention_kernel",
    "batches",
    "build_student",
    "cache_prefix",
    "cat_dists",
    "epoch_stream",
    "frozen_copy",
    "group_by_prefix",
    "head_logits",
    "hidden_after_prefix",
    "hidden_distance",
    "kl_rows",
    "pad_right",
    "padded_tokens",
    "pick_layers",
    "run_epochs",
    "selected_hidden",
    "selected_states",
    "split_lm",
    "states_after_prefix",
    "states_and_prefix_caches",
    "steps_per_epoch",
    "student_footprint",
    "teacher_dists",
    "trainable_parameters",
]
