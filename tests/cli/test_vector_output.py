"""`gigaseg segment --vector`: polygons per region, the same whatever the blocks, and bad input refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS

from flows.cli import main

NAMES = ["water", "forest", "field"]
ARGS = ["--tile", "64", "--chunk", "64", "--quiet", "--workers", "0", "--no-track"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded, untrained small U-Net for 2-band input and 3 classes (colours from the card)."""
    import torch

    from models import build
    from models.checkpoint import ModelCard, save_checkpoint

    torch.manual_seed(0)
    net = build("unet", in_channels=2, num_classes=3, width=4, depth=2)
    card = ModelCard(
        arch="unet",
        config=net.config,
        class_names=NAMES,
        class_colors=[(0, 0, 255), (0, 128, 0), (200, 200, 0)],
        normalization={"kind": "scale", "scale": 1 / 3000.0, "offset": -0.5},
        tile_size=64,
    )
    return save_checkpoint(tmp_path_factory.mktemp("models") / "unet.safetensors", net, card)


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    """2-band 300×260 GeoTIFF (10 m UTM pixels): smooth patches, a nodata corner (value 0)."""
    rng = np.random.default_rng(2)
    coarse = rng.random((2, 10, 9)) * 3000 + 100
    data = np.kron(coarse, np.ones((1, 30, 30)))[:, :260, :300]
    data = (data + rng.random(data.shape) * 300).astype(np.uint16)
    data[:, :40, :50] = 0
    path = tmp_path / "scene.tif"
    transform = Affine(10.0, 0, 400_000.0, 0, -10.0, 5_000_000.0)
    profile = {"driver": "GTiff", "height": 260, "width": 300, "count": 2, "dtype": "uint16", "nodata": 0}
    profile.update(crs=CRS.from_epsg(32633), transform=transform)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def _segment(scene: Path, model: Path, out: Path, *extra: str) -> int:
    return main(["segment", str(scene), "-m", str(model), "-o", str(out), *ARGS, *extra])


def _features(path: Path) -> list[tuple]:
    from pyogrio.raw import read

    meta, _, wkb, fields = read(str(path), layer=None if path.suffix != ".gpkg" else "classes")
    columns = dict(zip(meta["fields"], fields))
    geoms = shapely.normalize(shapely.simplify(shapely.from_wkb(wkb), 0))
    return sorted(
        (int(c), n, int(p), round(float(m), 5), round(float(a), 3), shapely.to_wkt(g, rounding_precision=3))
        for c, n, p, m, a, g in zip(
            columns["class_id"],
            columns["class_name"],
            columns["pixels"],
            columns["mean_probability"],
            columns["area"],
            geoms,
        )
    )


def test_polygons_from_small_blocks_equal_one_block_and_add_up_to_the_labels(scene, model, tmp_path):
    small, large = tmp_path / "small.gpkg", tmp_path / "large.gpkg"
    assert _segment(scene, model, tmp_path / "a.tif", "--block", "64", "--vector", str(small)) == 0
    assert _segment(scene, model, tmp_path / "b.tif", "--block", "512", "--vector", str(large)) == 0
    features = _features(small)
    assert features == _features(large)
    with rasterio.open(tmp_path / "a.tif") as src:
        labels = src.read(1)
    for c, name in enumerate(NAMES):
        mine = [f for f in features if f[0] == c]
        assert all(f[1] == name for f in mine)
        assert sum(f[2] for f in mine) == (labels == c).sum()
        assert sum(f[4] for f in mine) == pytest.approx((labels == c).sum() * 100.0)  # m², 10 m pixels
    assert all(0 < f[3] <= 1 for f in features)
    from pyogrio import read_info

    assert CRS.from_user_input(read_info(str(small), layer="classes")["crs"]) == CRS.from_epsg(32633)
    nodata_corner = shapely.box(400_000, 5_000_000 - 400, 400_500, 5_000_000)
    assert all(not shapely.from_wkt(f[5]).intersection(nodata_corner).area > 0 for f in features)
    assert not list(tmp_path.glob(".*")), "temporary files left behind"


def test_flatgeobuf_and_geoparquet_by_extension_with_a_style_beside(scene, model, tmp_path):
    import pyarrow.parquet as pq

    fgb, parquet = tmp_path / "p.fgb", tmp_path / "p.parquet"
    assert _segment(scene, model, tmp_path / "a.tif", "--block", "128", "--vector", str(fgb)) == 0
    assert _segment(scene, model, tmp_path / "b.tif", "--block", "128", "--vector", str(parquet)) == 0
    assert (tmp_path / "p.qml").exists()
    table = pq.read_table(parquet)
    assert b"geo" in table.schema.metadata
    assert sorted(table.column("class_id").to_pylist()) == sorted(f[0] for f in _features(fgb))


def test_cleaning_options_reach_the_polygons(scene, model, tmp_path):
    plain, cleaned = tmp_path / "plain.gpkg", tmp_path / "clean.gpkg"
    assert _segment(scene, model, tmp_path / "a.tif", "--block", "128", "--vector", str(plain)) == 0
    extra = ["--vector-min-area", "2000", "--vector-fill-holes", "5000", "--vector-simplify", "15"]
    assert _segment(scene, model, tmp_path / "b.tif", "--block", "128", "--vector", str(cleaned), *extra) == 0
    before, after = _features(plain), _features(cleaned)
    assert len(after) < len(before)
    assert min(f[4] for f in after) >= 2000 - 1e-6
    assert sum(f[4] for f in after) == pytest.approx(sum(f[4] for f in before), rel=0.02)


@pytest.mark.parametrize(
    "case, needle",
    [("exists", "already exists"), ("unknown", "unknown vector format"), ("volume", "polygons are for 2D")],
)
def test_bad_vector_requests_get_one_line_and_leave_nothing(case, needle, scene, model, tmp_path, capsys):
    vector = tmp_path / ("v.shp" if case == "unknown" else "v.gpkg")
    source = scene
    if case == "exists":
        vector.write_bytes(b"mine")
    if case == "volume":
        import nibabel as nib

        source = tmp_path / "vol.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), source)
    before = set(tmp_path.iterdir())
    out = tmp_path / ("o.nii.gz" if case == "volume" else "o.tif")
    code = main(["segment", str(source), "-m", str(model), "-o", str(out), *ARGS,
                 "--vector", str(vector)])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert set(tmp_path.iterdir()) == before
    if case == "exists":
        assert vector.read_bytes() == b"mine"
