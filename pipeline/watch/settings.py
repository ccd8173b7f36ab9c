"""What a watch passes on to each scene's segmentation, checked before any work starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import InputError
from pipeline.job.config import SegmentConfig


@dataclass(frozen=True)
class WatchSettings:
    """How a watch scans: the defaults of the watch flow's parameters and of ``gigaseg watch``."""

    pattern: str = "*.tif"
    """Glob of scenes, relative to the watched location (e.g. ``**/*.tif``)."""
    max_concurrent: int | None = None
    """Scenes in flight at once, sharing one actor pool; None: the batch's own
    (:data:`~pipeline.execution.scene_batch.SCENES_IN_FLIGHT` on Ray, 1 in this process)."""
    min_age_seconds: float = 0.0
    """Files modified more recently than this are left for the next scan (still being written)."""


RESERVED = frozenset({"input", "model", "output", "probabilities", "overwrite", "work_dir", "quiet"})
"""Settings the watch decides per scene; a watch's options may not set them."""


def segment_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """The segmentation options a watch passes on, checked now (unknown or bad ones fail before any work)."""
    options = dict(options or {})
    allowed = set(SegmentConfig.__dataclass_fields__) - RESERVED
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise InputError(f"unknown segmentation option(s) for watch: {', '.join(unknown)}")
    return options


def check_watch_arguments(input_url: str, output_dir: Path, model: str, options: dict[str, Any]) -> None:
    """Fail fast, before Prefect starts, on what the user can fix."""
    if "://" not in input_url and not Path(input_url).is_dir():
        raise InputError(f"{input_url}: no such folder to watch")
    if not output_dir.is_dir():
        raise InputError(f"{output_dir}: output folder does not exist")
    probe = SegmentConfig(input=Path(input_url), model=model, output=output_dir / "probe.tif", **options)
    probe.validate_options()


def scene_config(scene: Path, model: str, output: Path, options: dict[str, Any]) -> SegmentConfig:
    """The validated settings that segment one scene (a local path) into ``output``, replacing it."""
    config = SegmentConfig(input=scene, model=model, output=output, quiet=True, overwrite=True, **options)
    config.validate()
    return config
