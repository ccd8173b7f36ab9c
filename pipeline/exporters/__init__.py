"""Output store → files the next tool opens: COG (+ MODE overviews, palette, QGIS metadata),
NIfTI, OME-Zarr; :mod:`pipeline.exporters.formats` picks the writer from the output name.
"""
