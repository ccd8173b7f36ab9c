"""Promotion: move the ``champion`` alias to a better version, or back to the previous one.

A candidate is evaluated against the current champion on the same labelled
evaluation scene (each evaluation is a nested, tracked segment run with the
per-region table). The alias moves only when the candidate scores at least the
champion's score plus ``margin`` on the chosen metric; ``force`` moves it
regardless. The sequence of champions is kept in the registered model's tag
``gigaseg.champion_history`` so ``rollback`` restores the previous one. Every
decision — promoted, kept, forced, first champion, rolled back — is an MLflow
run in the ``gigaseg-promotion`` experiment with both scores, and is tagged on
the candidate version.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import InputError
from pipeline.job.config import SegmentConfig
from pipeline.tracking import runs as tracking
from pipeline.tracking.model_versions import CHAMPION, PREFIX

if TYPE_CHECKING:
    from mlflow import MlflowClient

METRICS = ("miou", "mdice", "accuracy")
HISTORY_TAG = "gigaseg.champion_history"


@dataclass
class Decision:
    """What a promotion or rollback did."""

    name: str
    action: str
    """``first`` (no champion before), ``promoted``, ``kept``, ``forced`` or ``rolled_back``."""
    candidate: int | None
    previous_champion: int | None
    champion: int | None
    metric: str | None = None
    candidate_score: float | None = None
    champion_score: float | None = None
    margin: float = 0.0
    run_id: str = ""

    def line(self) -> str:
        """One line for the command line."""
        scores = ""
        if self.candidate_score is not None:
            champ = f"{self.champion_score:.4f}" if self.champion_score is not None else "none"
            scores = f" ({self.metric} candidate {self.candidate_score:.4f} vs champion {champ})"
        return f"{self.name}: {self.action}; champion is version {self.champion}{scores}"


def _client() -> MlflowClient:
    import mlflow

    tracking.configure()
    return mlflow.MlflowClient()


def champion_version(name: str) -> int | None:
    """The version holding ``champion`` (None when no version does)."""
    from mlflow.exceptions import MlflowException

    try:
        return int(_client().get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def _history(name: str) -> list[int]:
    from mlflow.exceptions import MlflowException

    try:
        model = _client().get_registered_model(name)
    except MlflowException:
        raise InputError(f"{name}: no such registered model at {tracking.tracking_uri()}") from None
    return [int(v) for v in json.loads(model.tags.get(HISTORY_TAG, "[]"))]


def _set_champion(name: str, version: int, history: list[int]) -> None:
    client = _client()
    client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))


@dataclass(frozen=True)
class EvaluationScene:
    """The labelled scene a candidate and the champion are scored on, and the score that decides."""

    image: str | os.PathLike[str] | None
    labels: str | os.PathLike[str] | None
    metric: str = "miou"
    block: int = 2048
    """Output block side of the evaluation runs."""

    @property
    def given(self) -> bool:
        """Whether there is a scene to score on (both image and labels)."""
        return self.image is not None and self.labels is not None

    def score(self, name: str, version: int, work: Path) -> float:
        """Segment the scene with ``name``/``version`` (nested tracked run); its scene-wide score."""
        from pipeline.tracking.segment_run import track_segment_run

        config = SegmentConfig(
            input=self.image,
            model=f"{PREFIX}{name}/{version}",
            output=work / f"{name}-v{version}.tif",
            block=self.block,
            quiet=True,
            overwrite=True,
        )
        result = track_segment_run(
            config,
            labels=self.labels,
            experiment=tracking.PROMOTION_EXPERIMENT,
            run_name=f"evaluate {name} v{version}",
            nested=True,
            tags={"gigaseg.kind": "evaluation"},
        )
        score = result.scene.get(self.metric)
        if score is None or score != score:
            raise InputError(f"{self.labels}: no labelled pixel scored; cannot compute {self.metric}")
        return float(score)


def _record(decision: Decision) -> None:
    import mlflow

    mlflow.log_params(
        tracking.flat_params(
            {
                k: v
                for k, v in asdict(decision).items()
                if k not in ("candidate_score", "champion_score", "run_id")
            }
        )
    )
    scores = {"candidate_score": decision.candidate_score, "champion_score": decision.champion_score}
    mlflow.log_metrics({k: v for k, v in scores.items() if v is not None})
    mlflow.set_tag("gigaseg.decision", decision.action)
    if decision.candidate is not None:
        client = _client()
        client.set_model_version_tag(
            decision.name, str(decision.candidate), "gigaseg.decision", decision.action
        )
        if decision.candidate_score is not None:
            client.set_model_version_tag(
                decision.name,
                str(decision.candidate),
                f"gigaseg.eval.{decision.metric}",
                f"{decision.candidate_score:.6f}",
            )
        client.set_model_version_tag(
            decision.name, str(decision.candidate), "gigaseg.decision_run", decision.run_id
        )


def _check_request(scene: EvaluationScene, force: bool) -> None:
    if scene.metric not in METRICS:
        raise InputError(f"--metric must be one of {', '.join(METRICS)}, got {scene.metric!r}")
    if not scene.given and not force:
        raise InputError("promotion needs --eval-image and --eval-labels (or --force)")


def _check_version_exists(name: str, version: int) -> None:
    from mlflow.exceptions import MlflowException

    try:
        _client().get_model_version(name, str(version))
    except MlflowException:
        raise InputError(f"{name}: no version {version} in the registry") from None


def _score(decision: Decision, scene: EvaluationScene) -> None:
    """The candidate's score, and the champion's on the same scene (the same score when they are one)."""
    name, candidate, champion = decision.name, decision.candidate, decision.previous_champion
    with tempfile.TemporaryDirectory(prefix="gigaseg-eval-") as tmp:
        decision.candidate_score = scene.score(name, candidate, Path(tmp))
        if champion is not None and champion != candidate:
            decision.champion_score = scene.score(name, champion, Path(tmp))
        elif champion == candidate:
            decision.champion_score = decision.candidate_score


def _action(decision: Decision, force: bool) -> str:
    """``first``, ``forced`` or ``promoted`` (champion + margin reached) to move the alias, else ``kept``."""
    if decision.candidate == decision.previous_champion:
        return "kept"
    if decision.previous_champion is None:
        return "first"
    if force:
        return "forced"
    if decision.candidate_score >= decision.champion_score + decision.margin:  # type: ignore[operator]
        return "promoted"
    return "kept"


def _crown(name: str, version: int, champion: int | None, history: list[int]) -> None:
    """Give ``champion`` to ``version``, the outgoing champion last in the history before it."""
    if not history or history[-1] != champion:
        history = [*history, champion] if champion is not None else history
    _set_champion(name, version, [*history, version])


def promote(
    name: str, version: int, scene: EvaluationScene, margin: float = 0.0, force: bool = False
) -> Decision:
    """Evaluate ``version`` against the champion on ``scene`` and move the alias if it is at least as good."""
    _check_request(scene, force)
    history = _history(name)
    _check_version_exists(name, version)
    champion = champion_version(name)
    tags = {"gigaseg.kind": "promotion", "gigaseg.model_name": name}
    with tracking.run(tracking.PROMOTION_EXPERIMENT, f"promote {name} v{version}", tags) as run:
        decision = Decision(
            name, "kept", version, champion, champion, scene.metric, margin=margin, run_id=run.info.run_id
        )
        if scene.given:
            _score(decision, scene)
        decision.action = _action(decision, force)
        if decision.action in ("first", "forced", "promoted"):
            _crown(name, version, champion, history)
            decision.champion = version
        _record(decision)
    return decision


def rollback(name: str) -> Decision:
    """Give ``champion`` back to the version that held it before the current one."""
    history = _history(name)
    current = champion_version(name)
    if current is not None and history and history[-1] == current:
        history = history[:-1]
    if not history:
        raise InputError(f"{name}: no earlier champion to roll back to")
    previous = history[-1]
    tags = {"gigaseg.kind": "promotion", "gigaseg.model_name": name}
    with tracking.run(tracking.PROMOTION_EXPERIMENT, f"rollback {name}", tags) as run:
        _set_champion(name, previous, history)
        decision = Decision(name, "rolled_back", current, current, previous, run_id=run.info.run_id)
        _record(decision)
    return decision
