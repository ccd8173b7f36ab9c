"""Where MLflow keeps runs and the model registry, and how gigaseg opens runs.

Embedded default: a SQLite database ``mlflow.db`` (tracking + registry) and an
artifact folder ``mlruns/`` in the current working directory, so one machine
needs no server. ``MLFLOW_TRACKING_URI`` (e.g. ``http://mlflow:5000``) switches
everything — runs, artifacts (proxied by the server) and the registry — to a
server; the code paths are the same.

Artifacts may live on object storage while the tracking store stays SQLite:
``GIGASEG_MLFLOW_ARTIFACTS=s3://bucket/prefix`` puts the artifacts of each
experiment gigaseg creates under ``s3://bucket/prefix/<experiment>`` (MLflow fixes
an experiment's artifact location when it is created, so an experiment made
before the setting keeps its old one; a warning says so). MLflow reaches S3
through boto3; the standard ``AWS_ENDPOINT_URL`` (S3-compatible stores) is handed
on as MLflow's own ``MLFLOW_S3_ENDPOINT_URL`` unless that is set. A server keeps
choosing for itself (``mlflow server --artifacts-destination s3://… --serve-artifacts``).
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
ENV_ARTIFACTS = "GIGASEG_MLFLOW_ARTIFACTS"
"""Where the embedded store puts artifacts instead of ``mlruns/``: a folder or URL (``s3://bucket/prefix``)."""

TRAIN_EXPERIMENT = "gigaseg-train"
SEGMENT_EXPERIMENT = "gigaseg-segment"
PROMOTION_EXPERIMENT = "gigaseg-promotion"
REGISTER_EXPERIMENT = "gigaseg-register"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else SQLite ``mlflow.db`` in the working directory."""
    uri = os.environ.get(ENV_URI, "").strip()
    if uri:
        return uri
    return f"sqlite:///{Path.cwd().resolve() / DEFAULT_DB}"


def is_embedded(uri: str) -> bool:
    """Whether ``uri`` is a local database (artifacts then go to a local folder)."""
    return uri.startswith("sqlite:")


def artifact_root() -> str:
    """Where the embedded store's experiments keep their artifacts (one sub-folder each).

    ``GIGASEG_MLFLOW_ARTIFACTS`` when set (a URL stays a URL, a local path becomes
    absolute), else ``mlruns/`` beside the SQLite database of :func:`tracking_uri`.
    """
    from pipeline.stores.location import is_url

    given = os.environ.get(ENV_ARTIFACTS, "").strip().rstrip("/")
    if given:
        return given if is_url(given) else Path(given).expanduser().resolve().as_uri()
    uri = tracking_uri()
    folder = Path(uri.removeprefix("sqlite:///")).parent if is_embedded(uri) else Path.cwd()
    return (folder / DEFAULT_ARTIFACTS).resolve().as_uri()


def configure_object_storage() -> None:
    """Hand the standard ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) to MLflow's S3 client.

    MLflow passes ``MLFLOW_S3_ENDPOINT_URL`` to boto3 explicitly; a value the user
    set is kept.
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and not os.environ.get("MLFLOW_S3_ENDPOINT_URL"):
        os.environ["MLFLOW_S3_ENDPOINT_URL"] = endpoint


def configure() -> str:
    """Point MLflow's tracking and registry at :func:`tracking_uri`; returns the URI.

    Quietens MLflow's own INFO chatter (table creation, download bars): the
    pipeline reports progress itself.
    """
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    configure_object_storage()
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def experiment_id(name: str) -> str:
    """Id of experiment ``name``, created on first use.

    With the embedded store the artifacts of a new experiment go to
    ``<artifact_root()>/<name>`` (``mlruns/<name>`` beside ``mlflow.db`` by default,
    an absolute location, so a later run from another folder still finds them);
    a server decides for itself.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(name)
    embedded = is_embedded(mlflow.get_tracking_uri())
    if found is not None:
        root = os.environ.get(ENV_ARTIFACTS, "").strip()
        if embedded and root and not found.artifact_location.startswith(artifact_root()):
            logging.getLogger(__name__).warning(
                "experiment %s keeps its artifacts at %s (created before %s=%s)",
                name, found.artifact_location, ENV_ARTIFACTS, root,
            )  # fmt: skip
        return found.experiment_id
    location = f"{artifact_root()}/{name}" if embedded else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by another process
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def start_run(
    experiment: str,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    nested: bool = False,
    run_id: str | None = None,
) -> Any:
    """Start an MLflow run in ``experiment`` (or continue the existing ``run_id``); the active run.

    MLflow refusing (an unreachable server, a bad store) and artifacts on object storage that
    cannot be written are one-line :class:`InputError` s, raised before the run's work starts.
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
        check_artifact_location(active.info.artifact_uri)
    except InputError:
        mlflow.end_run("FAILED")
        raise
    return active


def end_run(status: str) -> None:
    """End the active run: ``FINISHED``, ``FAILED`` or ``KILLED``."""
    import mlflow

    mlflow.end_run(status)


def end_status(exc: BaseException | None) -> str:
    """How a run whose body raised ``exc`` (None: it did not) ends."""
    if exc is None:
        return "FINISHED"
    return "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"


@contextlib.contextmanager
def run(
    experiment: str,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    nested: bool = False,
    run_id: str | None = None,
) -> Iterator[Any]:
    """An MLflow run in ``experiment`` (or the existing ``run_id``, continued), as :func:`start_run`.

    Ends FINISHED, or FAILED (KILLED on Ctrl-C) if the body raises.
    """
    active = start_run(experiment, run_name, tags, nested, run_id)
    try:
        yield active
    except BaseException as exc:
        end_run(end_status(exc))
        raise
    end_run(end_status(None))


def check_artifact_location(artifact_uri: str) -> None:
    """Fail with one line naming the URL when a run's artifacts on object storage cannot be written.

    Checked when a run starts, before its work: a missing bucket, denied access or
    an unreachable endpoint would otherwise surface only when the first artifact
    is logged. Local folders and a server's proxied artifacts (``mlflow-artifacts:``)
    are MLflow's own business.
    """
    from pipeline.stores.location import check_writable_folder, is_url, location

    if not is_url(artifact_uri) or artifact_uri.startswith(("mlflow-artifacts:", "http:", "https:")):
        return
    where = location(artifact_uri)
    try:
        check_writable_folder(where)
    except InputError as exc:
        raise InputError(f"MLflow artifacts at {exc}") from None


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
