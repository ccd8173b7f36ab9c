"""The whole peer bench run: per case and scene, the untiled references, then every planned row.

Rows run one at a time, each in its own child process (:func:`.measure.run_row`);
``repeat`` runs of each row are interleaved per scene (all rows once, then all
again), so a noisy minute on a shared machine hits every row alike.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.peers.fixtures import Case, make_checkpoint, write_scene
from bench.peers.measure import Measured, RowResult, merge_runs, run_row
from bench.peers.nnunet import nnunet_version
from bench.peers.rows import REFERENCES, ROWS, RowSpec
from bench.peers.seams import border_band, reference_for, seam_error

OVERLAP = 0.25
WARMUP_SIDE = 512


@dataclass
class Settings:
    """What the command line decides for every case."""

    work: Path
    """Scratch folder: scenes, checkpoints, each run's outputs."""
    keep_outputs: bool
    """Keep each run's outputs in ``work`` (the user named it) rather than deleting them after use."""
    device: str
    timeout: float
    cap_bytes: int
    amps: list[bool]
    rows: list[str] | None
    """Rows to run for every case (None: all, less each case's ``skip_by_default``)."""
    cli_sides: set[int]
    ray_sides: set[int]
    large_mpx: float
    large_rows: list[str]
    ref_max_mpx: float
    repeat: int
    repeat_max_mpx: float
    workers_per_gpu: int = 1
    """The Ray row on a GPU: actors sharing each GPU (``--workers-per-gpu``)."""
    prefect_warm: bool = False
    """The shared Prefect server is up and has run a flow (:meth:`CaseBench._warm_prefect`)."""


@dataclass
class Scene:
    """One scene of a case, and the untiled references run on it (none above ``ref_max_mpx``)."""

    side: int
    path: Path
    seam: bool
    """Seam errors are measured on this scene (the references run on it)."""
    refs: dict[str, RowResult] = field(default_factory=dict)
    band: np.ndarray | None = None
    errs: dict[str, dict[str, float] | None] = field(default_factory=dict)
    """Each row's seam error (from its first run), by row name (`` AMP`` appended for AMP runs)."""

    @property
    def mpx(self) -> float:
        return self.side * self.side / 1e6


