"""Training flow: fit a registered architecture on labelled rasters, track it in MLflow, register it.

Runnable as a script with the arguments of ``gigaseg train``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from flows.prefect_runtime import configure_prefect

# Before Prefect is imported: run as a script (`ray submit … flows/train_model.py`) the
# `flows` package has not been imported yet to set the embedded defaults.
configure_prefect()

from prefect import flow

from pipeline.errors import InputError
from pipeline.evaluation.preview import compose_preview
from pipeline.inputs.tiff_stack import parse_spacing
from pipeline.tracking import runs as tracking
from pipeline.tracking.model_versions import ModelVersion, register_version
from pipeline.training.data import open_pair, scan_classes
from pipeline.training.trainer import TrainOutcome, TrainSettings, fit


@dataclass
class TrainReport:
    """What the flow produced: the outcome, the MLflow run and the registered version."""

    outcome: TrainOutcome
    run_id: str
    version: ModelVersion | None


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
    if len(images) != len(labels):
        raise InputError(
            f"{len(images)} image(s) but {len(labels)} label raster(s): give one label per image"
        )
    if (val_image is None) != (val_labels is None):
        raise InputError("--val-image and --val-labels go together")
    if not 0 <= val_fraction < 1:
        raise InputError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    settings.validate()
    spacing = parse_spacing(spacing)
    work = Path(work_dir) if work_dir else Path(".gigaseg") / "train" / model_name
    work.mkdir(parents=True, exist_ok=True)
    hold = 0.0 if val_image else val_fraction
    scenes, tagged = [], None
    for img, lab in zip(images, labels):
        scene, names = open_pair(img, lab, work / "stores", hold, spacing=spacing)
        scenes.append(scene)
        tagged = tagged or names
    if val_image:
        scenes.append(
            open_pair(val_image, val_labels, work / "stores", 0.0, validation_only=True, spacing=spacing)[0]
        )
    num_classes = max(scan_classes(scenes), len(class_names or tagged or []))
    names = list(class_names or tagged or [f"class_{i}" for i in range(num_classes)])
    if len(names) < num_classes:
        raise InputError(f"{len(names)} class names given but the labels hold {num_classes} classes")

    run_file = work / "mlflow_run_id"
    resume_run = (
        run_file.read_text().strip() if run_file.exists() and (work / "state" / "last.pt").exists() else None
    )
    tags = {"gigaseg.kind": "train", "gigaseg.model_name": model_name, "gigaseg.arch": settings.arch}
    with tracking.run(tracking.TRAIN_EXPERIMENT, f"train {model_name}", tags, run_id=resume_run) as run:
        import mlflow

        run_file.write_text(run.info.run_id)
        if resume_run is None:
            mlflow.log_params(
                tracking.flat_params(
                    {
                        **asdict(settings),
                        "images": ";".join(map(str, images)),
                        "labels": ";".join(map(str, labels)),
                        "val_fraction": hold,
                        "val_image": val_image,
                        "val_labels": val_labels,
                        "num_classes": num_classes,
                        "class_names": ",".join(names),
                        "model_name": model_name,
                    }
                )
            )

        def on_epoch(r) -> None:
            metrics = {"train_loss": r.train_loss, "val_accuracy": r.accuracy, "epoch_seconds": r.seconds}
            metrics |= {"val_miou": r.miou, "val_mdice": r.mdice}
            for n, iou, dice in zip(names, r.iou, r.dice):
                metrics[tracking.metric_key(f"val_iou_{n}")] = iou
                metrics[tracking.metric_key(f"val_dice_{n}")] = dice
            mlflow.log_metrics({k: v for k, v in metrics.items() if v == v}, step=r.epoch)

        outcome = fit(
            scenes,
            settings,
            num_classes,
            names,
            class_colors,
            state_dir=work / "state",
            on_epoch=on_epoch,
            log=log,
        )
        best = outcome.best
        mlflow.log_metrics(
            {
                "best_epoch": outcome.best_epoch,
                "best_val_miou": best.miou,
                "best_val_mdice": best.mdice,
                "best_val_accuracy": best.accuracy,
                "epochs_run": len(outcome.history),
                "stopped_early": float(outcome.stopped_early),
                "train_seconds": outcome.seconds,
            }
        )
        cm = outcome.confusion
        mlflow.log_table(
            {"truth": names, **{f"pred_{n}": [int(v) for v in cm[:, j]] for j, n in enumerate(names)}},
            "validation/confusion_matrix.json",
        )
        mlflow.log_dict(
            {"classes": names, "rows_truth_cols_prediction": cm.tolist()},
            "validation/confusion_matrix_raw.json",
        )
        if outcome.preview:
            p = outcome.preview
            image = compose_preview(
                p["image"], [p["labels"], p["prediction"]], names, outcome.card.class_colors
            )
            mlflow.log_image(image, "validation/preview.png")
        mlflow.log_dict(json.loads(outcome.card.to_json()), "model_card.json")
        if output is not None:
            from models.checkpoint import save_checkpoint

            save_checkpoint(output, outcome.model, outcome.card)
        version = None
        if register:
            version = register_version(
                outcome.model,
                outcome.card,
                model_name,
                run.info.run_id,
                tags={
                    "arch": settings.arch,
                    "val_miou": f"{best.miou:.6f}",
                    "val_accuracy": f"{best.accuracy:.6f}",
                    "best_epoch": str(outcome.best_epoch),
                },
            )
            mlflow.set_tag("gigaseg.registered_version", str(version.version))
    run_file.unlink(missing_ok=True)
    (work / "state" / "last.pt").unlink(missing_ok=True)
    return TrainReport(outcome, run.info.run_id, version)


if __name__ == "__main__":
    from flows import commands
    from flows.arguments import add_train_arguments
    from flows.script import run_script

    sys.exit(run_script("train", add_train_arguments, lambda args: commands.train(args, train_model)))
