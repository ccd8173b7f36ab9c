"""Span (interval arithmetic on a line) agrees with the chain arithmetic it generalises."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from models.receptive_field import Reach, Span, aligned_upsample, chain_reach, conv, span_reach, tconv, unpool

# (kind, kernel, stride, dilation): centred convolutions and poolings.
centred = st.tuples(st.sampled_from([1, 3, 5, 7]), st.sampled_from([1, 2]), st.sampled_from([1, 2, 3]))


@settings(max_examples=40, deadline=None)
@given(st.lists(centred, min_size=1, max_size=6))
def test_centred_chains_match_reach_arithmetic(ops):
    factor = 1
    for _, stride, _ in ops:
        factor *= stride
    expected = Reach()
    for kernel, stride, dilation in ops:
        expected.conv(kernel, stride, dilation)
    expected.upsample(factor)

    def wiring(x: Span) -> Span:
        for kernel, stride, dilation in ops:
            x = x.conv(kernel, stride, dilation)
        return x.upsample(factor)

    assert span_reach(wiring, factor) == expected.reach


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.sampled_from(["pool2", "conv3", "conv5"]), min_size=1, max_size=5),
    st.sampled_from(["unpool", "tconv", "aligned"]),
)
def test_non_centred_chains_match_chain_reach(ops, up):
    factor = 2 ** ops.count("pool2")
    chain = [conv(2, 2, 0) if op == "pool2" else conv(int(op[-1])) for op in ops]
    if factor > 1:
        steps = {"unpool": unpool, "aligned": aligned_upsample}
        chain.append(tconv(factor, factor) if up == "tconv" else steps[up](factor))

    def wiring(x: Span) -> Span:
        for op in ops:
            x = x.pool(2, 2) if op == "pool2" else x.conv(int(op[-1]))
        if factor == 1:
            return x
        if up == "unpool":
            return x.unpool(factor)
        return x.tconv(factor, factor) if up == "tconv" else x.upsample(factor)

    assert span_reach(wiring, factor) == chain_reach(chain, factor=max(factor, 1))


def test_merging_takes_the_hull_of_both_paths():
    x = Span.line(64)
    merged = x.conv(3) | x.conv(7)
    assert merged.reach() == 3
    assert (x.conv(3) | x.conv(3, dilation=4)).reach() == 4
