"""The inputs of a batch: paths, globs and list files expanded, each given its own output name.

``gigaseg segment A B 'tiles/*.tif' @more.txt --output-dir OUT`` segments every input
into ``OUT/<stem>.tif`` (``OUT/<stem>.nii.gz`` for a NIfTI input). Locations stay opaque
strings (a path or an object-store URL); only a local glob is looked at here.
"""

from __future__ import annotations

import glob
import os
import posixpath
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import InputError

LIST_PREFIX = "@"
"""``@FILE``: the inputs listed in FILE, one path or URL a line."""
_NIFTI = (".nii.gz", ".nii")
_DOUBLE_SUFFIXES = (*_NIFTI, ".ome.zarr", ".ome.tif", ".ome.tiff")


def _listed(list_file: str) -> list[str]:
    """The inputs of a list file: one a line; blank lines and ``#`` comments skipped."""
    try:
        text = Path(list_file).read_text()
    except OSError as exc:
        raise InputError(
            f"{LIST_PREFIX}{list_file}: cannot read the list of inputs ({exc.strerror})"
        ) from None
    lines = [ln.strip() for ln in text.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _is_glob(spec: str) -> bool:
    return "://" not in spec and any(c in spec for c in "*?[") and not os.path.exists(spec)


def expand_inputs(specs: Sequence[str]) -> list[str]:
    """The inputs each spec names, in order.

    ``@FILE`` reads FILE (one path or URL a line, relative paths from the current
    folder); a local glob (``tiles/*.tif``, ``**`` recursive) gives its matches sorted
    and must match something; anything else is itself.

    >>> expand_inputs(["a.tif", "s3://bucket/b.tif"])
    ['a.tif', 's3://bucket/b.tif']
    """
    inputs: list[str] = []
    for spec in map(str, specs):
        if spec.startswith(LIST_PREFIX):
            inputs.extend(_listed(spec[len(LIST_PREFIX) :]))
        elif _is_glob(spec):
            found = sorted(glob.glob(spec, recursive=True))
            if not found:
                raise InputError(f"{spec}: no file matches")
            inputs.extend(found)
        else:
            inputs.append(spec)
    if not inputs:
        raise InputError("no inputs given (the list files are empty)")
    return inputs


def output_name(source: str) -> str:
    """The output file name for an input: its stem, ``.tif`` (``.nii.gz`` for NIfTI).

    >>> output_name("s3://bucket/2024/scene_07.tif"), output_name("/data/brain.nii.gz")
    ('scene_07.tif', 'brain.nii.gz')
    >>> output_name("dicom/series_3/")
    'series_3.tif'
    >>> output_name("nc/lsat7_2000_10.tif,nc/lsat7_2000_20.tif")
    'lsat7_2000.tif'
    """
    from pipeline.inputs.band_stack import BandStack, scene_location

    scene = scene_location(source)
    if isinstance(scene, BandStack):
        return f"{scene.name}.tif"
    name = posixpath.basename(source.replace(os.sep, "/").rstrip("/"))
    lower = name.lower()
    suffix = next((s for s in _DOUBLE_SUFFIXES if lower.endswith(s)), os.path.splitext(name)[1])
    stem = name[: len(name) - len(suffix)] if suffix else name
    return f"{stem}{'.nii.gz' if lower.endswith(_NIFTI) else '.tif'}"


def batch_outputs(inputs: Sequence[str], output_dir: str | os.PathLike[str]) -> list[str]:
    """``output_dir/<output name>`` for each input; two inputs that would share an output are refused.

    >>> batch_outputs(["a/x.tif", "b/y.tif"], "out")
    ['out/x.tif', 'out/y.tif']
    """
    folder = os.fspath(output_dir).rstrip("/") or "/"
    outputs: list[str] = []
    taken: dict[str, str] = {}
    for source in inputs:
        out = f"{folder}/{output_name(source)}"
        if out in taken:
            raise InputError(
                f"{taken[out]} and {source} would both be written to {out} "
                "(rename one, or segment them into different --output-dir folders)"
            )
        taken[out] = source
        outputs.append(out)
    return outputs
