"""What a result records of the device it ran on: costs and rounding depend on it.

A CPU's instruction set decides how bf16 products run (``benchmark.models.bf16_matmul``) and how
fast; a GPU's name, CUDA version and the peak memory torch allocated on it size a run on another card.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from benchmark.models.bf16_matmul import cpu_has_bf16_matmul


def cpu_model() -> str:
    """The CPU's model name as the system reports it (``/proc/cpuinfo`` on Linux), or "unknown"."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_record(device: torch.device) -> dict[str, Any]:
    """For a CPU its model, vector instruction set and whether it multiplies bf16 natively
    (``{"type": "cpu", "cpu_model": "AMD EPYC", "cpu_capability": "AVX2", "bf16_instructions":
    False}``); for a GPU its name, CUDA version and the peak memory torch allocated there since
    ``reset_peak_gpu_memory``."""
    if device.type == "cuda":
        return {
            "type": "cuda",
            "name": torch.cuda.get_device_name(device),
            "cuda_version": torch.version.cuda,
            "peak_memory_allocated_bytes": torch.cuda.max_memory_allocated(device),
        }
    return {
        "type": device.type,
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_instructions": cpu_has_bf16_matmul(),
    }
