"""Model versions in the MLflow registry: log a checkpoint as a version, resolve one back.

A version's artifacts are a plain folder, never a pickle::

    MLmodel                  flavour "gigaseg" + tensor signature + input example
    model.safetensors        weights; the header holds the model card
    card.json                the same card, readable in the MLflow UI
    input_example.json       one small input tile (serving_input_example.json too)

``models:/NAME/VERSION`` and ``models:/NAME@ALIAS`` resolve to a version
number first (so a run records exactly which version it used, even if the alias
moves meanwhile), then the folder is downloaded and only ``model.safetensors``
is read, by :func:`models.checkpoint.load_checkpoint` — no code from the
registry runs.
"""

from __future__ import annotations

import atexit
import contextlib
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models import SegmentationModel
from models.checkpoint import ModelCard, save_checkpoint
from pipeline.errors import InputError
from pipeline.tracking import runs as tracking

PREFIX = "models:/"
FLAVOR = "gigaseg"
WEIGHTS = "model.safetensors"
CARD = "card.json"
CHAMPION = "champion"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


@dataclass(frozen=True)
class ModelRef:
    """A parsed ``models:/`` URI: a name and either a version or an alias."""

    name: str
    version: int | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, uri: str) -> ModelRef:
        """Parse ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``."""
        m = _URI.match(uri.strip())
        if m is None:
            raise InputError(f"-m {uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
        version = m.group("version")
        return cls(m.group("name"), int(version) if version else None, m.group("alias"))


@dataclass(frozen=True)
class ModelVersion:
    """One registered version; ``checkpoint`` is its downloaded weights (None: not downloaded)."""

    name: str
    version: int
    run_id: str | None
    checkpoint: Path | None

    @property
    def uri(self) -> str:
        """The alias-free URI of this version."""
        return f"{PREFIX}{self.name}/{self.version}"


def _signature(card: ModelCard, spatial_dims: int) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    free = (-1,) * spatial_dims
    inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, card.in_channels, *free), "image")])
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, card.num_classes, *free), "logits")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def _write_model_folder(
    folder: Path, model: SegmentationModel, card: ModelCard, run_id: str, model_id: str
) -> None:
    from mlflow.models import Model
    from mlflow.models.utils import _save_example

    save_checkpoint(folder / WEIGHTS, model, card)
    (folder / CARD).write_text(card.to_json())
    mlmodel = Model(signature=_signature(card, model.spatial_dims), run_id=run_id, model_id=model_id)
    mlmodel.add_flavor(FLAVOR, weights=WEIGHTS, card=CARD, arch=card.arch, loader="models.checkpoint")
    side = max(model.downsampling, 16)
    example = np.zeros((1, card.in_channels, *(side,) * model.spatial_dims), dtype=np.float32)
    _save_example(mlmodel, example, str(folder))
    mlmodel.save(str(folder / "MLmodel"))


@contextlib.contextmanager
def _mlflow_event_lines_silenced() -> Iterator[None]:
    """MLflow's own "Successfully registered model" / "Created version" lines, kept off stderr."""
    from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

    enabled = MLFLOW_LOGGING_STREAM.enabled
    MLFLOW_LOGGING_STREAM.enabled = False
    try:
        yield
    finally:
        MLFLOW_LOGGING_STREAM.enabled = enabled


def register_version(
    model: SegmentationModel,
    card: ModelCard,
    name: str,
    run_id: str,
    tags: dict[str, str] | None = None,
) -> ModelVersion:
    """Log ``model`` + ``card`` as a model of run ``run_id`` and register it as a new version of ``name``."""
    import mlflow

    client = mlflow.MlflowClient()
    logged = mlflow.initialize_logged_model(
        name=name,
        source_run_id=run_id,
        params={"arch": card.arch, "classes": ",".join(card.class_names)},
        tags={"gigaseg.arch": card.arch},
    )
    staging = Path(tempfile.mkdtemp(prefix="gigaseg-model-"))
    try:
        _write_model_folder(staging, model, card, run_id, logged.model_id)
        client.log_model_artifacts(logged.model_id, str(staging))
        mlflow.finalize_logged_model(logged.model_id, "READY")
        with _mlflow_event_lines_silenced():  # gigaseg says what it registered, once (or not: --quiet)
            version = mlflow.register_model(f"{PREFIX}{logged.model_id}", name, tags=tags)
        client.update_model_version(
            name, version.version, description=f"{card.arch}, {card.num_classes} classes, run {run_id}"
        )
        return ModelVersion(name, int(version.version), run_id, None)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_downloads: dict[tuple[str, str, int], ModelVersion] = {}
_cleanup: list[Path] = []


def _cleanup_later(path: Path) -> None:
    if not _cleanup:
        atexit.register(lambda: [shutil.rmtree(p, ignore_errors=True) for p in _cleanup])
    _cleanup.append(path)


def version_number(ref: ModelRef) -> int:
    """The version ``ref`` names now (an alias is looked up in the registry)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    tracking.configure()
    client = mlflow.MlflowClient()
    try:
        if ref.alias is not None:
            return int(client.get_model_version_by_alias(ref.name, ref.alias).version)
        client.get_model_version(ref.name, str(ref.version))
        return int(ref.version)  # type: ignore[arg-type]
    except MlflowException as exc:
        what = f"@{ref.alias}" if ref.alias else f"/{ref.version}"
        first = exc.message.splitlines()[0]
        raise InputError(
            f"-m models:/{ref.name}{what}: not in the registry at {tracking.tracking_uri()} ({first})"
        ) from None


def resolve(uri: str) -> ModelVersion:
    """The registered version ``uri`` names, downloaded once per process (versions are immutable)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    ref = ModelRef.parse(uri)
    number = version_number(ref)
    key = (tracking.tracking_uri(), ref.name, number)
    if key in _downloads and _downloads[key].checkpoint.exists():  # type: ignore[union-attr]
        return _downloads[key]
    client = mlflow.MlflowClient()
    run_id = client.get_model_version(ref.name, str(number)).run_id
    dest = Path(tempfile.mkdtemp(prefix="gigaseg-registry-"))
    _cleanup_later(dest)
    try:
        local = Path(mlflow.artifacts.download_artifacts(f"{PREFIX}{ref.name}/{number}", dst_path=str(dest)))
    except (MlflowException, OSError) as exc:
        raise InputError(f"-m {uri}: cannot download version {number} ({exc})") from None
    weights = local / WEIGHTS
    if not weights.is_file():
        raise InputError(f"-m {uri}: version {number} has no {WEIGHTS} (not a gigaseg model)")
    found = ModelVersion(ref.name, number, run_id, weights)
    _downloads[key] = found
    return found
