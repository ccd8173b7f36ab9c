"""The STAC item beside a segmentation: every field read back by pystac, checksums true, core schema valid."""

from __future__ import annotations

import json
from pathlib import Path

import pystac
import pytest
from pystac.extensions.classification import ClassificationExtension
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension

from flows.cli import main
from pipeline.exporters.stac import add_to_catalog, multihash_sha256
from tests._gis_cases import ARGS, NAMES, gis_model, gis_scene


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gis_model(tmp_path_factory.mktemp("models"))


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    return gis_scene(tmp_path)


def _item(scene: Path, model: Path, tmp_path: Path) -> tuple[pystac.Item, Path]:
    out = tmp_path / "classes.tif"
    extra = ["--probabilities", str(tmp_path / "probs.tif"), "--vector", str(tmp_path / "classes.gpkg")]
    extra += ["--block", "128"]
    assert main(["segment", str(scene), "-m", str(model), "-o", str(out), *ARGS, *extra]) == 0
    path = tmp_path / "classes.stac.json"
    return pystac.Item.from_file(str(path)), path


def test_the_item_describes_the_outputs_the_grid_and_the_classes(scene, model, tmp_path):
    item, _ = _item(scene, model, tmp_path)
    assert set(item.assets) == {"labels", "probabilities", "polygons", "labels_style"}
    for asset in item.assets.values():
        local = tmp_path / Path(asset.href).name
        assert FileExtension.ext(asset).checksum == multihash_sha256(local)
        assert FileExtension.ext(asset).size == local.stat().st_size
    labels = item.assets["labels"]
    assert labels.media_type == pystac.MediaType.COG
    classes = ClassificationExtension.ext(labels).classes
    assert [c.description for c in classes if not c.nodata] == NAMES
    assert [c.color_hint for c in classes[:3]] == ["0000FF", "008000", "C8C800"]
    assert [c.value for c in classes if c.nodata] == [255]
    band = RasterExtension.ext(labels).bands[0]
    assert band.nodata == 255 and band.data_type == "uint8" and band.spatial_resolution == 10.0
    proj = ProjectionExtension.ext(item)
    assert proj.code == "EPSG:32633" and proj.shape == [260, 300]
    assert proj.transform == [10.0, 0.0, 400000.0, 0.0, -10.0, 5000000.0]
    assert item.bbox[0] == pytest.approx(13.7, abs=0.1) and -90 < item.bbox[1] < 90
    links = {link.rel: link.href for link in item.links}
    assert links["derived_from"].endswith("scene.tif") and links["via"] == str(model)
    assert item.properties["gigaseg:model"] == str(model)


def test_the_item_validates_against_the_core_schema_shipped_with_pystac(scene, model, tmp_path):
    from pystac.validation import validate_dict

    _, path = _item(scene, model, tmp_path)
    data = json.loads(path.read_text())
    # the core STAC schemas ship inside pystac; the extensions' would be fetched, so they are not checked
    assert validate_dict(data, extensions=[]) is not None
    data["assets"]["labels"].pop("href")
    with pytest.raises(pystac.STACValidationError):
        validate_dict(data, extensions=[])


def test_a_catalog_lists_the_processed_scenes_once(scene, model, tmp_path):
    _item(scene, model, tmp_path)
    add_to_catalog(tmp_path, [tmp_path / "classes.tif", tmp_path / "missing.tif"])
    add_to_catalog(tmp_path, [tmp_path / "classes.tif"])
    catalog = pystac.Catalog.from_file(str(tmp_path / "catalog.json"))
    items = list(catalog.get_items())
    assert [i.id for i in items] == ["classes"]
