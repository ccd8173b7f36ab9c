"""What a watch passes on to each scene's segmentation, checked before any work starts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import InputError
from pipeline.job.config import SegmentConfig
from pipeline.stores.location import ObjectLocation, Where, check_writable_folder, location, storage_error
from pipeline.stores.output import fingerprint
from pipeline.watch.stac_listing import is_stac_listing, read_listing


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

EXECUTION_ONLY = frozenset(
    {
        "batch_size", "device", "channels_last", "threads", "workers", "workers_per_gpu", "ray_address",
        "copy_input", "keep_work", "block", "chunk", "volume_block", "volume_chunk",
    }
)  # fmt: skip
"""Options that change how a scene is segmented, not its labels (blocks are exact: DESIGN.md, invariant 2)."""


def segment_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """The segmentation options a watch passes on, checked now (unknown or bad ones fail before any work)."""
    options = dict(options or {})
    allowed = set(SegmentConfig.__dataclass_fields__) - RESERVED
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise InputError(f"unknown segmentation option(s) for watch: {', '.join(unknown)}")
    return options


def settings_id(model: str, options: dict[str, Any]) -> str:
    """What a scene's output depends on besides its content: the model's weights and the options.

    Every option counts but those in :data:`EXECUTION_ONLY`, with its default filled in
    (giving an option at its default changes nothing). The ledger keeps it with each
    scene, so a watch whose settings change segments its scenes again.
    """
    from pipeline.job.model_source import weights_identity

    config = SegmentConfig(input="", model=model, output="", **options)
    ignored = RESERVED | EXECUTION_ONLY
    chosen = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in ignored}
    return fingerprint({"model": weights_identity(model), **chosen})


def check_watch_arguments(
    input_url: str, output_dir: str | Path | ObjectLocation, model: str, options: dict[str, Any]
) -> None:
    """Fail fast, before Prefect starts, on what the user can fix.

    A watched prefix on object storage may still be empty (scenes arrive later), but
    its bucket must be reachable; an output folder there must take a probe object.
    """
    watched = location(input_url)
    if is_stac_listing(input_url):
        read_listing(input_url)
    elif isinstance(watched, ObjectLocation):
        if watched.protocol not in ("http", "https"):
            try:
                watched.fs.ls(f"{watched.protocol}://{watched.bucket}", detail=False)
            except Exception as exc:
                raise storage_error(watched, exc) from None
    elif "://" not in input_url and not watched.is_dir():
        raise InputError(f"{input_url}: no such folder to watch (or STAC catalog: a .json file)")
    out = location(output_dir)
    if isinstance(out, Path) and not out.is_dir():
        raise InputError(f"{output_dir}: output folder does not exist")
    check_writable_folder(out)
    probe = SegmentConfig(input=input_url, model=model, output=out / "probe.tif", **options)
    probe.validate_options()


def scene_config(
    scene: str | Where, model: str, output: str | Where, options: dict[str, Any]
) -> SegmentConfig:
    """The validated settings that segment one scene (a local path or a URL) into ``output``, replacing it."""
    config = SegmentConfig(input=scene, model=model, output=output, quiet=True, overwrite=True, **options)
    config.validate()
    return config
