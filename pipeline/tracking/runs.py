"""Where MLflow keeps runs and the model registry, and how gigaseg opens runs.

Embedded default: a SQLite database ``mlflow.db`` (tracking + registry) and an
artifact folder ``mlruns/`` in the current working directory, so one machine
needs no server. ``MLFLOW_TRACKING_URI`` (e.g. ``http://mlflow:5000``) switches
everything — runs, artifacts (proxied by the server) and the registry — to a
server; the code paths are the same.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import InputError

ENV_URI = "MLFLOW_TRACKING_URI"
DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlruns"

TRAIN_EXPERIMENT = "gigaseg-train"
SEGMENT_EXPERIMENT = "gigaseg-segment"
PROMOTION_EXPERIMENT = "gigaseg-promotion"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else SQLite ``mlflow.db`` in the working directory."""
    uri = os.environ.get(ENV_URI, "").strip()
    if uri:
        return uri
    return f"sqlite:///{Path.cwd().resolve() / DEFAULT_DB}"


def is_embedded(uri: str) -> bool:
    """Whether ``uri`` is a local database (artifacts then go to a local folder)."""
    return uri.startswith("sqlite:")


def configure() -> str:
    """Point MLflow's tracking and registry at :func:`tracking_uri`; returns the URI.

    Quietens MLflow's own INFO chatter (table creation, download bars): the
    pipeline reports progress itself.
    """
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def experiment_id(name: str) -> str:
    """Id of experiment ``name``, created on first use.

    With the embedded store the artifacts of a new experiment go to
    ``mlruns/<name>`` beside ``mlflow.db`` (an absolute path, so a later run
    from another folder still finds them); a server decides for itself.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    uri = mlflow.get_tracking_uri()
    location = None
    if is_embedded(uri):
        db = Path(uri.removeprefix("sqlite:///"))
        location = (db.parent / DEFAULT_ARTIFACTS / name).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by another process
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


@contextlib.contextmanager
def run(
    experiment: str,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    nested: bool = False,
    run_id: str | None = None,
) -> Iterator[Any]:
    """An MLflow run in ``experiment`` (or the existing ``run_id``, continued).

    Ends FINISHED, or FAILED (KILLED on Ctrl-C) if the body raises.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        configure()
        exp = experiment_id(experiment)
        if run_id is not None:
            active = mlflow.start_run(run_id=run_id, nested=nested)
        else:
            active = mlflow.start_run(
                experiment_id=exp, run_name=run_name, tags=dict(tags or {}), nested=nested
            )
    except MlflowException as exc:
        raise InputError(f"MLflow at {tracking_uri()}: {exc.message.splitlines()[0]}") from None
    try:
        yield active
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def flat_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Parameters as MLflow wants them: flat string values (nested dicts get dotted keys)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, f"{name}."))
        else:
            text = str(value)
            out[name] = text if len(text) <= 6000 else text[:5997] + "..."
    return out


def metric_key(text: str) -> str:
    """A metric/param key MLflow accepts (letters, digits, ``_ - . / space``)."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in text)
