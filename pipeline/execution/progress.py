"""Progress for long work: blocks and tiles done, throughput, ETA; quiet on request.

A bar on stderr when it is a terminal and the user did not ask for quiet;
otherwise nothing until the one-line summary.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


class Progress:
    """Counts megapixels done (the bar's unit) and blocks/tiles/retries (the postfix)."""

    def __init__(
        self,
        total_pixels: int,
        total_blocks: int,
        desc: str,
        quiet: bool = False,
        stream: TextIO | None = None,
        done_pixels: int = 0,
        done_blocks: int = 0,
    ):
        stream = stream or sys.stderr
        self.stream = stream
        self.enabled = not quiet and stream.isatty()
        self.blocks = done_blocks
        self.total_blocks = total_blocks
        self.tiles = 0
        self.retries = 0
        self.started = time.perf_counter()
        self._total_pixels = total_pixels
        self._done_pixels = min(done_pixels, total_pixels)
        self._bar = tqdm(
            total=total_pixels,
            initial=min(done_pixels, total_pixels),
            unit="Mpx",
            unit_scale=1e-6,  # counts whole pixels (exact), shows megapixels
            desc=desc,
            file=stream,
            disable=not self.enabled,
            dynamic_ncols=True,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} Mpx "
            "[{elapsed}<{remaining}, {rate_fmt}{postfix}]",
        )
        self._refresh()

    def _refresh(self) -> None:
        post = f"blocks {self.blocks}/{self.total_blocks} tiles {self.tiles}"
        if self.retries:
            post += f" retries {self.retries}"
        self._bar.set_postfix_str(post, refresh=False)

    def tiles_done(self, n: int) -> None:
        """Note ``n`` more tiles through the model."""
        self.tiles += n

    def block_done(self, pixels: int) -> None:
        """Note one finished block of ``pixels`` pixels."""
        self.blocks += 1
        self._refresh()
        step = min(pixels, self._total_pixels - self._done_pixels)
        self._done_pixels += step
        self._bar.update(step)

    def retry(self, what: str) -> None:
        """Note a retried block (shown in the bar and written as a line)."""
        self.retries += 1
        self._refresh()
        if self.enabled:
            self._bar.write(f"retrying {what}", file=self.stream)

    def close(self) -> None:
        """Remove the bar."""
        self._bar.close()

    @property
    def elapsed(self) -> float:
        """Seconds since start."""
        return time.perf_counter() - self.started
