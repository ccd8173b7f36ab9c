"""Model versions in the MLflow registry: log a checkpoint as a version, resolve one back.

A version's artifacts are a plain folder, never a pickle::

    MLmodel                  flavour "gigaseg" (+ "onnx" for an ONNX model) + tensor signature + input example
    model.safetensors        weights; the header holds the model card — or, for a model made
                             elsewhere (``gigaseg register FILE``): model.onnx (card embedded),
                             model.ts or model.pt2 with model.card.json beside it
    card.json                the same card, readable in the MLflow UI
    input_example.json       one small input tile (serving_input_example.json too)

``models:/NAME/VERSION`` and ``models:/NAME@ALIAS`` resolve to a version
number first (so a run records exactly which version it used, even if the alias
moves meanwhile), then the folder is downloaded and only ``model.safetensors``
(or the model file) is read, by :func:`models.formats.load_model_file` — no
code from the registry runs.
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
MODEL_FILES = {
    "safetensors": WEIGHTS,
    "onnx": "model.onnx",
    "torchscript": "model.ts",
    "torch.export": "model.pt2",
}
"""The model file of a version, by format (:data:`models.formats.detect.FORMATS`)."""
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


def _write_model_file(folder: Path, model: SegmentationModel, card: ModelCard, source: Path | None) -> str:
    """The version's model file (and the card beside it where the format has no place for it)."""
    from models.formats.detect import ONNX, model_format
    from models.formats.onnx_model import embed_card
    from models.formats.sidecar import write_sidecar

    if source is None:
        save_checkpoint(folder / WEIGHTS, model, card)
        return WEIGHTS
    fmt = model_format(source)
    name = MODEL_FILES[fmt]
    shutil.copyfile(source, folder / name)
    if fmt == ONNX:
        embed_card(folder / name, card.to_json())
    else:
        write_sidecar(folder / name, card)
    return name


def _write_model_folder(
    folder: Path, model: SegmentationModel, card: ModelCard, ids: tuple[str, str], source: Path | None
) -> None:
    from mlflow.models import Model
    from mlflow.models.utils import _save_example

    run_id, model_id = ids
    weights = _write_model_file(folder, model, card, source)
    (folder / CARD).write_text(card.to_json())
    mlmodel = Model(signature=_signature(card, model.spatial_dims), run_id=run_id, model_id=model_id)
    mlmodel.add_flavor(FLAVOR, weights=weights, card=CARD, arch=card.arch, loader="models.formats")
    if weights == MODEL_FILES["onnx"]:
        import onnx

        mlmodel.add_flavor(
            "onnx", onnx_version=onnx.__version__, data=weights, providers=["CPUExecutionProvider"]
        )
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
    source: Path | None = None,
) -> ModelVersion:
    """Log ``model`` + ``card`` as a model of run ``run_id`` and register it as a new version of ``name``.

    ``source``: the file of a model made elsewhere (ONNX, TorchScript, .pt2), copied as it is.
    """
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
        _write_model_folder(staging, model, card, (run_id, logged.model_id), source)
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
    weights = next((local / f for f in MODEL_FILES.values() if (local / f).is_file()), None)
    if weights is None:
        raise InputError(f"-m {uri}: version {number} has no model file (not a gigaseg model)")
    found = ModelVersion(ref.name, number, run_id, weights)
    _downloads[key] = found
    return found


def register_file(path: str | Path, name: str) -> ModelVersion:
    """Register the model file at ``path`` (any format gigaseg runs) as a new version of ``name``.

    The model is loaded first (its card completed and checked against it), in a run of
    the ``gigaseg-register`` experiment that records where it came from.
    """
    import mlflow

    from models.checkpoint import CheckpointError
    from models.formats import load_model_file
    from models.formats.detect import SAFETENSORS, model_format

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such model file")
    try:
        fmt = model_format(path)
        model, card = load_model_file(path)
    except CheckpointError as exc:
        raise InputError(str(exc)) from None
    tags = {"gigaseg.kind": "register", "gigaseg.model_name": name, "gigaseg.format": fmt}
    with tracking.run(tracking.REGISTER_EXPERIMENT, f"register {name}", tags) as run:
        mlflow.log_params({"source": str(path), "format": fmt})
        return register_version(
            model, card, name, run.info.run_id, {"format": fmt}, source=None if fmt == SAFETENSORS else path
        )
