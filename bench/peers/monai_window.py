"""The ``monai-*`` rows: MONAI's ``sliding_window_inference`` with the bench's tile, overlap and batch."""

from __future__ import annotations

from collections.abc import Callable

import torch

from bench.peers.rows import Tiling


def monai_version() -> str:
    """MONAI's version, or "not installed"."""
    try:
        import monai

        return monai.__version__
    except ImportError:
        return "not installed"


def monai_probabilities(
    x: torch.Tensor, predict: Callable[[torch.Tensor], torch.Tensor], tiling: Tiling, mode: str,
    device: torch.device,
) -> torch.Tensor:  # fmt: skip
    """MONAI's sliding window over ``x`` (C, H, W) → probabilities (K, H, W), blended on the CPU.

    ``mode``: MONAI's blending, ``constant`` or ``gaussian`` (σ = 1/8 tile, as gigaseg's).
    """
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        probs = sliding_window_inference(
            x[None], (tiling.tile, tiling.tile), tiling.batch, predict, overlap=tiling.overlap, mode=mode,
            sigma_scale=0.125, padding_mode="reflect", sw_device=device,
            device=torch.device("cpu"),
        )[0]  # fmt: skip
    return torch.as_tensor(probs)
