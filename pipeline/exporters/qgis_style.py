"""QGIS styles (QML) for what gigaseg writes: the labels raster, the probabilities and the polygons.

QGIS loads ``NAME.qml`` beside ``NAME.tif`` (or ``NAME.gpkg``, ``NAME.fgb``…) as
the layer's default style. A GeoTIFF colour table always has 256 entries and QGIS
makes a legend class of each; the paletted style written here lists exactly the
model's classes, by name and colour, and leaves every other value (nodata among
them) transparent.

>>> qml = labels_qml(["water", "forest"], [(40, 110, 220), (20, 110, 40)])
>>> qml.count("<paletteEntry")
2
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

QGIS_VERSION = "3.22.0"
"""The QGIS version the styles are written for (read by every later 3.x)."""


def _hex(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb[:3]))


def _document(category: str) -> ET.Element:
    return ET.Element("qgis", version=QGIS_VERSION, styleCategories=category, hasScaleBasedVisibilityFlag="0")


def _serialise(root: ET.Element) -> str:
    ET.indent(root)
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        + ET.tostring(root, encoding="unicode")
        + "\n"
    )


def _raster_pipe(root: ET.Element, renderer: ET.Element) -> None:
    """The renderer inside a pipe with nearest-neighbour resampling (never blend class colours)."""
    pipe = ET.SubElement(root, "pipe")
    provider = ET.SubElement(pipe, "provider")
    ET.SubElement(
        provider,
        "resampling",
        enabled="false",
        zoomedInResamplingMethod="nearestNeighbour",
        zoomedOutResamplingMethod="nearestNeighbour",
        maxOversampling="2",
    )
    pipe.append(renderer)
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(pipe, "huesaturation", saturation="0", grayscaleMode="0", colorizeOn="0")
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    ET.SubElement(root, "blendMode").text = "0"


def labels_qml(class_names: Sequence[str], colors: Sequence[Sequence[int]]) -> str:
    """A paletted raster style: one legend entry per class (value = class id), the rest transparent."""
    root = _document("Symbology")
    renderer = ET.Element(
        "rasterrenderer", type="paletted", band="1", opacity="1", alphaBand="-1", nodataColor=""
    )
    ET.SubElement(renderer, "rasterTransparency")
    palette = ET.SubElement(renderer, "colorPalette")
    for value, (name, rgb) in enumerate(zip(class_names, colors)):
        ET.SubElement(palette, "paletteEntry", value=str(value), color=_hex(rgb), alpha="255", label=name)
    _raster_pipe(root, renderer)
    return _serialise(root)


def probabilities_qml(class_name: str, color: Sequence[int], band: int = 1) -> str:
    """One class's probability as a ramp from transparent (0) to the class colour (1)."""
    root = _document("Symbology")
    renderer = ET.Element(
        "rasterrenderer",
        type="singlebandpseudocolor",
        band=str(band),
        opacity="1",
        alphaBand="-1",
        classificationMin="0",
        classificationMax="1",
        nodataColor="",
    )
    ET.SubElement(renderer, "rasterTransparency")
    shader = ET.SubElement(ET.SubElement(renderer, "rastershader"), "colorrampshader")
    shader.attrib.update(
        colorRampType="INTERPOLATED", classificationMode="2", clip="0", minimumValue="0", maximumValue="1"
    )
    for value, alpha in ((0.0, 0), (0.5, 160), (1.0, 255)):
        ET.SubElement(
            shader,
            "item",
            value=repr(value),
            color=_hex(color),
            alpha=str(alpha),
            label=f"P({class_name}) {value:g}",
        )
    _raster_pipe(root, renderer)
    return _serialise(root)


def _fill_symbol(parent: ET.Element, name: str, rgb: Sequence[int]) -> None:
    symbol = ET.SubElement(
        parent, "symbol", type="fill", name=name, alpha="1", clip_to_extent="1", force_rhr="0"
    )
    layer = ET.SubElement(
        symbol, "layer", attrib={"class": "SimpleFill", "enabled": "1", "locked": "0", "pass": "0"}
    )
    options = ET.SubElement(layer, "Option", type="Map")
    outline = [int(c * 0.6) for c in rgb[:3]]
    props = {
        "color": ",".join(str(int(c)) for c in rgb[:3]) + ",255",
        "style": "solid",
        "outline_color": ",".join(map(str, outline)) + ",255",
        "outline_style": "solid",
        "outline_width": "0.1",
        "outline_width_unit": "MM",
        "joinstyle": "miter",
    }
    for key, value in props.items():
        ET.SubElement(options, "Option", type="QString", name=key, value=value)


def polygons_qml(class_names: Sequence[str], colors: Sequence[Sequence[int]], field: str = "class_id") -> str:
    """A categorised fill style for the polygons: one category per class id, labelled by name."""
    root = _document("Symbology")
    renderer = ET.SubElement(
        root,
        "renderer-v2",
        type="categorizedSymbol",
        attr=field,
        symbollevels="0",
        enableorderby="0",
        forceraster="0",
    )
    categories = ET.SubElement(renderer, "categories")
    symbols = ET.SubElement(renderer, "symbols")
    for value, (name, rgb) in enumerate(zip(class_names, colors)):
        ET.SubElement(categories, "category", value=str(value), label=name, symbol=str(value), render="true")
        _fill_symbol(symbols, str(value), rgb)
    ET.SubElement(root, "blendMode").text = "0"
    ET.SubElement(root, "layerGeometryType").text = "2"
    return _serialise(root)
