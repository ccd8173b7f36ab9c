"""Promotion flow: evaluate a model version against the champion and move the alias, or roll back.

Runnable as a script with the arguments of ``gigaseg promote``.
"""

from __future__ import annotations

import os
import sys

from flows.prefect_runtime import configure_prefect
from flows.script import restart_on_chosen_allocator

if __name__ == "__main__":  # run as a script: start over on TCMalloc before torch and Prefect load
    restart_on_chosen_allocator()

# Before Prefect is imported: run as a script (`ray submit … flows/promote_model.py`) the
# `flows` package has not been imported yet to set the embedded defaults.
configure_prefect()

from prefect import flow

from pipeline.tracking.promotion import Decision, EvaluationScene, promote, rollback


@flow(name="promote-model", validate_parameters=False)
def promote_model(
    name: str,
    version: int | None = None,
    eval_image: str | os.PathLike[str] | None = None,
    eval_labels: str | os.PathLike[str] | None = None,
    metric: str = EvaluationScene.metric,
    margin: float = 0.0,
    force: bool = False,
    rollback_champion: bool = False,
    block: int = EvaluationScene.block,
) -> Decision:
    """``promote`` ``version`` of ``name`` (or ``rollback`` the champion); the decision is in MLflow."""
    if rollback_champion:
        return rollback(name)
    if version is None:
        from pipeline.errors import InputError

        raise InputError("give --version V to promote, or --rollback")
    return promote(name, version, EvaluationScene(eval_image, eval_labels, metric, block), margin, force)


if __name__ == "__main__":
    from flows import commands
    from flows.arguments import add_promote_arguments
    from flows.script import run_script

    sys.exit(run_script("promote", add_promote_arguments, lambda args: commands.promote(args, promote_model)))
