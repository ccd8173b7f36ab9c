"""The labelled scenes a training run learns from, opened with their held-out parts and class names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.errors import InputError
from pipeline.evaluation.region_metrics import warn_nodata_is_a_class
from pipeline.inputs.band_stack import Scene, scene_location
from pipeline.inputs.stac_item import is_stac_item, stac_scene
from pipeline.training.data import LabelledScene, open_pair, scan_classes
from pipeline.training.request import TrainRequest


@dataclass
class TrainingScenes:
    """The opened scenes (validation pair last), how many classes their labels hold, and the class names."""

    scenes: list[LabelledScene]
    num_classes: int
    class_names: list[str]


def _stac_bands(image: str | Scene, band_names: Sequence[str] | None) -> str | Scene:
    """A STAC item as the stack of the assets ``--band-names`` picks; any other image as it is."""
    scene = scene_location(image)
    if not is_stac_item(scene):
        return image
    if not band_names:
        raise InputError(f"{image}: a STAC item as a training image needs --band-names to pick its assets")
    return stac_scene(scene, band_names, "--band-names").stack


def open_training_scenes(request: TrainRequest) -> TrainingScenes:
    """Ingest each image/label pair into the work folder, holding out validation; name the classes.

    Names come from ``request.class_names``, else from the tags of the first
    label raster that has them, else ``class_0 …``.
    """
    stores = request.work / "stores"
    request.work.mkdir(parents=True, exist_ok=True)
    hold = request.held_out_fraction
    scenes, tagged = [], None
    for img, lab in zip(request.images, request.labels):
        img = _stac_bands(img, request.settings.band_names)
        scene, names = open_pair(img, lab, stores, hold, spacing=request.spacing)
        scenes.append(scene)
        tagged = tagged or names
    if request.val_image:
        validation = open_pair(
            _stac_bands(request.val_image, request.settings.band_names),
            request.val_labels,
            stores,
            0.0,
            validation_only=True,
            spacing=request.spacing,
        )
        scenes.append(validation[0])
    given = request.class_names
    num_classes = max(scan_classes(scenes, len(given or tagged or [])), len(given or tagged or []))
    names = list(given or tagged or [f"class_{i}" for i in range(num_classes)])
    if len(names) < num_classes:
        raise InputError(f"{len(names)} class names given but the labels hold {num_classes} classes")
    for scene in scenes:
        attrs = scene.labels.attrs
        warn_nodata_is_a_class(attrs.get("source", scene.name), attrs.get("nodata"), num_classes)
    return TrainingScenes(scenes, num_classes, names)
