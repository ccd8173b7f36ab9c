"""Prefect settings for the embedded default, applied before Prefect is imported.

Which API a flow command reports to is :mod:`flows.prefect_server`'s choice (the
user's ``PREFECT_API_URL``, else the shared local server). With
``GIGASEG_PREFECT_SERVER=ephemeral`` Prefect starts its ephemeral API in this
process's children; on a busy machine its start can take longer than Prefect's
default wait, so the wait is raised. Prefect's console handler is kept quiet by default
so a failed task prints our one-line message, not a traceback; the run's full
logs still go to the API (Prefect UI). Every setting here only applies when the
user has not set it.
"""

from __future__ import annotations

import os

DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",
    "PREFECT_LOGGING_SERVER_LEVEL": "WARNING",
}


def configure_prefect(console_logs: bool = False) -> None:
    """Set the embedded defaults (call before ``import prefect``); ``console_logs`` shows Prefect's logs."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    if console_logs:
        os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "INFO"