class CaseBench:
    """One case (model) over its scenes; remembers which rows failed, so larger scenes skip them."""

    def __init__(self, case: Case, settings: Settings) -> None:
        self.case, self.settings = case, settings
        self.rows = settings.rows if settings.rows is not None else [
            r for r in ROWS if r not in case.skip_by_default
        ]  # fmt: skip
        self.ckpt = make_checkpoint(case, settings.work / f"{case.arch}.safetensors")
        self.failed: dict[str, str] = {}
        if nnunet_version() is None:
            self.failed["nnunet"] = self.failed["nnunet AMP"] = "nnU-Net is not installed: `make peer-tools`"

    def run(self) -> list[Measured]:
        """Every scene of the case, smallest first (the list the report's table is made of)."""
        measured: list[Measured] = []
        for side in self.case.sizes:
            measured += self.run_scene(side)
        return measured

    def run_scene(self, side: int) -> list[Measured]:
        """The references, then the planned rows (repeated) on one freshly written scene."""
        path = write_scene(self.settings.work / f"scene_{side}.tif", side)
        scene = Scene(side, path, seam=side * side / 1e6 <= self.settings.ref_max_mpx)
        if scene.seam:
            self._run_references(scene)
        measured = self._reference_results(scene) + self._run_rows(scene)
        if not self.settings.keep_outputs:
            for ref in scene.refs.values():
                if ref.out is not None:
                    shutil.rmtree(ref.out, ignore_errors=True)
        path.unlink()
        return measured

    def _spec(self, scene: Scene, row: str, amp: bool, seam: bool, out: Path) -> RowSpec:
        case = self.case
        return RowSpec(
            row=row, scene=str(scene.path), ckpt=str(self.ckpt), tile=case.tile, overlap=OVERLAP,
            batch=case.batch, device=self.settings.device, amp=amp, seam=seam, out=str(out),
            workers_per_gpu=self.settings.workers_per_gpu,
        )  # fmt: skip

    def _run(self, spec: RowSpec) -> RowResult:
        return run_row(spec, self.settings.timeout, self.settings.cap_bytes)

    def _run_references(self, scene: Scene) -> None:
        """Both untiled passes, and the border band the seam error is counted in."""
        arch, side = self.case.arch, scene.side
        for name in REFERENCES:
            out = self.settings.work / f"{arch}_{side}_{name}"
            ref = scene.refs[name] = self._run(self._spec(scene, name, amp=False, seam=True, out=out))
            print(f"{arch} {side}² {name}: {ref.status} {ref.seconds:.1f} s "
                  f"{ref.rss / 2**20:.0f} MiB", flush=True)  # fmt: skip
        stride = self.case.tile - round(self.case.tile * OVERLAP)
        scene.band = border_band((side, side), self.case.tile, stride)

    def _reference_results(self, scene: Scene) -> list[Measured]:
        """The references as rows; ``reference-cl``'s Δp is its layout's rounding against ``reference``."""
        measured = []
        for name, ref in scene.refs.items():
            plain = scene.refs["reference"]
            err = None
            if name == "reference-cl" and ref.status == "ok" and plain.status == "ok":
                err = seam_error(ref.out, plain.out, scene.band)
            measured.append(Measured(self.case.arch, scene.side, name, merge_runs([ref]), err))
        return measured

    def _plan(self, scene: Scene) -> list[tuple[bool, str]]:
        """(AMP, row) pairs run on this scene: CLI and Ray rows at their sizes, few rows on large scenes."""
        s = self.settings
        return [
            (amp, row)
            for amp in s.amps
            for row in self.rows
            if not (row == "gigaseg-cli" and scene.side not in s.cli_sides)
            and not (row == "gigaseg-ray" and scene.side not in s.ray_sides)
            and not (scene.mpx >= s.large_mpx and row not in s.large_rows)
        ]

    def _warm_prefect(self) -> None:
        """Start the shared Prefect server and run one flow on it before any ``gigaseg-cli`` run is timed.

        A user's commands find the server running (it outlives them); without this the first
        timed run would pay its start (seconds) and its first, slower flow run. One unmeasured
        run of the ``gigaseg-cli`` row itself on a small scene.
        """
        if self.settings.prefect_warm:
            return
        path = write_scene(self.settings.work / "prefect_warmup.tif", WARMUP_SIDE)
        out = self.settings.work / "prefect_warmup"
        try:
            scene = Scene(WARMUP_SIDE, path, seam=False)
            result = self._run(self._spec(scene, "gigaseg-cli", amp=False, seam=False, out=out))
        finally:
            path.unlink(missing_ok=True)
            shutil.rmtree(out, ignore_errors=True)
        if result.status != "ok":
            raise RuntimeError(f"the Prefect warm-up run of gigaseg-cli failed: {result.status}")
        self.settings.prefect_warm = True

    def _run_rows(self, scene: Scene) -> list[Measured]:
        """The planned rows, ``repeat`` times interleaved; the seam error from each row's first run."""
        plan = self._plan(scene)
        if any(row == "gigaseg-cli" for _, row in plan):
            self._warm_prefect()
        runs: dict[str, list[RowResult]] = {}
        for rep in range(self._repeats(scene)):
            for amp, row in plan:
                key = f"{row}{' AMP' if amp else ''}"
                if key in self.failed:
                    if rep == 0:
                        runs[key] = [RowResult(f"not run ({self.failed[key]})")]
                    continue
                runs.setdefault(key, []).append(self._run_once(scene, row, amp, rep))
        return [
            Measured(self.case.arch, scene.side, key, merge_runs(results), scene.errs.get(key))
            for key, results in runs.items()
        ]

    def _repeats(self, scene: Scene) -> int:
        return self.settings.repeat if scene.mpx <= self.settings.repeat_max_mpx else 1

    def _run_once(self, scene: Scene, row: str, amp: bool, rep: int) -> RowResult:
        """One run of one row; its first run also gives the seam error and may mark the row failed."""
        key = f"{row}{' AMP' if amp else ''}"
        out = self.settings.work / f"{self.case.arch}_{scene.side}_{row}{'_amp' if amp else ''}_{rep}"
        first = rep == 0
        res = self._run(self._spec(scene, row, amp, seam=scene.seam and first, out=out))
        if first and res.status != "ok":
            self.failed[key] = f"{res.status.split(' (')[0]} at {scene.mpx:.0f} Mpx"
        ref = reference_for(row, scene.refs)
        errs = scene.errs
        if first:
            errs[key] = seam_error(res.out, ref.out, scene.band) if ref and res.status == "ok" else None
        print(f"{self.case.arch} {scene.side}² {key} [{rep + 1}/{self._repeats(scene)}]: {res.status} "
              f"{res.seconds:.1f} s "
              f"{res.rss / 2**20:.0f} MiB {errs.get(key) if first else ''} {res.stages or ''}",
              flush=True)  # fmt: skip
        if res.out is not None and not self.settings.keep_outputs:
            shutil.rmtree(res.out, ignore_errors=True)
        return res
