"""Process-wide memory: a bounded GDAL cache (unless the user set it), freed heap returned, lean imports."""

from __future__ import annotations

import os
import subprocess
import sys

from pipeline.execution.process_memory import GDAL_CACHE_MB


def _cache_after_bounding(env: dict[str, str]) -> str:
    code = (
        "import os\n"
        "from pipeline.execution.process_memory import bound_process_memory\n"
        "bound_process_memory()\n"
        "print(os.environ['GDAL_CACHEMAX'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_gdal_cache_is_bounded_by_default():
    env = {k: v for k, v in os.environ.items() if k != "GDAL_CACHEMAX"}
    assert _cache_after_bounding(env) == str(GDAL_CACHE_MB)


def test_a_users_gdal_cache_setting_wins():
    assert _cache_after_bounding({**os.environ, "GDAL_CACHEMAX": "512"}) == "512"


_TRIM_PROBE = """
import numpy as np
from pipeline.execution.process_memory import _malloc_trim, release_freed_memory

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) // 1024

if _malloc_trim() is None:
    print("no-glibc")
    raise SystemExit
chunks = [np.ones(8000, dtype=np.float64) for _ in range(8000)]  # 64 kB each: heap, not mmap
pin = np.ones(8000)  # allocated last: keeps the heap's top in use, so free() cannot shrink it
filled = rss()
del chunks
freed = rss()
release_freed_memory()
print(filled, freed, rss())
"""


def test_freed_heap_goes_back_to_the_system():
    done = subprocess.run([sys.executable, "-c", _TRIM_PROBE], capture_output=True, text=True, check=True)
    if done.stdout.strip() == "no-glibc":
        import pytest

        pytest.skip("malloc_trim is glibc's; nothing to release elsewhere")
    filled, freed, trimmed = map(int, done.stdout.split())
    assert freed > filled - 100, "the probe's freed chunks stay resident until trimmed"
    assert trimmed < freed - 300, (filled, freed, trimmed)


_IMPORT_PROBE = """
import sys
import numpy as np
from pipeline.inputs.formats import describe_input
from pipeline.job.steps import segment
from tests.conftest import write_raster

path = write_raster(__import__("pathlib").Path(sys.argv[1]) / "scene.tif", np.ones((1, 16, 16), np.uint8))
describe_input(path)
print(" ".join(m for m in ("nibabel", "pydicom") if m in sys.modules) or "none")
"""


def test_a_raster_run_does_not_load_the_volume_readers(tmp_path):
    """nibabel and pydicom (~30 MiB resident) load only when a volume is read."""
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "none"
