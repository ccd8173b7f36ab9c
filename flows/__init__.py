"""Prefect flows over the pipeline (each also runnable as a script).

Importing the package applies the embedded Prefect defaults (see
:mod:`flows.prefect_runtime`) before any flow module imports Prefect.
"""

from flows.prefect_runtime import configure_prefect

configure_prefect()
