"""Device selection and mixed precision: CUDA when present, else CPU."""

from __future__ import annotations

import torch

from pipeline.errors import InputError


def select_device(name: str = "auto") -> torch.device:
    """``auto`` → the first CUDA device if any, else CPU; ``cpu``/``cuda``/``cuda:N`` as asked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name}: not a device name (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type != "cpu":
        raise InputError(f"--device {name}: unsupported device type {device.type!r}")
    return device


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The AMP dtype for ``device``: bf16 where the GPU supports it, else fp16; None on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


MEMORY_BUDGET = 0.5
"""The part of a GPU's free memory one process's batches may take (the rest: blending, cached blocks)."""


def fit_batch_size(
    requested: int, bytes_per_tile: int, free_bytes: int, budget: float = MEMORY_BUDGET
) -> int:
    """The largest batch ≤ ``requested`` whose tiles fit in ``budget`` × the free device memory.

    Never below 1: a single tile that does not fit is the model's problem, not the batch's.
    """
    if bytes_per_tile <= 0:
        return max(1, requested)
    return max(1, min(requested, int(free_bytes * budget) // bytes_per_tile))


def free_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA device; None on CPU (host memory is bounded by the block)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)
