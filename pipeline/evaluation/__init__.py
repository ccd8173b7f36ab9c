"""Metrics against reference labels, per-region tables, previews."""
