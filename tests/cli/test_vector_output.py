"""`gigaseg segment --vector`: polygons per region, the same whatever the blocks, and bad input refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.crs import CRS

from flows.cli import main
from tests._gis_cases import ARGS, NAMES, gis_model, gis_scene


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gis_model(tmp_path_factory.mktemp("models"))


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    return gis_scene(tmp_path)


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


def test_polygon_pieces_made_on_ray_actors_give_the_same_polygons(scene, model, tmp_path):
    here, actors = tmp_path / "here.fgb", tmp_path / "actors.fgb"
    assert _segment(scene, model, tmp_path / "a.tif", "--block", "64", "--vector", str(here)) == 0
    args = ["--block", "64", "--vector", str(actors), "--workers", "1", "--threads", "1"]
    assert _segment(scene, model, tmp_path / "b.tif", *args) == 0
    assert _features(actors) == _features(here)
