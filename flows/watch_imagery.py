"""Scheduled processing of new imagery: segment every new or changed scene in a location exactly once.

``process_new_imagery`` scans a folder (or any fsspec URL such as ``s3://bucket/scenes``
when the matching filesystem package is installed) for files matching a pattern,
looks each one up in the ledger kept in the output folder (content identity, so
renames are not reprocessed and edits are), and segments what is new, a bounded
number at a time. A scene that fails (a corrupt file) is recorded and reported;
the others finish. ``gigaseg watch`` runs it once (``--once``) or serves it on a
schedule; ``infra/prefect.yaml`` deploys it to a work pool.

Runnable as a script: ``python flows/watch_imagery.py INPUT --output-dir OUT -m MODEL``.
"""

from __future__ import annotations

import posixpath
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec

from flows.prefect_runtime import configure_prefect

# Before Prefect is imported: run as a script (`ray submit … flows/watch_imagery.py`) the
# `flows` package has not been imported yet to set the embedded defaults.
configure_prefect()

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from flows.segment_scene import segment_scene_flow
from pipeline.errors import InputError
from pipeline.inputs.ingest import content_id
from pipeline.job.config import SegmentConfig
from pipeline.watch.ledger import LEDGER_NAME, SceneLedger, output_name

DEFAULT_PATTERN = "*.tif"
DOWNLOADS = ".gigaseg-downloads"


@dataclass(frozen=True)
class Scene:
    """A file found by a scan, with the identity of its content."""

    url: str
    """Where it is (a local path, or a URL of the scanned filesystem)."""
    relative: str
    """Its path relative to the scanned location (names its output)."""
    content_id: str
    local: bool


@dataclass
class WatchReport:
    """What one scan did."""

    processed: list[tuple[str, str]] = field(default_factory=list)
    """(scene, output) pairs written by this scan."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(scene, one-line reason) pairs."""
    unchanged: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        """One-line summary."""
        failed = f", {len(self.failed)} failed" if self.failed else ""
        return (
            f"{len(self.processed)} scene(s) segmented{failed}, "
            f"{self.unchanged} unchanged, {self.seconds:.1f} s"
        )


def segment_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """The segmentation options a watch passes on, checked now (unknown or bad ones fail before any work)."""
    options = dict(options or {})
    reserved = {"input", "model", "output", "probabilities", "overwrite", "work_dir", "quiet"}
    allowed = set(SegmentConfig.__dataclass_fields__) - reserved
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise InputError(f"unknown segmentation option(s) for watch: {', '.join(unknown)}")
    return options


