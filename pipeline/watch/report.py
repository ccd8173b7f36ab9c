"""What one scan of a watched location did: scenes segmented, scenes failed, scenes unchanged."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.watch.ledger import failure_reason


@dataclass
class WatchReport:
    """What one scan did."""

    processed: list[tuple[str, str]] = field(default_factory=list)
    """(scene, output) pairs written by this scan."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(scene, one-line reason) pairs."""
    unchanged: int = 0
    seconds: float = 0.0
    actors: list[dict[str, Any]] = field(default_factory=list)
    """The scan's one actor pool, each actor as it described itself at the end (empty in process)."""

    def add_processed(self, scene: str, output: str) -> None:
        """``scene`` was segmented into ``output``."""
        self.processed.append((scene, output))

    def add_failed(self, scene: str, error: BaseException) -> str:
        """``scene`` failed with ``error``; returns the one-line reason recorded."""
        reason = failure_reason(error)
        self.failed.append((scene, reason))
        return reason

    def line(self) -> str:
        """One-line summary.

        >>> WatchReport([("a.tif", "a.labels.tif")], unchanged=2, seconds=3.0).line()
        '1 scene(s) segmented, 2 unchanged, 3.0 s'
        """
        failed = f", {len(self.failed)} failed" if self.failed else ""
        return (
            f"{len(self.processed)} scene(s) segmented{failed}, "
            f"{self.unchanged} unchanged, {self.seconds:.1f} s"
        )
