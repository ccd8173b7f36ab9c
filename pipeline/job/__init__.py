"""The segmentation job as steps (check → ingest → plan → infer → export → summary) and its config."""
