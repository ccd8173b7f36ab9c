"""Orchestration over the library: the `gigaseg` command line and the Prefect flows."""
