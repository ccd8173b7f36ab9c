"""The main job: segment one scene. Runnable as a script with the same arguments
as ``gigaseg segment`` (this is what ``ray submit ray_cluster.yaml
flows/segment_scene.py -- ARGS`` runs on a cluster head).
"""

from __future__ import annotations

import sys

from pipeline.config import SegmentConfig
from pipeline.segment import SegmentSummary, segment


def segment_scene(config: SegmentConfig) -> SegmentSummary:
    """Segment ``config.input`` into ``config.output``."""
    return segment(config)


if __name__ == "__main__":
    from flows.cli import main

    sys.exit(main(["segment", *sys.argv[1:]]))
