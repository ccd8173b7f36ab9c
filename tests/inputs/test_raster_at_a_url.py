"""A raster at a URL is checked in one request, and what is wrong with it is said in one line."""

from __future__ import annotations

import numpy as np
import pytest

from bench.latency_proxy import LatencyProxy
from pipeline.errors import InputError
from pipeline.inputs.raster import check_readable_file
from pipeline.stores.location import ObjectLocation
from tests.conftest import count_requests, write_raster


def test_a_raster_file_at_a_url_is_checked_in_one_request(
    bucket: ObjectLocation, counted: LatencyProxy, tmp_path
) -> None:
    scene = bucket / "scene.tif"
    scene.write_bytes(write_raster(tmp_path / "s.tif", np.zeros((1, 8, 8), np.uint8)).read_bytes())
    assert count_requests(counted, lambda: check_readable_file(scene)) == 1


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("folder", "is a folder, expected a raster file"),
        ("empty", "file is empty"),
        ("missing", "no such file"),
    ],
)
def test_a_folder_an_empty_object_or_nothing_at_the_url_is_one_line(
    bucket: ObjectLocation, what: str, message: str
) -> None:
    if what == "folder":
        (bucket / "scene.tif" / "part").write_bytes(b"x")
    elif what == "empty":
        (bucket / "scene.tif").write_bytes(b"")
    with pytest.raises(InputError) as caught:
        check_readable_file(bucket / "scene.tif")
    assert str(caught.value) == f"{bucket / 'scene.tif'}: {message}"
