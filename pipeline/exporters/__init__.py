"""Output store → files the next tool opens: COG (+ MODE overviews, palette, QGIS metadata),
NIfTI, OME-Zarr.
"""
