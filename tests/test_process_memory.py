"""The process-wide memory bounds: GDAL's cache is bounded unless the user set it."""

from __future__ import annotations

import os
import subprocess
import sys

from pipeline.process_memory import GDAL_CACHE_MB


def _cache_after_bounding(env: dict[str, str]) -> str:
    code = (
        "import os\n"
        "from pipeline.process_memory import bound_process_memory\n"
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
