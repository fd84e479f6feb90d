"""What a result records of the device it ran on: costs and rounding depend on it.

A CPU's instruction set decides how bf16 products run (``benchmark.models.bf16_matmul``) and how
fast; a GPU's name, CUDA version and the peak memory torch allocated on it size a run on another card.
"""

from __future__ import annotations

from typing import Any

import torch


def device_record(device: torch.device) -> dict[str, Any]:
    """``{"type": "cpu", "cpu_capability": "AVX2"}``, or for a GPU its name, CUDA version and the
    peak memory torch allocated there since ``reset_peak_gpu_memory``."""
    if device.type == "cuda":
        return {
            "type": "cuda",
            "name": torch.cuda.get_device_name(device),
            "cuda_version": torch.version.cuda,
            "peak_memory_allocated_bytes": torch.cuda.max_memory_allocated(device),
        }
    return {"type": device.type, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
