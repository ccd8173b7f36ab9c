"""The Zarr stores a run works in: the ingested scene and the output (labels, probabilities, done blocks)."""
