"""Training flow: fit a registered architecture on labelled rasters, track it in MLflow, register it.

Three tasks over library functions: check the options
(:meth:`pipeline.training.request.TrainRequest.checked`), open the labelled scenes
(:func:`pipeline.training.scenes.open_training_scenes`), train inside an MLflow run
and save / register the model (:func:`pipeline.tracking.training_run.train_tracked`).
Runnable as a script with the arguments of ``gigaseg train``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from flows.prefect_runtime import configure_prefect
from flows.script import restart_on_chosen_allocator

if __name__ == "__main__":  # run as a script: start over on TCMalloc before torch and Prefect load
    restart_on_chosen_allocator()

# Before Prefect is imported: run as a script (`ray submit … flows/train_model.py`) the
# `flows` package has not been imported yet to set the embedded defaults.
configure_prefect()

from prefect import flow, task
from prefect.cache_policies import NONE

from pipeline.tracking.training_run import TrainReport, train_tracked
from pipeline.training.request import TrainRequest
from pipeline.training.scenes import TrainingScenes, open_training_scenes
from pipeline.training.settings import TrainSettings

STAGE = {"cache_policy": NONE, "persist_result": False}


@task(name="check", **STAGE)
def check_stage(request: TrainRequest) -> TrainRequest:
    """Options and settings, before any data is read."""
    return request.checked()


@task(name="open-scenes", **STAGE)
def open_stage(request: TrainRequest) -> TrainingScenes:
    """The labelled scenes in the work folder, with their held-out parts and class names."""
    return open_training_scenes(request)


@task(name="train", **STAGE)
def train_stage(
    request: TrainRequest, data: TrainingScenes, log: Callable[[str], None] | None
) -> TrainReport:
    """Fit inside an MLflow run (resuming an interrupted one), then save and/or register the model."""
    return train_tracked(request, data, log)


@flow(name="train-model", validate_parameters=False)
def train_model(
    images: Sequence[str],
    labels: Sequence[str],
    model_name: str,
    settings: TrainSettings,
    val_fraction: float = 0.2,
    val_image: str | None = None,
    val_labels: str | None = None,
    class_names: Sequence[str] | None = None,
    class_colors: Sequence[Sequence[int]] | None = None,
    work_dir: str | Path | None = None,
    output: str | Path | None = None,
    register: bool = True,
    log: Callable[[str], None] | None = None,
    spacing: str | Sequence[float] | None = None,
) -> TrainReport:
    """Train on ``images``/``labels`` pairs (rasters or volumes), log the run, register ``model_name``.

    ``spacing``: voxel size (Z,Y,X mm) when the images are TIFF stacks read as volumes.
    """
    request = TrainRequest(
        images,
        labels,
        model_name,
        settings,
        val_fraction=val_fraction,
        val_image=val_image,
        val_labels=val_labels,
        class_names=class_names,
        class_colors=class_colors,
        work_dir=work_dir,
        output=output,
        register=register,
        spacing=spacing,
    )
    checked = check_stage(request)
    return train_stage(checked, open_stage(checked), log)


if __name__ == "__main__":
    from flows import commands
    from flows.arguments import add_train_arguments
    from flows.script import run_script

    sys.exit(run_script("train", add_train_arguments, lambda args: commands.train(args, train_model)))
