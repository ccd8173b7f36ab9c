"""Readers per format, ingest into the scene store, band selection and normalisation."""
