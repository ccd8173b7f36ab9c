"""The progress bar counts pixels exactly and is silent when asked or without a terminal."""

from __future__ import annotations

import io
import warnings

from hypothesis import given
from hypothesis import strategies as st

from pipeline.execution.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@given(st.lists(st.integers(min_value=1, max_value=5_000_000), min_size=1, max_size=40), st.data())
def test_bar_reaches_its_total_exactly_and_never_passes_it(block_pixels, data):
    total = sum(block_pixels)
    done_before = data.draw(st.integers(min_value=0, max_value=total))
    stream = _Terminal()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tqdm warns when clamping a bar past its total
        progress = Progress(total, len(block_pixels), "segment", stream=stream, done_pixels=done_before)
        for pixels in block_pixels:
            progress.block_done(pixels)
            assert progress._bar.n <= progress._bar.total
        assert abs(progress._bar.n - progress._bar.total) < 1e-9
        progress.close()
    assert "Mpx" in stream.getvalue()


def test_quiet_or_no_terminal_writes_nothing():
    for stream, quiet in ((_Terminal(), True), (io.StringIO(), False)):
        progress = Progress(10_000, 2, "segment", quiet=quiet, stream=stream)
        progress.tiles_done(4)
        progress.block_done(5_000)
        progress.retry("block [0, 1]")
        progress.close()
        assert stream.getvalue() == ""
        assert (progress.blocks, progress.tiles, progress.retries) == (1, 4, 1)
