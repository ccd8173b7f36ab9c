"""``gigaseg demo``: the main job end to end on generated scenes, each stage timed.

Five stages, each a flow or a library call a user would run by hand: write a
labelled training scene and a second, unseen scene; train a small U-Net through
the ``train-model`` flow and register it in MLflow; promote that version to
``@champion`` through the ``promote-model`` flow (evaluated on the unseen scene);
segment the unseen scene with ``models:/NAME@champion`` on Ray actors (COG with
its QGIS style, probabilities, polygons, a STAC item, per-region metrics in
MLflow); score it against its labels and write a preview. The accuracy printed
is on a scene the model never saw.

The quick preset is sized to show every stage in a few minutes on a laptop CPU;
``--full`` trains today's larger network for six epochs on a 3072² scene.

>>> from flows.demo import QUICK, FULL
>>> QUICK.size < FULL.size and QUICK.steps < FULL.steps
True
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

MODEL_NAME = "gigaseg-demo-landcover"


@dataclass(frozen=True)
class DemoSettings:
    """What the demo generates and trains (the quick preset's values are the defaults)."""

    size: int = 1024
    """Side of the training scene, in pixels."""
    eval_size: int = 1024
    """Side of the unseen scene that is promoted on, segmented and scored."""
    width: int = 8
    depth: int = 2
    batch_norm: bool = False
    epochs: int = 3
    steps_per_epoch: int = 40
    lr: float = 3e-3
    tile: int = 128
    batch_size: int = 8
    workers: int = 2
    """Ray actors for the segmentation stage (the demo shows the distributed path even on one box)."""
    seed: int = 0
    model_name: str = MODEL_NAME
    """The registered model the demo trains, promotes and segments with."""
    workdir: Path = field(default=Path("demo"))

    @property
    def steps(self) -> int:
        """Optimiser steps in all."""
        return self.epochs * self.steps_per_epoch


QUICK = DemoSettings()
FULL = DemoSettings(
    size=3072, eval_size=2048, width=16, depth=3, batch_norm=True, epochs=6, steps_per_epoch=50, lr=2e-3
)


@dataclass(frozen=True)
class DemoResult:
    """What the demo produced and how long each stage took."""

    accuracy: float
    miou: float
    iou: dict[str, float]
    pixels: int
    model: str
    output: Path
    vector: Path
    preview: Path
    stage_seconds: dict[str, float]


class _Stages:
    """Numbered stage lines, each with the stage's own time when it finishes."""

    def __init__(self, total: int, log: Callable[[str], None]):
        self.total, self.log, self.done = total, log, 0
        self.seconds: dict[str, float] = {}

    def run(self, name: str, what: str, work: Callable[[], Any], outcome: Callable[[Any], str]) -> Any:
        self.done += 1
        t0 = time.perf_counter()
        value = work()
        self.seconds[name] = time.perf_counter() - t0
        self.log(
            f"demo {self.done}/{self.total} {name}: {what}; {outcome(value)} ({self.seconds[name]:.0f} s)"
        )
        return value


def run_demo(
    settings: DemoSettings = QUICK, quiet: bool = False, log: Callable[[str], None] = print
) -> DemoResult:
    """Every stage of the main job on generated scenes; returns the held-out scores and stage times."""
    from flows.promote_model import promote_model
    from flows.segment_scene import segment_scene
    from pipeline.demos.sample_scene import CLASS_COLORS, CLASS_NAMES, write_sample_scene
    from pipeline.evaluation.metrics import evaluate_labels
    from pipeline.evaluation.preview import write_preview

    work = settings.workdir
    work.mkdir(parents=True, exist_ok=True)
    stages = _Stages(5, (lambda m: None) if quiet else log)

    def scenes() -> tuple[Any, Any]:
        train = write_sample_scene(work / "train", settings.size, settings.seed)
        unseen = write_sample_scene(work / "unseen", settings.eval_size, settings.seed + 1)
        return train, unseen

    train_scene, unseen = stages.run(
        "scenes",
        f"a {settings.size}² training scene and an unseen {settings.eval_size}² one",
        scenes,
        lambda s: f"{s[0].image.parent}, {s[1].image.parent}",
    )
    report = stages.run(
        "train",
        f"U-Net width {settings.width} depth {settings.depth}, {settings.steps} steps (train-model flow)",
        lambda: _train(settings, train_scene, quiet, log),
        lambda r: (
            f"held-out accuracy {r.outcome.best.accuracy:.3f}; registered "
            + (r.version.uri if r.version else "nothing")
        ),
    )
    if report.version is None:
        from pipeline.errors import InputError

        raise InputError(f"{settings.model_name}: training registered no version")

    stages.run(
        "promote",
        f"version {report.version.version} against the champion on the unseen scene (promote-model flow)",
        lambda: promote_model(
            settings.model_name, int(report.version.version), str(unseen.image), str(unseen.labels)
        ),
        lambda d: d.line(),
    )
    champion = f"models:/{settings.model_name}@champion"
    config = _segment_config(settings, unseen.image, champion, quiet)
    output = config.output
    stages.run(
        "segment",
        f"the unseen scene with {champion} on {settings.workers} Ray actors",
        lambda: segment_scene(config, labels=unseen.labels),
        lambda s: f"{s.line()}; QGIS style, polygons, STAC item, per-region metrics beside it and in MLflow",
    )

    def score() -> tuple[dict[str, Any], Path]:
        scores = evaluate_labels(output, unseen.labels, len(CLASS_NAMES))
        png = write_preview(unseen.image, output, work / "preview.png", CLASS_NAMES, CLASS_COLORS)
        return scores, png

    scores, preview = stages.run(
        "score",
        "accuracy on the unseen scene, preview",
        score,
        lambda s: f"accuracy {s[0]['accuracy']:.3f}, mIoU {s[0]['miou']:.3f}",
    )
    return DemoResult(
        accuracy=scores["accuracy"],
        miou=scores["miou"],
        iou=dict(zip(CLASS_NAMES, scores["iou"])),
        pixels=scores["pixels"],
        model=champion,
        output=output,
        vector=config.vector,
        preview=preview,
        stage_seconds=stages.seconds,
    )


def _segment_config(settings: DemoSettings, image: Path, model: str, quiet: bool) -> Any:
    """The segment stage's job: COG, probabilities and polygons of the unseen scene, on Ray actors."""
    from pipeline.job.config import SegmentConfig

    work = settings.workdir
    return SegmentConfig(
        input=image,
        model=model,
        output=work / "unseen_classes.tif",
        probabilities=work / "unseen_probabilities.tif",
        vector=work / "unseen_regions.gpkg",
        workers=settings.workers,
        overwrite=True,
        quiet=quiet,
    )


def _train(settings: DemoSettings, scene: Any, quiet: bool, log: Callable[[str], None]) -> Any:
    """The demo's U-Net trained on ``scene`` through the ``train-model`` flow and registered."""
    from flows.train_model import train_model
    from pipeline.demos.sample_scene import CLASS_COLORS, CLASS_NAMES
    from pipeline.training.settings import TrainSettings

    train_settings = TrainSettings(
        arch="unet",
        arch_config={"width": settings.width, "depth": settings.depth, "batch_norm": settings.batch_norm},
        tile=settings.tile,
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        steps_per_epoch=settings.steps_per_epoch,
        lr=settings.lr,
        patience=settings.epochs,
        seed=settings.seed,
    )
    work = settings.workdir
    return train_model(
        [str(scene.image)],
        [str(scene.labels)],
        settings.model_name,
        train_settings,
        val_fraction=0.2,
        class_names=CLASS_NAMES,
        class_colors=CLASS_COLORS,
        work_dir=work / "train" / "work",
        output=work / "unet_sample.safetensors",
        log=None if quiet else (lambda m: log(f"  train: {m}")),
    )


def with_overrides(base: DemoSettings, **given: Any) -> DemoSettings:
    """``base`` with the options a user gave (None: keep the preset's value)."""
    return replace(base, **{k: v for k, v in given.items() if v is not None})
