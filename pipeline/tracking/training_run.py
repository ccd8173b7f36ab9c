"""A training run in MLflow: its parameters, per-epoch metrics, the kept model's scores, tables,
preview and card, and the model registered as a new version.

A run interrupted before it finished is continued (same MLflow run) when the
trainer resumes its state: the run's id is kept in the work folder until the end.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.evaluation.preview import compose_preview
from pipeline.tracking import runs as tracking
from pipeline.tracking.model_versions import ModelVersion, register_version
from pipeline.training.request import TrainRequest
from pipeline.training.scenes import TrainingScenes
from pipeline.training.trainer import TrainOutcome, fit
from pipeline.training.validation import EpochResult

RUN_ID_FILE = "mlflow_run_id"


@dataclass
class TrainReport:
    """What the flow produced: the outcome, the MLflow run and the registered version."""

    outcome: TrainOutcome
    run_id: str
    version: ModelVersion | None


@contextlib.contextmanager
def training_run(request: TrainRequest) -> Iterator[tuple[Any, bool]]:
    """The MLflow run (continued when the trainer's state resumes) and whether it was continued.

    On success the run id and the trainer's resumable state are removed.
    """
    run_file, last_state = request.work / RUN_ID_FILE, request.state_dir / "last.pt"
    resume_run = run_file.read_text().strip() if run_file.exists() and last_state.exists() else None
    name = request.model_name
    tags = {"gigaseg.kind": "train", "gigaseg.model_name": name, "gigaseg.arch": request.settings.arch}
    with tracking.run(tracking.TRAIN_EXPERIMENT, f"train {name}", tags, run_id=resume_run) as run:
        run_file.write_text(run.info.run_id)
        yield run, resume_run is not None
    run_file.unlink(missing_ok=True)
    last_state.unlink(missing_ok=True)


def log_params(request: TrainRequest, data: TrainingScenes) -> None:
    """The settings and the data as run parameters."""
    import mlflow

    params = {
        **asdict(request.settings),
        "images": ";".join(map(str, request.images)),
        "labels": ";".join(map(str, request.labels)),
        "val_fraction": request.held_out_fraction,
        "val_image": request.val_image,
        "val_labels": request.val_labels,
        "num_classes": data.num_classes,
        "class_names": ",".join(data.class_names),
        "model_name": request.model_name,
    }
    mlflow.log_params(tracking.flat_params(params))


def epoch_logger(names: list[str]) -> Callable[[EpochResult], None]:
    """Log each epoch's loss and held-out scores (per class too) at the epoch's step."""
    import mlflow

    def on_epoch(r: EpochResult) -> None:
        metrics = {"train_loss": r.train_loss, "val_accuracy": r.accuracy, "epoch_seconds": r.seconds}
        metrics |= {"val_miou": r.miou, "val_mdice": r.mdice}
        for n, iou, dice in zip(names, r.iou, r.dice):
            metrics[tracking.metric_key(f"val_iou_{n}")] = iou
            metrics[tracking.metric_key(f"val_dice_{n}")] = dice
        mlflow.log_metrics({k: v for k, v in metrics.items() if v == v}, step=r.epoch)

    return on_epoch


def log_outcome(outcome: TrainOutcome, names: list[str]) -> None:
    """The kept epoch's scores, the held-out confusion matrix, a preview and the model card."""
    import mlflow

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
        image = compose_preview(p["image"], [p["labels"], p["prediction"]], names, outcome.card.class_colors)
        mlflow.log_image(image, "validation/preview.png")
    mlflow.log_dict(json.loads(outcome.card.to_json()), "model_card.json")


def register_outcome(outcome: TrainOutcome, model_name: str, run_id: str) -> ModelVersion:
    """Register the kept model as a new version of ``model_name``, tagged with its scores."""
    import mlflow

    best = outcome.best
    version = register_version(
        outcome.model,
        outcome.card,
        model_name,
        run_id,
        tags={
            "arch": outcome.card.arch,
            "val_miou": f"{best.miou:.6f}",
            "val_accuracy": f"{best.accuracy:.6f}",
            "best_epoch": str(outcome.best_epoch),
        },
    )
    mlflow.set_tag("gigaseg.registered_version", str(version.version))
    return version


def train_tracked(
    request: TrainRequest, data: TrainingScenes, log: Callable[[str], None] | None = None
) -> TrainReport:
    """Train on ``data`` inside an MLflow run; save the model to ``request.output`` and/or register it."""
    with training_run(request) as (run, continued):
        if not continued:
            log_params(request, data)
        outcome = fit(
            data.scenes,
            request.settings,
            data.num_classes,
            data.class_names,
            request.class_colors,
            state_dir=request.state_dir,
            on_epoch=epoch_logger(data.class_names),
            log=log,
        )
        log_outcome(outcome, data.class_names)
        if request.output is not None:
            from models.checkpoint import save_checkpoint

            save_checkpoint(request.output, outcome.model, outcome.card)
        version = register_outcome(outcome, request.model_name, run.info.run_id) if request.register else None
    return TrainReport(outcome, run.info.run_id, version)
