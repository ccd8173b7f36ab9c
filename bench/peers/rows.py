"""The rows of the peer bench: their names, what each one is, and what it imports before its clock."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

ROWS = (
    "gigaseg",
    "gigaseg-cli",
    "gigaseg-ray",
    "gigaseg-array",
    "gigaseg-array-crop",
    "monai-constant",
    "monai-gaussian",
    "monai-gaussian-cl",
    "monai-user",
    "nnunet",
    "chips-average",
    "chips-crop",
    "naive",
)
REFERENCES = ("reference", "reference-cl")
"""Untiled passes over the whole scene: the model in its own layout, and channels-last."""
END_TO_END_ROWS = ("gigaseg", "gigaseg-cli", "gigaseg-ray", "monai-user")
"""Rows that run from the GeoTIFF to the COG (the others get the image as an array)."""
CHANNELS_LAST_ROWS = ("gigaseg", "gigaseg-cli", "gigaseg-ray", "gigaseg-array", "gigaseg-array-crop")
"""Rows whose model runs channels-last (the engine's default): seam error against ``reference-cl``."""
RAY_WORKERS = 2
ROW_TEXT = {
    "reference": "untiled pass over the whole scene (reference)",
    "reference-cl": "untiled pass, channels-last (reference-cl; Δp: vs the reference)",
    "gigaseg": "gigaseg end to end (GeoTIFF → COG, in process, untracked)",
    "gigaseg-cli": "`gigaseg segment --workers 0 --no-track` (whole command, Prefect flow)",
    "gigaseg-ray": f"gigaseg end to end on a local Ray cluster, {RAY_WORKERS} workers (on a GPU: "
    "`--workers-per-gpu` per GPU; RSS summed)",
    "gigaseg-array": "gigaseg engine on an in-memory array (`segment_array`)",
    "gigaseg-array-crop": "gigaseg engine on an in-memory array, crop blending (`--blend crop`)",
    "monai-constant": "MONAI `sliding_window_inference`, constant",
    "monai-gaussian": "MONAI `sliding_window_inference`, gaussian",
    "monai-gaussian-cl": "MONAI `sliding_window_inference`, gaussian, model channels-last by hand",
    "monai-user": "a MONAI user's end to end: rasterio read → MONAI gaussian → argmax → COG (MODE overviews)",
    "nnunet": "nnU-Net v2 `nnUNetPredictor` sliding window (gaussian, no mirroring; its batch of 1)",
    "chips-average": "chip prediction, plain averaging (TorchGeo / Raster Vision style)",
    "chips-crop": "chip prediction, edge cropping (Raster Vision `crop_sz` style)",
    "naive": "non-overlapping tiles",
}
ROW_IMPORTS = {
    "gigaseg": ("pipeline.job.steps", "pipeline.job.config"),
    "gigaseg-cli": ("flows.cli", "flows.segment_scene"),
    "gigaseg-ray": ("pipeline.job.steps", "pipeline.job.config", "pipeline.execution.ray_pool"),
    "gigaseg-array": ("pipeline.engine.in_memory",),
    "gigaseg-array-crop": ("pipeline.engine.in_memory",),
    "monai-constant": ("monai.inferers",),
    "monai-gaussian": ("monai.inferers",),
    "monai-gaussian-cl": ("monai.inferers",),
    "monai-user": ("monai.inferers", "rasterio", "models.checkpoint", "pipeline.inputs.normalization"),
    "nnunet": ("nnunetv2.inference.predict_from_raw_data",),
}
"""Modules each row imports before any clock starts, so that no row's seconds include imports."""


@dataclass(frozen=True)
class Tiling:
    """How a row cuts the scene: tile side (px), overlap (share of the tile) and tiles per forward."""

    tile: int
    overlap: float
    batch: int

    @property
    def stride(self) -> int:
        return self.tile - round(self.tile * self.overlap)


@dataclass(frozen=True)
class RowSpec:
    """One run of one row, as the parent hands it to the child process (as JSON)."""

    row: str
    scene: str
    ckpt: str
    tile: int
    overlap: float
    batch: int
    device: str
    amp: bool
    seam: bool
    """Also save labels (and probabilities) for the seam error, after the clock."""
    out: str
    """Folder for the row's outputs."""
    workers_per_gpu: int = 1
    """The Ray row on a GPU: actors sharing each GPU."""

    @property
    def ray_workers(self) -> int | None:
        """The Ray row's actors: :data:`RAY_WORKERS` on the CPU; on a GPU as the pool sizes itself (None)."""
        return None if self.device.startswith("cuda") else RAY_WORKERS

    @property
    def tiling(self) -> Tiling:
        return Tiling(self.tile, self.overlap, self.batch)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RowSpec:
        return cls(**json.loads(text))
