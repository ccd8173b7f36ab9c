"""The main job: segment one scene. Runnable as a script with the same arguments
as ``gigaseg segment`` (this is what ``ray submit ray_cluster.yaml
flows/segment_scene.py -- ARGS`` runs on a cluster head).
"""

from __future__ import annotations

import os
import sys

from pipeline.config import SegmentConfig
from pipeline.segment import SegmentSummary, segment


def segment_scene(
    config: SegmentConfig,
    labels: str | os.PathLike[str] | None = None,
    regions: str | os.PathLike[str] | None = None,
    track: bool = True,
) -> SegmentSummary:
    """Segment ``config.input`` into ``config.output``.

    ``track``: the run is an MLflow run with per-region metrics (per block, or
    per polygon of ``regions``; scored against ``labels`` when given).
    """
    if not track:
        if labels is not None or regions is not None:
            from pipeline.errors import InputError

            raise InputError("--labels and --regions need tracking (drop --no-track)")
        return segment(config)
    from pipeline.segment_tracking import track_segment_run

    return track_segment_run(config, labels=labels, regions=regions).summary


if __name__ == "__main__":
    from flows.cli import main

    sys.exit(main(["segment", *sys.argv[1:]]))
