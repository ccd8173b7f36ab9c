"""The segmentation job's settings: one object shared by the command line and the flows.

Validation happens here, before any work starts, and reports the option by the
name the user typed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.engine.crf import CRFParams
from pipeline.errors import InputError
from pipeline.exporters.formats import check_output_name
from pipeline.inputs.band_stack import BandStack, Scene, check_scene_readable, scene_files, scene_location
from pipeline.job.model_source import check_model_source
from pipeline.stores.location import (
    ObjectLocation,
    Where,
    check_work_folder,
    check_writable_folder,
    location,
)
from pipeline.tiling.blending import AUTO, BLEND_CHOICES


@dataclass
class SegmentConfig:
    """Everything ``gigaseg segment`` needs.

    Its defaults are the only ones: the command line, the flows and ``docs/configuration.md``
    read them from here (the ``crf_*`` ones from :class:`CRFParams`).
    """

    input: Scene
    """The scene: a local path or a URL (``s3://…``, ``https://…``), or a band stack ``a.tif,b.tif,…``."""
    model: str
    output: Where
    """Where the labels go: a local path or an object-store URL (uploaded whole when finished)."""
    tile: int | None = None
    """Tile size in pixels; None: the model card's, else the architecture's default."""
    overlap: float = 0.25
    blend: str = AUTO
    """Blending mode; ``auto``: ``crop`` for fully convolutional models, else ``gaussian``."""
    sigma: float = 0.125
    block: int = 4096
    chunk: int = 512
    batch_size: int = 4
    device: str = "auto"
    amp: bool = False
    channels_last: bool = True
    """Run the model channels-last (NHWC/NDHWC): faster convolutions, same results up to rounding."""
    native_resolution: bool = False
    """Run a scene far finer or coarser than the model's card says it was trained at (else refused)."""
    copy_input: bool = False
    """Copy a tiled GeoTIFF / COG into the work folder even though it could be read in place."""
    probabilities: Where | None = None
    overwrite: bool = False
    quiet: bool = False
    work_dir: Where | None = None
    """Scene and output stores while the job runs; a URL lets workers on any node open them."""
    keep_work: bool = False
    num_classes: int | None = None
    in_channels: int | None = None
    seed: int = 0
    threads: int | None = None
    crf: str = "none"
    """``none``, ``local`` (mean-field in a window, blockwise-exact) or ``dense`` (DenseCRF, 2D)."""
    crf_iterations: int | None = CRFParams.iterations
    """Mean-field iterations; None: the mode's default (5 local, 10 dense)."""
    crf_radius: float = CRFParams.radius
    crf_smooth_weight: float = CRFParams.smooth_weight
    """w2, smoothness kernel weight (tuned on LoveDA, bench/RESULTS.md; DeepLab: 3)."""
    crf_smooth_sigma: float = CRFParams.smooth_sigma
    """σγ, smoothness kernel width in pixels (DeepLab: 3; also tuned 3)."""
    crf_appearance_weight: float = CRFParams.appearance_weight
    """w1, appearance (bilateral) kernel weight (tuned 10, the top of DeepLab's range 5–10)."""
    crf_appearance_sigma_pos: float = CRFParams.appearance_sigma_pos
    """σα, appearance kernel position width in pixels (tuned 80; DeepLab's range 50–100)."""
    crf_appearance_sigma_feat: float = CRFParams.appearance_sigma_feat
    """σβ, appearance kernel colour width on the 0–255 percentile-stretched bands (tuned 20)."""
    crf_bands: tuple[int, ...] | None = None
    """Appearance bands (0-based, of the model's input bands); None: the first three."""
    uncertainty: bool = False
    """Keep per-pixel confidence and entropy in the output store (for per-region metrics)."""
    workers: int | None = None
    """Ray actors: None = placement decides (small jobs run here); 0 = in this process; N = N actors."""
    workers_per_gpu: int = 1
    """Ray actors sharing each GPU (each asks Ray for 1/N of one): N processes read, cut and write
    for one device, where one process's CPU work would leave it waiting."""
    ray_address: str | None = None
    """Ray cluster to join (else ``RAY_ADDRESS``); neither: a private local Ray, stopped when the run ends."""
    spacing: tuple[float, ...] | None = None
    """Voxel size (z, y, x) in mm for TIFF stacks (which carry none); other inputs bring their own."""
    slice_axis: int | None = None
    """For a 2D model over a volume: the store axis (0 = z, 1 = y, 2 = x) to run along; None: the input's."""
    tta: bool = False
    """Flip test-time augmentation: mean of the predictions over every mirror of the tile's axes."""
    volume_block: int = 128
    """Output block side for volumes (voxels, whole chunks); ``block`` is for 2D rasters."""
    volume_chunk: int = 64
    """Store chunk side for volumes (multiple of 16); ``chunk`` is for 2D rasters."""
    vector: Where | None = None
    """Polygons of the classes: ``.gpkg``, ``.fgb`` or ``.parquet`` (2D rasters)."""
    vector_min_area: float = 0.0
    """Regions under this area (CRS units², m² when projected) are merged or dropped; 0: none."""
    vector_small: str = "merge"
    """What happens to a region under ``vector_min_area``: ``merge`` (into the neighbour it shares
    the longest edge with) or ``drop``."""
    vector_fill_holes: float = 0.0
    """Holes under this area (CRS units²) are filled where polygons fill them (never nodata); 0: none."""
    vector_simplify: float = 0.0
    """Coverage simplification tolerance (CRS units; neighbours keep shared edges); 0: none."""

    def __post_init__(self) -> None:
        self.input = scene_location(self.input)
        self.output = location(self.output)
        if self.probabilities is not None:
            self.probabilities = location(self.probabilities)
        if self.vector is not None:
            self.vector = location(self.vector)
        if self.work_dir is not None:
            self.work_dir = location(self.work_dir)
        if self.crf_bands is not None:
            self.crf_bands = tuple(int(b) for b in self.crf_bands)

    def validate(self) -> None:
        """Check every option and the paths; raise :class:`InputError` for the first problem."""
        self.validate_options()
        self.validate_paths()

    def validate_options(self) -> None:
        """Check the options that do not depend on the input or output paths."""
        if self.tile is not None and self.tile <= 0:
            raise InputError(f"--tile must be a positive number of pixels, got {self.tile}")
        if not 0.0 <= self.overlap < 1.0:
            raise InputError(f"--overlap must be in [0, 1), got {self.overlap}")
        if self.blend not in BLEND_CHOICES:
            raise InputError(f"--blend must be one of {', '.join(BLEND_CHOICES)}, got {self.blend!r}")
        if not self.sigma > 0:
            raise InputError(f"--sigma must be > 0, got {self.sigma}")
        for name in ("block", "chunk", "batch_size"):
            if getattr(self, name) <= 0:
                raise InputError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.crf not in ("none", "local", "dense"):
            raise InputError(f"--crf must be none, local or dense, got {self.crf!r}")
        if (self.crf_iterations is not None and self.crf_iterations <= 0) or self.crf_radius <= 0:
            raise InputError("--crf-iterations and --crf-radius must be positive")
        for name in ("smooth_weight", "smooth_sigma", "appearance_weight", "appearance_sigma_pos",
                     "appearance_sigma_feat"):  # fmt: skip
            if not getattr(self, f"crf_{name}") >= 0:
                raise InputError(
                    f"--crf-{name.replace('_', '-')} must be ≥ 0, got {getattr(self, f'crf_{name}')}"
                )
        if self.crf_bands is not None and (not self.crf_bands or min(self.crf_bands) < 0):
            raise InputError(f"--crf-bands must be band indices ≥ 0, got {self.crf_bands}")
        if self.workers is not None and self.workers < 0:
            raise InputError(f"--workers must be >= 0 (0: run in this process), got {self.workers}")
        if self.workers_per_gpu < 1:
            raise InputError(f"--workers-per-gpu must be ≥ 1, got {self.workers_per_gpu}")
        if self.chunk % 16:
            raise InputError(f"--chunk must be a multiple of 16, got {self.chunk}")
        if self.spacing is not None:
            from pipeline.inputs.tiff_stack import parse_spacing

            self.spacing = parse_spacing(self.spacing)
        if self.slice_axis is not None and self.slice_axis not in (0, 1, 2):
            raise InputError(f"--slice-axis must be 0 (z), 1 (y) or 2 (x), got {self.slice_axis}")
        if self.volume_block <= 0 or self.volume_chunk <= 0 or self.volume_chunk % 16:
            raise InputError(
                f"--volume-block must be positive and --volume-chunk a positive multiple of 16, "
                f"got {self.volume_block} and {self.volume_chunk}"
            )
        self.validate_vector_options()
        check_model_source(self.model)

    def validate_vector_options(self) -> None:
        """Check the polygon options: a known format, areas and tolerance ≥ 0."""
        if self.vector is not None:
            from pipeline.exporters.polygons import vector_driver

            vector_driver(self.vector)
        if self.vector_small not in ("merge", "drop"):
            raise InputError(f"--vector-small must be merge or drop, got {self.vector_small!r}")
        for name in ("vector_min_area", "vector_fill_holes", "vector_simplify"):
            if not getattr(self, name) >= 0:
                raise InputError(f"--{name.replace('_', '-')} must be ≥ 0, got {getattr(self, name)}")

    def validate_paths(self) -> None:
        """Check that the input exists and the outputs can be written without losing anything."""
        check_scene_readable(self.input)
        outputs = [self.output] + [o for o in (self.probabilities, self.vector) if o is not None]
        for out in outputs:
            if out is not self.vector:  # polygon formats: validate_vector_options
                check_output_name(out)
            if isinstance(out, Path) and not out.parent.is_dir():
                raise InputError(f"{out}: folder {out.parent} does not exist")
            if any(out.resolve() == f.resolve() for f in scene_files(self.input)):
                raise InputError(f"{out}: output would overwrite the input")
            if _exists(out) and not self.overwrite:
                raise InputError(f"{out}: already exists (use --overwrite to replace it)")
            if isinstance(out, Path) and out.is_dir() and not out.name.lower().endswith(".zarr"):
                raise InputError(f"{out}: is a folder; name a file for the output")
            check_writable_folder(out.parent)
        work = self.resolved_work_dir
        if not (isinstance(work, ObjectLocation) and work.parent == self.output.parent):  # probed above
            check_work_folder(work)
        if self.probabilities is not None and self.probabilities.resolve() == self.output.resolve():
            raise InputError(f"{self.probabilities}: same path as the labels output")
        if self.vector is not None and self.vector.resolve() == self.output.resolve():
            raise InputError(f"{self.vector}: same path as the labels output")
        if self.vector is not None and self.vector.suffix.lower() != ".gpkg":
            vector, output = self.vector.resolve(), self.output.resolve()
            if (str(vector.parent), Path(vector.name).stem) == (str(output.parent), Path(output.name).stem):
                raise InputError(f"{self.vector}: its QGIS style would replace the labels' (name it apart)")

    def block_and_chunk(self, spatial_dims: int) -> tuple[int, int]:
        """Output block and store chunk sides: ``block``/``chunk`` for rasters, ``volume_*`` for volumes."""
        if spatial_dims == 3:
            return self.volume_block, self.volume_chunk
        return self.block, self.chunk

    @property
    def resolved_work_dir(self) -> Where:
        """Where the scene and output stores live while the job runs (and for resuming)."""
        return self.work_dir or self.output.with_name(self.output.name + ".gigaseg-work")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able settings (for logs and tracking)."""
        values = {f: getattr(self, f) for f in self.__dataclass_fields__}
        paths = Path | ObjectLocation | BandStack
        return {k: (str(v) if isinstance(v, paths) else v) for k, v in values.items()}


def _exists(where: Where) -> bool:
    """Whether something is at ``where``; reaching the store failing is the user's one-line error."""
    try:
        return where.exists()
    except InputError:
        raise
    except Exception as exc:
        from pipeline.stores.location import storage_error

        raise storage_error(where, exc) from None