def _fingerprint(fs: fsspec.AbstractFileSystem, info: dict[str, Any]) -> tuple[int, str]:
    """Size and a change marker (mtime, or the store's ETag / checksum) from a listing."""
    for key in ("ETag", "etag", "md5Hash", "checksum", "mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return int(info.get("size") or 0), f"{key}={info[key]}"
    return int(info.get("size") or 0), ""


def scan(
    url: str, pattern: str, ledger: SceneLedger, min_age: float = 0.0, exclude: str | None = None
) -> list[Scene]:
    """Files under ``url`` matching ``pattern``, each with its content id (hashed only when it changed)."""
    fs, root = fsspec.core.url_to_fs(url)
    local = "file" in fs.protocol if isinstance(fs.protocol, tuple) else fs.protocol == "file"
    root = root.rstrip("/")
    found = []
    now = time.time()
    for path in sorted(fs.glob(posixpath.join(root, pattern))):
        info = fs.info(path)
        if info.get("type") != "file" or path.endswith(".labels.tif"):
            continue
        if exclude and posixpath.commonpath([path, exclude]) == exclude:
            continue
        mtime = info.get("mtime")
        if min_age and isinstance(mtime, (int, float)) and now - mtime < min_age:
            continue  # maybe still being copied in: next scan
        size, marker = _fingerprint(fs, info)
        source = path if local else fs.unstrip_protocol(path)
        cid = ledger.known_content_id(source, size, marker) if marker else None
        if cid is None:
            if local:
                cid = content_id(path)
            else:
                digest = fs.checksum(path) if marker == "" else marker
                cid = f"{digest}:{size}"
            if marker:
                ledger.remember(source, size, marker, cid)
        found.append(Scene(source, posixpath.relpath(path, root), cid, local))
    return found


def _fetch(scene: Scene, scratch: Path) -> Path:
    """A local path of the scene (remote scenes are copied into ``scratch`` first)."""
    if scene.local:
        return Path(scene.url)
    scratch.mkdir(parents=True, exist_ok=True)
    target = scratch / f"{scene.content_id[:16]}{posixpath.splitext(scene.relative)[1]}"
    fs, path = fsspec.core.url_to_fs(scene.url)
    fs.get(path, str(target))
    return target


@task(name="segment-new-scene", cache_policy=NONE, persist_result=False)
def segment_new_scene(
    scene: Scene, output: Path, model: str, options: dict[str, Any], ledger_path: Path
) -> str:
    """Segment one scene into ``output``, recording start and outcome in the ledger."""
    ledger = SceneLedger(ledger_path)
    ledger.start(scene.url, scene.content_id, str(output))
    scratch = output.parent / DOWNLOADS
    local = None
    try:
        local = _fetch(scene, scratch)
        config = SegmentConfig(input=local, model=model, output=output, quiet=True, overwrite=True, **options)
        config.validate()
        segment_scene_flow.with_options(flow_run_name=f"segment {scene.relative}")(config)
    except BaseException as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        ledger.finish(scene.url, scene.content_id, ok=False, message=reason)
        raise
    finally:
        if local is not None and not scene.local:
            local.unlink(missing_ok=True)
    ledger.finish(scene.url, scene.content_id, ok=True)
    return str(output)


@flow(name="watch-imagery", validate_parameters=True)
def process_new_imagery(
    input_url: str,
    output_dir: str,
    model: str,
    pattern: str = DEFAULT_PATTERN,
    max_concurrent: int = 1,
    min_age_seconds: float = 0.0,
    options: dict[str, Any] | None = None,
) -> WatchReport:
    """Segment each new or changed scene under ``input_url`` into ``output_dir`` exactly once."""
    t0 = time.perf_counter()
    logger = get_run_logger()
    opts = segment_options(options)
    out_dir = Path(output_dir)
    ledger_path = out_dir / LEDGER_NAME
    ledger = SceneLedger(ledger_path)
    scenes = scan(input_url, pattern, ledger, min_age_seconds, exclude=str(out_dir.resolve()))
    todo = [s for s in scenes if ledger.needs_processing(s.url, s.content_id)]
    report = WatchReport(unchanged=len(scenes) - len(todo))
    logger.info("%d scene(s) found, %d new or changed", len(scenes), len(todo))
    runner = ThreadPoolTaskRunner(max_workers=max(1, max_concurrent))
    with runner:
        futures = {
            s: runner.submit(
                segment_new_scene,
                parameters={
                    "scene": s,
                    "output": out_dir / output_name(s.relative, s.content_id),
                    "model": model,
                    "options": opts,
                    "ledger_path": ledger_path,
                },
            )
            for s in todo
        }
        wait(list(futures.values()))
    for scene, future in futures.items():
        state = future.state
        if state.is_completed():
            report.processed.append((scene.url, future.result()))
        else:
            error = state.result(raise_on_failure=False)
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            report.failed.append((scene.url, reason))
            logger.error("%s: %s", scene.url, reason)
    report.seconds = time.perf_counter() - t0
    logger.info(report.line())
    return report


def check_watch_arguments(input_url: str, output_dir: Path, model: str, options: dict[str, Any]) -> None:
    """Fail fast, before Prefect starts, on what the user can fix."""
    if "://" not in input_url and not Path(input_url).is_dir():
        raise InputError(f"{input_url}: no such folder to watch")
    if not output_dir.is_dir():
        raise InputError(f"{output_dir}: output folder does not exist")
    probe = SegmentConfig(input=Path(input_url), model=model, output=output_dir / "probe.tif", **options)
    probe.validate_options()


def remove_scratch(output_dir: Path) -> None:
    """Delete downloaded copies left by an interrupted scan."""
    shutil.rmtree(output_dir / DOWNLOADS, ignore_errors=True)


if __name__ == "__main__":
    from flows import commands
    from flows.arguments import add_watch_arguments
    from flows.script import run_script

    this_flow = sys.modules[__name__]
    sys.exit(run_script("watch", add_watch_arguments, lambda args: commands.watch(args, this_flow)))
