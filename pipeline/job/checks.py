"""The job's first step: the options, the input's header and the model agree, before any data is read."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from models import SegmentationModel
from models.checkpoint import ModelCard
from pipeline.errors import InputError
from pipeline.exporters.formats import output_format
from pipeline.inputs.formats import InputDescription, describe_input
from pipeline.inputs.normalization import model_bands
from pipeline.inputs.resolution import check_resolution
from pipeline.inputs.stac_item import is_stac_item, stac_scene
from pipeline.job.config import SegmentConfig
from pipeline.job.model_source import load_model

log = logging.getLogger("gigaseg")

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
"""The geotransform GDAL reports for a raster without one (pixel coordinates)."""


@dataclass
class CheckedInput:
    """What :func:`check_inputs` established: the input is readable and fits the model."""

    model: SegmentationModel
    card: ModelCard
    bands: list[int]
    info: InputDescription | None
    """The input's header (None when a worker reattaches to an ingested scene)."""
    slice_axis: int | None = None


def check_inputs(config: SegmentConfig, load: Callable[..., tuple] = load_model) -> CheckedInput:
    """Validate the options, open the input's header and load the model (no data is read yet).

    ``load``: how the model is loaded (a batch passes its :class:`~pipeline.job.model_source.ModelCache`'s).
    """
    config.validate()
    info, model, card = _describe_and_load(config, load)
    for out in (config.output, config.probabilities):
        if out is not None:
            output_format(out, info.spatial_dims)
    if config.vector is not None and info.spatial_dims != 2:
        raise InputError(f"{config.vector}: polygons are for 2D rasters; {config.input} is a volume")
    if info.kind == "nifti" and card.bands is None and info.num_bands != card.in_channels:
        raise InputError(  # the channel rule, said out loud: a 4D NIfTI's 4th axis holds channels
            f"{config.input}: has {info.num_bands} channel(s) (a NIfTI's 4th axis is read as channels) "
            f"but the model expects {card.in_channels}"
        )
    names = info.raster.band_names if info.raster is not None else None
    bands = model_bands(card, names, info.num_bands, str(config.input))
    attrs = info.raster.attrs() if info.raster is not None else None
    attrs = info.volume.geometry.attrs() if info.volume is not None else attrs
    if attrs is not None:
        check_resolution(card, attrs, str(config.input), config.native_resolution)
    default_axis = info.volume.geometry.slice_axis if info.volume is not None else 0
    slice_axis = slice_axis_for(config, info.spatial_dims, model, default_axis)
    _warn_about(config, info, model, card.tile_size)
    return CheckedInput(model=model, card=card, bands=bands, info=info, slice_axis=slice_axis)


def _describe_and_load(
    config: SegmentConfig, load: Callable[..., tuple]
) -> tuple[InputDescription, SegmentationModel, ModelCard]:
    """The input's header and the model; a STAC item is read as the stack of the card's bands."""
    if is_stac_item(config.input):
        model, card = load(
            config.model, in_channels=config.in_channels, num_classes=config.num_classes, seed=config.seed
        )
        return describe_input(stac_scene(config.input, card.band_names, config.model).stack), model, card
    info = describe_input(config.input, config.spacing)
    model, card = load(
        config.model,
        in_channels=config.in_channels or info.num_bands,
        num_classes=config.num_classes,
        seed=config.seed,
    )
    return info, model, card


def _warn_about(
    config: SegmentConfig, info: InputDescription, model: SegmentationModel, card_tile: int | None
) -> None:
    """Log what runs but may surprise: no georeference, or a model whose output depends on the tile."""
    if info.raster is not None and not info.raster.georeferenced:
        if tuple(info.raster.transform) == IDENTITY:
            log.warning("%s: not georeferenced; the output has pixel coordinates only", config.input)
        else:
            log.warning(
                "%s: has a geotransform but no CRS; the output keeps the transform and has no CRS either",
                config.input,
            )
    _warn_about_tile(config, info, model, card_tile)
    if not model.spec.fully_convolutional and model.spec.family != "external":
        log.warning(
            "%s is not fully convolutional (global pooling): tiled output depends on the tile size",
            model.arch,
        )


def _warn_about_tile(
    config: SegmentConfig, info: InputDescription, model: SegmentationModel, card_tile: int | None
) -> None:
    """One line each for a tile far smaller than the model's reach and a scene much thinner than the
    tile the run uses (``--tile``, else the card's, else the architecture's default)."""
    tile = config.tile or card_tile or model.spec.default_tile
    if config.tile is not None and config.tile < model.reach:
        log.warning(
            "--tile %d is far smaller than %s's receptive field (%d px each side): every tile is mostly "
            "padding, slow and unlike the model's training; use --tile %d or more",
            config.tile,
            model.arch,
            model.reach,
            4 * model.reach,
        )
    if info.raster is not None and min(info.raster.width, info.raster.height) * 4 <= tile:
        log.warning(
            "%s: %d×%d px is much thinner than the %d px tile; tiles are cut to the scene's thin side",
            config.input,
            info.raster.width,
            info.raster.height,
            tile,
        )


def slice_axis_for(
    config: SegmentConfig, scene_dims: int, model: SegmentationModel, default: int
) -> int | None:
    """The axis a 2D model runs along over a volume (None when model and scene dims agree)."""
    if model.spatial_dims == scene_dims:
        if config.slice_axis is not None and scene_dims == 3:
            raise InputError(f"--slice-axis is for 2D models over volumes; {model.arch} is 3D")
        return None
    if model.spatial_dims == 2 and scene_dims == 3:
        return config.slice_axis if config.slice_axis is not None else default
    raise InputError(
        f"{config.input}: is a {scene_dims}D {'volume' if scene_dims == 3 else 'raster'} "
        f"but {model.arch} is a {model.spatial_dims}D model"
    )
