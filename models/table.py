"""The architecture table of ``docs/models.md``, generated from the registry.

Run ``python -m models.table > docs/models.md``. Parameters are counted on
canonical configurations built on the meta device (no memory, no forward pass),
so the table is the registry's own account of itself, next to each paper's
figure where the paper states one.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import torch

from models import build, specs
from models.backbones import backbone_names
from models.registry import ArchSpec

COMMAND = "python -m models.table > docs/models.md"
COLUMNS = (
    "name",
    "family",
    "dims",
    "params (canonical)",
    "paper's figure",
    "difference",
    "downsampling",
    "reach (px)",
    "default tile",
    "fully convolutional",
    "paper",
)


def parameter_count(name: str) -> int:
    """Trainable parameters of the canonical configuration of ``name``."""
    with torch.device("meta"):
        model = build(name)
    return sum(p.numel() for p in model.parameters())


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 10_000 else f"{n:,}"


def _paper_figure(n: int | None) -> str:
    if n is None:
        return "not stated"
    return f"{n:,}" if n % 100_000 else f"{n / 1e6:.1f}M"


def row(spec: ArchSpec) -> list[str]:
    """One table row for ``spec``."""
    config = spec.resolve_config()
    ours = parameter_count(spec.name)
    diff = "—" if spec.paper_params is None else f"{(ours - spec.paper_params) / spec.paper_params:+.2%}"
    return [
        f"`{spec.name}`",
        spec.family,
        f"{spec.spatial_dims}D",
        _millions(ours),
        _paper_figure(spec.paper_params),
        diff,
        str(spec.downsampling_for(config)),
        str(spec.reach_for(config)),
        str(spec.default_tile),
        "yes" if spec.fully_convolutional else "no",
        spec.paper,
    ]


def _config_text(config: dict[str, Any]) -> str:
    return ", ".join(f"`{k}={v!r}`" for k, v in config.items())


def _display_order(spec: ArchSpec) -> tuple[Any, ...]:
    """By family, then by name with numbers compared as numbers (56 < 67 < 103)."""
    parts = re.split(r"(\d+)", spec.name)
    return (spec.family == "reference", spec.family, *(int(p) if p.isdigit() else p for p in parts))


def _formats_section() -> list[str]:
    """How models made elsewhere run (``models/formats/``)."""
    return [
        "",
        "## Models made elsewhere: ONNX, TorchScript, torch.export",
        "",
        "`-m` takes, besides a gigaseg checkpoint (`.safetensors`, the card in its header),",
        "a model exported by any other tool; the format is told from the file's bytes:",
        "",
        "- ONNX (`.onnx`): run by onnxruntime, `CUDAExecutionProvider` first when the tiles are",
        "  on a GPU and the provider is installed (`onnxruntime-gpu`), else `CPUExecutionProvider`;",
        "  the card in `metadata_props` under `gigaseg.card`, or the sidecar.",
        "- TorchScript (`torch.jit.save`): `torch.jit.load` (the archive must hold TorchScript",
        "  `code/`); the card as the extra file `gigaseg.card`, or the sidecar.",
        "- `torch.export` program (`.pt2`): `torch.export.load` (exported with dynamic batch and",
        "  spatial sizes); the card as the extra file `gigaseg.card`, or the sidecar.",
        "",
        "The sidecar is `NAME.card.json` beside `NAME.onnx` (or `.ts`, `.pt2`) and wins over",
        "an embedded card; `gigaseg model-card MODEL --classes a,b,c [--bands 3,2,1] [--gsd 0.5]",
        "[--colors 'R,G,B;…'] [--normalization JSON] [--tile N] [--embed]` writes it (`--embed`:",
        "into the ONNX file), after checking it against the network. The card holds what a",
        "native card holds plus the geometry the engine needs (`spatial_dims`, `downsampling`,",
        "`reach`). Geometry a card leaves out is measured when the model loads, and one log",
        "line says so: the input channels (the first count the network takes), the",
        "downsampling (the smallest power of two whose multiples the network takes and by",
        "which a shifted input shifts the logits) and the reach (how far a bumped input column",
        "shows in the logits, for every phase, rounded up to a multiple of the downsampling).",
        "A measured reach is a lower bound (a ReLU that stays off hides a path): declare it",
        "(`--reach`) when it is known. At load, one small forward pass checks the card against",
        "the network: a card naming more or fewer classes than the model's output channels, a",
        "band list of another length, an ONNX input that is not `(N, C, Y, X)` /",
        "`(N, C, Z, Y, X)` float32, or logits at another size are each refused with one line.",
        "",
        "Nothing executes a pickle: a `torch.save` file (a zip with `data.pkl` and no",
        "TorchScript code, or a bare pickle) is refused whatever its name; a TorchScript",
        "archive is read by TorchScript's own loader, which builds only TorchScript types; a",
        "`.pt2` whose configs mark weights or constants as pickled (tensor subclasses, the",
        "legacy layout), or whose sample inputs need more than `torch.load(weights_only=True)`,",
        "is refused before `torch.export.load` sees it. The network goes",
        "into the same `SegmentationModel` wrapper as a native one (padding to the",
        "downsampling, cropping back), so tiles, halos, blockwise exactness, channels-last,",
        "flip TTA and the Ray actors' model cache are the same for every format.",
        "",
        "`gigaseg export-onnx CHECKPOINT -o model.onnx` exports a native checkpoint (the dynamo",
        "exporter, batch and spatial axes dynamic) with its card and geometry embedded. A",
        "configuration that derives padding from the input size (the U-Net's",
        '`padding="valid"`) exports with fixed sizes only and is refused.',
        "`gigaseg register FILE --model-name NAME` registers any of these files as an MLflow",
        "version (ONNX also as MLflow's `onnx` flavour); `gigaseg promote` and",
        "`-m models:/NAME@champion` then treat it like a trained model.",
        "",
        "Resolution: a card records the ground sample distance a raster model was trained at",
        "(`gsd`, m/px; `gigaseg train` fills it from a projected training raster, `gigaseg",
        "model-card --gsd` for others) or a volume model's voxel spacing (`spacing`, mm). A",
        "scene more than 4× finer or coarser is refused with one line (`--native-resolution`",
        "runs it anyway). A scene at another resolution is resampled to the model's in the work",
        "folder (GDAL's warper for rasters: `average` coarser, `bilinear` finer; trilinear for",
        "volumes) and the outputs are mapped back to the input's own grid (labels by nearest /",
        "mode, probabilities by bilinear / average), so output pixels line up with the input's;",
        "`--native-resolution` runs it as it is. The run's summary, STAC item",
        "(`gigaseg:resampled`) and MLflow run (`resampled`) record it.",
    ]


def render() -> str:
    """The whole ``docs/models.md`` page."""
    all_specs = sorted(specs(), key=_display_order)
    lines = [
        "# Models",
        "",
        f"<!-- Generated by `{COMMAND}`; edit models/, not this file. -->",
        "",
        "Every architecture the engine can run, from the registry (`models.names()`).",
        "`params` counts the trainable parameters of the canonical configuration",
        "(`models.build(name)`, the paper's network with the paper's input channels",
        "and classes); `paper's figure` is the count the paper states, if it states one.",
        "`downsampling` is the factor input sizes are padded to (the wrapper does it);",
        "`reach` the receptive-field radius in input pixels, which sizes the halo;",
        "both are measured against the networks by `tests/models/test_models_registry_metadata.py`.",
        "A model that is not fully convolutional (global image pooling, attention over",
        "all positions, context encoding) gives tile-dependent results under tiled",
        "inference; the engine warns about it. Multi-path networks declare their reach",
        "with `models.receptive_field.Span`, which runs their wiring on a line.",
        "",
        "Training outputs: a model with auxiliary (deep-supervision) heads returns",
        '`{"out", "aux": [...]}` in training mode; the trainer weights each head\'s loss',
        "by its paper's weight (`ArchSpec.aux_heads`, listed in the notes) unless",
        "`--aux-weight` sets one weight for all. EncNet and FastFCN also return per-image",
        'class-presence logits `"se"`, trained by the SE-loss (`ArchSpec.se_loss`).',
        'DUpsampling (Tian et al., CVPR 2019) is the `decoder="dupsampling"` option of',
        "`deeplabv3plus`.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(row(spec)) + " |" for spec in all_specs]
    lines += ["", "## Notes", ""]
    lines += [f"- `{s.name}`: {s.notes}" for s in all_specs if s.notes]
    lines += [
        "",
        "## Backbones and pretrained weights",
        "",
        "The DeepLab backbones are written here (`models/backbones/`): "
        + ", ".join(f"`{n}`" for n in backbone_names())
        + ". They keep the parameter names of the common ImageNet checkpoints",
        "(torchvision's layout for VGG-16, ResNet and MobileNetV2; the DeepLabv3+",
        "PyTorch ports' layout for aligned Xception-65), so a downloaded checkpoint",
        "(safetensors, or a state dict read with `torch.load(weights_only=True)`) loads by name:",
        "",
        "```python",
        "from models import build",
        "from models.backbones import load_backbone_weights",
        "",
        'model = build("deeplabv3plus", backbone="resnet101", num_classes=6)',
        'load_backbone_weights(model, "resnet101-imagenet.safetensors")  # fc.* is ignored',
        "```",
        "",
        "Missing, unexpected or mis-shaped tensors raise `BackboneWeightsError` naming them",
        "(for example a checkpoint for 3 input bands into a 4-band model).",
    ]
    lines += _formats_section()
    lines += ["", "## Canonical configurations", ""]
    lines += [
        "Keys accepted by `models.build(name, **config)`, with their canonical values;",
        "`small` is the narrow configuration the tests build.",
        "",
    ]
    for spec in all_specs:
        lines.append(f"- `{spec.name}`: {_config_text(dict(spec.defaults))}")
        if spec.small:
            lines.append(f"  - small: {_config_text(dict(spec.small))}")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Print the table page to stdout."""
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
