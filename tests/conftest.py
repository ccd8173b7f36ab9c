"""Shared fixtures: small rasters written on the fly, tiny models, the shared data folder."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS

import flows  # noqa: F401  (applies the embedded Prefect defaults before Prefect is imported)
from models.checkpoint import ModelCard, save_checkpoint

if TYPE_CHECKING:
    from bench.latency_proxy import LatencyProxy

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: Set by `.ci/run`. CI installs what the optional tests need (sshd and rsync, QGIS, the pydensecrf2
#: extra, ../shared/data), so there a missing piece is a failure, never a quiet skip.
IN_CI = os.environ.get("GIGASEG_CI") == "1"


def skip_unless_ci(reason: str) -> None:
    """Skip with ``reason`` on a user's clone; fail under CI (``GIGASEG_CI=1``), which must provide it."""
    if IN_CI:
        pytest.fail(f"GIGASEG_CI=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def import_or_skip_unless_ci(module: str, reason: str):
    """``pytest.importorskip`` that fails instead of skipping under CI."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        skip_unless_ci(f"{module} does not import: {reason}")


# `gigaseg segment` may run on Ray by default (RAY_ADDRESS, GPUs, large jobs); tests run blocks in
# process (subprocesses inherit this). Ray tests pass --workers / a runner explicitly.
os.environ.setdefault("GIGASEG_WORKERS", "0")


# `make test` runs `pytest -n 2 --dist loadfile`: a test file's tests stay on one worker, so its
# module fixtures (a trained model, a server process, a Ray cluster) are built once. The
# model-registry folder is the exception: its many independent tests share no fixture, and as
# whole files they would keep one worker busy long after the other has finished.
SPREAD_OVER_WORKERS = ("tests/models/",)

try:
    from xdist.scheduler import LoadFileScheduling
except ImportError:  # plain `pytest` without xdist
    LoadFileScheduling = None

if LoadFileScheduling is not None:

    class _FilesExceptModelTests(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return nodeid if path.startswith(SPREAD_OVER_WORKERS) else path

    def pytest_xdist_make_scheduler(config: pytest.Config, log):
        """``--dist loadfile``, except that the model-registry folder's tests are handed out one by one."""
        if config.getvalue("dist") == "loadfile":
            return _FilesExceptModelTests(config, log)
        return None


@pytest.fixture(scope="session", autouse=True)
def prefect_api() -> Iterator[str]:
    """One throw-away Prefect API per test process (Prefect's own test harness, SQLite in a temp folder).

    Its URL is exported so that ``gigaseg`` subprocesses started by tests use it
    instead of starting an ephemeral server each (and never touch ``~/.prefect``).
    """
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        url = PREFECT_API_URL.value()
        previous = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url
        try:
            yield url
        finally:
            if previous is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = previous


@pytest.fixture(scope="session", autouse=True)
def _mlflow_store(tmp_path_factory: pytest.TempPathFactory):
    """Every test session tracks into its own SQLite MLflow store, never the checkout's ``mlflow.db``."""
    folder = tmp_path_factory.mktemp("mlflow")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    yield folder
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An S3-protocol server on loopback (`bench.loopback.start_s3_server`), named by the standard variables.

    ``AWS_ENDPOINT_URL`` and test credentials are exported for the session, so boto3,
    s3fs, GDAL (through :mod:`pipeline.stores.object_storage_settings`) and
    subprocesses all reach it.
    """
    from bench.loopback import start_s3_server

    log = open(tmp_path_factory.mktemp("moto") / "server.log", "w")  # noqa: SIM115 (closed below)
    server, env = start_s3_server(log)
    previous = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env["AWS_ENDPOINT_URL"]
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture
def bucket(s3_endpoint: str):
    """A new, empty bucket on the loopback S3 server, as an ``ObjectLocation``."""
    import uuid

    import boto3

    from pipeline.stores.location import ObjectLocation

    name = f"gigaseg-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return ObjectLocation(f"s3://{name}")


def _fresh_s3_clients() -> None:
    """Forget the S3 clients made so far: the next ones read the endpoint from the environment again."""
    import s3fs

    import pipeline.stores.location as locations

    s3fs.S3FileSystem.clear_instance_cache()
    locations._filesystems.clear()


@pytest.fixture
def counted(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[LatencyProxy]:
    """Every S3 request of the test passes through a proxy that counts them (no delay added)."""
    from bench.latency_proxy import LatencyProxy

    with LatencyProxy(int(s3_endpoint.rsplit(":", 1)[1]), rtt=0.0) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        _fresh_s3_clients()
        yield proxy
    _fresh_s3_clients()


def count_requests(proxy: LatencyProxy, action: Callable[[], object]) -> int:
    """The S3 requests ``action`` makes, counted by the ``counted`` fixture's proxy."""
    before = proxy.requests
    action()
    return proxy.requests - before


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        skip_unless_ci(f"real test data not present at {SHARED_DATA} (a plain clone has no ../shared)")
    return SHARED_DATA


def write_raster(
    path: Path,
    data: np.ndarray,
    nodata: float | None = None,
    crs: str | None = "EPSG:32633",
    transform: Affine | None = None,
    **extra,
) -> Path:
    """Write a (bands, rows, cols) array as a tiled GeoTIFF."""
    count, height, width = data.shape
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": data.dtype,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 128,
        "blockysize": 128,
        "transform": transform or Affine(10.0, 0, 400_000.0, 0, -10.0, 5_000_000.0),
        **({"crs": CRS.from_string(crs)} if crs else {}),
        **extra,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.fixture
def small_scene(tmp_path: Path) -> Path:
    """3-band uint16 700×530 GeoTIFF with a nodata corner (value 0)."""
    rng = np.random.default_rng(1)
    data = (rng.random((3, 530, 700)) * 3000 + 100).astype(np.uint16)
    data[:, :60, :90] = 0
    return write_raster(tmp_path / "scene.tif", data, nodata=0)


#: Brightness cuts of :func:`tiny_checkpoint` in normalised units: quartiles of ``v`` on the
#: tests' uniform-noise scenes (values 100–3100), so each of the 4 classes holds about a quarter.
TINY_THRESHOLDS = (-0.04, 0.03, 0.10)


def noise_scene_array(shape: tuple[int, int], seed: int, bands: int = 3) -> np.ndarray:
    """Uniform uint16 noise in 100–3100 per band: the tests' usual synthetic scene."""
    rng = np.random.default_rng(seed)
    return (rng.random((bands, *shape)) * 3000 + 100).astype(np.uint16)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small U-Net for 3-band input and 4 classes whose labels follow the image.

    Hand-set weights (``tests/_varying_models.py``): the weighted band brightness, half
    5×5-smoothed and half the pixel's own, cut into 4 classes. Asserted here to give
    all 4 classes, each on at least 15% of a noise scene, so it cannot decay to one class.
    """
    from tests._varying_models import image_following_unet, label_spread

    model = image_following_unet("unet", 3, TINY_THRESHOLDS, band_weights=(0.5, 0.3, 0.2), width=4, depth=2)
    card = ModelCard(
        arch="unet",
        config=model.config,
        class_names=["water", "forest", "field", "town"],
        class_colors=[(0, 0, 255), (0, 128, 0), (200, 200, 0), (255, 0, 0)],
        normalization={"kind": "scale", "scale": 1 / 3000.0, "offset": -0.5},
        tile_size=64,
    )
    sample = torch.from_numpy(noise_scene_array((128, 128), seed=0).astype(np.float32) / 3000.0 - 0.5)
    with torch.no_grad():
        labels = model(sample[None]).argmax(1).numpy()
    label_spread(labels, nodata=None).check(min_classes=4, min_share=0.15)
    path = tmp_path_factory.mktemp("models") / "tiny_unet.safetensors"
    return save_checkpoint(path, model, card)
