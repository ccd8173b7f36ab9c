"""Open gigaseg outputs in real QGIS (headless) and report what an analyst would see, as JSON.

Run with the system Python that has Debian's ``python3-qgis``::

    QT_QPA_PLATFORM=offscreen python3 tests/exporters/qgis_probe.py LABELS.tif [VECTOR LAYER] [PROBS.tif]

Prints one JSON object: for the raster, validity, CRS, extent, renderer type,
legend entries (label, colour) and the colours of a rendered image at the pixel
centres of each row/column of the raster (so the caller compares them with the
labels); for the vector, validity, CRS, renderer type, categories and feature count.
"""

from __future__ import annotations

import json
import os
import sys

from qgis.core import (
    QgsApplication,
    QgsMapRendererCustomPainterJob,
    QgsMapSettings,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor, QImage, QPainter


def _extent(layer) -> list[float]:
    e = layer.extent()
    return [e.xMinimum(), e.yMinimum(), e.xMaximum(), e.yMaximum()]


def _render(layer, width: int, height: int) -> list[list[list[int]]]:
    """The layer rendered at its own resolution on a transparent canvas: RGBA per pixel."""
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    settings.setExtent(layer.extent())
    settings.setOutputSize(QSize(width, height))
    settings.setBackgroundColor(QColor(0, 0, 0, 0))
    image = QImage(QSize(width, height), QImage.Format_ARGB32)
    image.fill(QColor(0, 0, 0, 0))
    painter = QPainter(image)
    job = QgsMapRendererCustomPainterJob(settings, painter)
    job.start()
    job.waitForFinished()
    painter.end()
    rows = []
    for y in range(height):
        row = []
        for x in range(width):
            c = QColor.fromRgba(image.pixel(x, y))
            row.append([c.red(), c.green(), c.blue(), c.alpha()])
        rows.append(row)
    return rows


def _raster(path: str) -> dict:
    layer = QgsRasterLayer(path, "labels", "gdal")
    renderer = layer.renderer()
    legend = [[label, color.name()] for label, color in renderer.legendSymbologyItems()] if renderer else []
    return {
        "valid": layer.isValid(),
        "crs": layer.crs().authid(),
        "extent": _extent(layer),
        "size": [layer.width(), layer.height()],
        "renderer": renderer.type() if renderer else None,
        "legend": legend,
        "image": _render(layer, layer.width(), layer.height()),
    }


def _vector(path: str, name: str) -> dict:
    layer = QgsVectorLayer(f"{path}|layername={name}", name, "ogr")
    renderer = layer.renderer()
    categories = []
    if renderer is not None and renderer.type() == "categorizedSymbol":
        categories = [[str(c.value()), c.label(), c.symbol().color().name()] for c in renderer.categories()]
    return {
        "valid": layer.isValid(),
        "crs": layer.crs().authid(),
        "extent": _extent(layer),
        "renderer": renderer.type() if renderer else None,
        "attribute": renderer.classAttribute() if renderer is not None and categories else None,
        "categories": categories,
        "features": layer.featureCount(),
    }


def main(argv: list[str]) -> None:
    app = QgsApplication([], False)
    app.initQgis()
    report = {"raster": _raster(argv[0])}
    if len(argv) >= 3:
        report["vector"] = _vector(argv[1], argv[2])
    if len(argv) >= 4:
        probs = QgsRasterLayer(argv[3], "probabilities", "gdal")
        report["probabilities"] = {"valid": probs.isValid(), "renderer": probs.renderer().type()}
    print(json.dumps(report), flush=True)
    # QGIS 3.22 may crash tearing down layers still referenced at exit: the report is out, leave now.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
