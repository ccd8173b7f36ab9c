"""The device a bench runs gigaseg's rows on: its ``--device`` option, and how a results section names it."""

from __future__ import annotations

import argparse


def device_option(name: str) -> str:
    """``--device``'s type: a device this machine has (``cpu``, ``cuda``, ``cuda:N``).

    Checked when the options are parsed, before any scene is written or row run: one
    that is missing ends the bench with one line and status 2.
    """
    from pipeline.engine.device import select_device
    from pipeline.errors import InputError

    try:
        select_device(name)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name


def device_text(device: str) -> str:
    """``cpu``, or the CUDA device's name and memory (what a GPU row ran on)."""
    if not device.startswith("cuda"):
        return device
    import torch

    props = torch.cuda.get_device_properties(torch.device(device))
    return f"{device}: {props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
