"""The main job: segment one scene. Runnable as a script with the same arguments
as ``gigaseg segment`` (this is what ``ray submit ray_cluster.yaml
flows/segment_scene.py -- ARGS`` runs on a cluster head).

Blocks run on Ray actors (joining the cluster this runs on, or a local Ray)
unless ``workers`` is 0, which runs them in this process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from pipeline.config import SegmentConfig
from pipeline.segment import SegmentSummary, segment

WORKERS_ENV = "GIGASEG_WORKERS"
"""Default for ``--workers`` when neither the option nor the config sets it."""


def resolved_workers(config: SegmentConfig) -> int | None:
    """``config.workers``, else ``$GIGASEG_WORKERS``, else None (Ray decides the pool)."""
    if config.workers is not None:
        return config.workers
    env = os.environ.get(WORKERS_ENV, "").strip()
    return int(env) if env else None


def segment_scene(config: SegmentConfig) -> SegmentSummary:
    """Segment ``config.input`` into ``config.output`` on Ray (or in process with 0 workers)."""
    workers = resolved_workers(config)
    if workers == 0:
        return segment(config)
    from pipeline.ray_execution import RayBlockRunner

    return segment(config, run_blocks=RayBlockRunner(workers=workers, address=config.ray_address))


def main(argv: Sequence[str] | None = None) -> int:
    """``python flows/segment_scene.py ARGS``: exactly ``gigaseg segment ARGS``."""
    from flows.cli import main as cli_main

    return cli_main(["segment", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
