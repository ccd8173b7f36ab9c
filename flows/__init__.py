"""Prefect flows over the pipeline (each also runnable as a script).

Importing the package applies the embedded Prefect defaults (see
:mod:`flows.prefect_runtime`) before any flow module imports Prefect, and bounds
how long torch's idle OpenMP threads spin (:mod:`pipeline.execution.openmp_spinning`)
before any flow module imports torch.
"""

from flows.prefect_runtime import configure_prefect
from pipeline.execution.openmp_spinning import bound_openmp_spinning

configure_prefect()
bound_openmp_spinning()
