"""Compute: the tile predictor, weighted accumulation, block finishing, CRF, the in-memory entry point."""
