"""``gigaseg watch`` over a STAC catalog or a saved search result: each item is a scene,
segmented like the item given to ``gigaseg segment``, once; a replaced asset makes the item new."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio

from flows.cli import main
from models.checkpoint import load_checkpoint, save_checkpoint
from pipeline.job.config import SegmentConfig
from pipeline.job.steps import segment
from pipeline.watch.ledger import open_ledger
from pipeline.watch.scan import scan
from tests.conftest import noise_scene_array, write_raster

NAMES = ("green", "red", "nir")
OPTIONS = ["--workers", "0", "--tile", "64", "--block", "128", "--chunk", "64", "--quiet"]


@pytest.fixture
def named_checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """The tiny model with its bands named green, red, nir."""
    model, card = load_checkpoint(tiny_checkpoint)
    card.band_names = list(NAMES)
    return save_checkpoint(tmp_path / "named.safetensors", model, card)


def _item(folder: Path, name: str, seed: int, missing: str | None = None) -> pystac.Item:
    """An item of three single-band COG-like files in its own folder (assets nir, green, red:
    not the model's order), named by ``eo:bands`` common names."""
    folder.mkdir(parents=True)
    image = noise_scene_array((96, 128), seed=seed)
    item = pystac.Item(name, None, None, dt.datetime(2024, 6, seed, tzinfo=dt.UTC), {})
    for key, band in (("B08", "nir"), ("B03", "green"), ("B04", "red")):
        file = folder / f"{name}_{key}.tif"
        if band != missing:
            write_raster(file, image[NAMES.index(band)][None])
        bands = [{"name": key, "common_name": band}]
        item.add_asset(key, pystac.Asset(str(file), roles=["data"], extra_fields={"eo:bands": bands}))
    return item


def _catalog(root: Path, items: list[pystac.Item]) -> Path:
    catalog = pystac.Catalog("inbox", "scenes to segment")
    collection = pystac.Collection(
        "june", "June scenes", pystac.Extent(pystac.SpatialExtent([[-180, -90, 180, 90]]),
                                             pystac.TemporalExtent([[None, None]])),
    )  # fmt: skip
    catalog.add_child(collection)
    for item in items:
        collection.add_item(item)
    catalog.normalize_hrefs(str(root))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


def _labels(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _outputs(folder: Path) -> dict[str, Path]:
    return {p.name.split(".")[0]: p for p in folder.glob("*.labels.tif")}


def test_watching_a_catalog_segments_each_item_once_like_segment_does(tmp_path, named_checkpoint, capsys):
    inbox = tmp_path / "inbox"
    items = [_item(inbox / "june" / n, n, s) for n, s in (("S2A_1", 1), ("S2A_2", 2))]
    items.append(_item(inbox / "june" / "S2A_3", "S2A_3", 3, missing="red"))
    catalog = _catalog(inbox, items)
    out = tmp_path / "segmented"
    out.mkdir()
    command = ["watch", str(catalog), "--output-dir", str(out), "-m", str(named_checkpoint), "--once"]
    command += OPTIONS

    assert main(command) == 1  # the item whose red band file is missing fails; the others finish
    err = capsys.readouterr().err
    assert "S2A_3" in err and "B04" in err and "Traceback" not in err
    found = _outputs(out)
    assert sorted(found) == ["june__S2A_1__S2A_1", "june__S2A_2__S2A_2"]
    for name in ("S2A_1", "S2A_2"):
        direct = tmp_path / f"{name}.tif"
        item_file = inbox / "june" / name / f"{name}.json"
        segment(SegmentConfig(input=item_file, model=str(named_checkpoint), output=direct,
                              tile=64, block=128, chunk=64, quiet=True))  # fmt: skip
        watched = _labels(found[f"june__{name}__{name}"])
        np.testing.assert_array_equal(watched, _labels(direct))
        assert len(np.unique(watched)) > 1
    status = {Path(e.source).name: e.status for e in open_ledger(out).entries()}
    assert status == {"S2A_1.json": "done", "S2A_2.json": "done", "S2A_3.json": "failed"}

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*.labels.tif")}
    assert main(command) == 0  # nothing new; the failed item is not retried while unchanged
    capsys.readouterr()
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.labels.tif")} == stamps

    # A replaced asset (same item JSON) is a new scene: S2A_2 is redone, S2A_1 is not.
    band = inbox / "june" / "S2A_2" / "S2A_2_B08.tif"
    write_raster(band, noise_scene_array((96, 128), seed=9)[:1])
    before = {e.source: e.content_id for e in open_ledger(out).entries()}
    main(command)
    capsys.readouterr()
    after = {e.source: e.content_id for e in open_ledger(out).entries()}
    changed = {Path(s).name for s in after if before.get(s) != after[s]}
    assert changed == {"S2A_2.json"}
    assert len(list(out.glob("june__S2A_2__S2A_2.*.labels.tif"))) == 2  # the old result kept
    assert len(list(out.glob("june__S2A_1__S2A_1.*.labels.tif"))) == 1


def test_a_saved_search_result_gives_the_same_labels_as_the_catalog(tmp_path, named_checkpoint):
    inbox = tmp_path / "inbox"
    items = [_item(inbox / "june" / n, n, s) for n, s in (("S2A_1", 1), ("S2A_2", 2))]
    catalog = _catalog(inbox, items)
    search = tmp_path / "search" / "results.json"  # elsewhere: asset hrefs must be absolute there
    search.parent.mkdir()
    listed = [item.clone() for item in pystac.Catalog.from_file(str(catalog)).get_items(recursive=True)]
    for item in listed:
        item.make_asset_hrefs_absolute()
    search.write_text(json.dumps(pystac.ItemCollection(listed).to_dict(transform_hrefs=False)))

    by_catalog, by_search = tmp_path / "by_catalog", tmp_path / "by_search"
    for listing, out in ((catalog, by_catalog), (search, by_search)):
        out.mkdir()
        command = ["watch", str(listing), "--output-dir", str(out), "-m", str(named_checkpoint), "--once"]
        assert main([*command, *OPTIONS]) == 0
    assert sorted(_outputs(by_search)) == ["S2A_1", "S2A_2"]  # inline items are named by id
    for name in ("S2A_1", "S2A_2"):
        np.testing.assert_array_equal(
            _labels(_outputs(by_search)[name]), _labels(_outputs(by_catalog)[f"june__{name}__{name}"])
        )
    assert not list(Path(search.parent).glob("*.json"))[1:], "nothing written beside the search result"


def test_scan_of_a_catalog_lists_its_items_with_stable_identities(tmp_path):
    inbox = tmp_path / "inbox"
    catalog = _catalog(inbox, [_item(inbox / "june" / "S2A_1", "S2A_1", 1)])
    (tmp_path / "out").mkdir()
    ledger = open_ledger(tmp_path / "out")
    first = scan(str(catalog), "*.tif", ledger)
    assert [(s.relative, s.local) for s in first] == [("june/S2A_1/S2A_1.json", True)]
    assert scan(str(catalog), "*.tif", ledger) == first


@pytest.mark.parametrize(
    "listing, said",
    [
        ("missing.json", "missing.json: no such STAC file"),
        ("item.json", "must be a STAC catalog, collection or item collection (this one is 'Feature')"),
        ("broken.json", "broken.json: not JSON"),
    ],
)
def test_a_watched_json_that_is_not_a_listing_is_one_line(tmp_path, tiny_checkpoint, capsys, listing, said):
    (tmp_path / "item.json").write_text(json.dumps(_item(tmp_path / "one", "one", 1).to_dict()))
    (tmp_path / "broken.json").write_text('{"type": "Catalog", ')
    out = tmp_path / "out"
    out.mkdir()
    command = ["watch", str(tmp_path / listing), "--output-dir", str(out), "-m", str(tiny_checkpoint)]
    command.append("--once")
    assert main(command) == 2
    err = capsys.readouterr().err.strip()
    assert said in err and len(err.splitlines()) == 1
    assert not list(out.iterdir())
