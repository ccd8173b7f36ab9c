"""The peer bench's report: one markdown table per case, and the headline ratios against MONAI and nnU-Net."""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
from dataclasses import dataclass

from bench.devices import device_text
from bench.peers.fixtures import Case
from bench.peers.measure import Measured, RowResult
from bench.peers.monai_window import monai_version
from bench.peers.nnunet import nnunet_version
from bench.peers.rows import RAY_WORKERS, ROW_TEXT
from bench.peers.seams import BAND, FRAME
from bench.results import load_text, table_head

TABLE_HEAD = table_head(
    "scene", "row", "seconds", "Mpx/s", "peak RSS", "read (peers)", "mean abs Δp", "p99 abs Δp",
    "labels ≠ in border band (%)", "mean abs Δp, scene edge included",
)  # fmt: skip
COMPARISONS = [
    ("gigaseg", "monai-gaussian", "gigaseg end to end ÷ MONAI gaussian", True),
    ("gigaseg", "monai-gaussian-cl", "gigaseg end to end ÷ MONAI gaussian channels-last", False),
    (
        "gigaseg-array",
        "monai-gaussian",
        "gigaseg engine on an array ÷ MONAI gaussian (both in memory)",
        False,
    ),
    ("gigaseg-ray", "monai-gaussian", f"gigaseg on Ray ({RAY_WORKERS} workers) ÷ MONAI gaussian", False),
    ("gigaseg", "nnunet", "gigaseg end to end ÷ nnU-Net", False),
    ("gigaseg-cli", "monai-user", "`gigaseg segment` ÷ a MONAI user's end to end (both file to COG)", False),
    ("gigaseg", "monai-user", "gigaseg end to end in process ÷ a MONAI user's end to end", False),
]
"""Headline time / memory ratios: (row, row it is divided by, what it says, whether the targets apply)."""
SEAM_PEERS = (
    ("gigaseg-array-crop", "gigaseg crop blending"),
    ("nnunet", "nnU-Net"),
    ("chips-average", "chips averaged"),
    ("chips-crop", "chips cropped"),
)
"""Rows named in the headline's seam line between MONAI and naive, where they ran."""


def fmt_mpx(mpx: float) -> str:
    return f"{mpx:.0f}" if mpx >= 1 else f"{mpx:.2f}"


def _fmt_seconds(res: RowResult) -> str:
    """Fastest run, and the range over the repeats when there were several."""
    text = f"{res.seconds:.1f}"
    if len(res.runs) > 1:
        text += f" ({min(res.runs):.1f}–{max(res.runs):.1f})"
    if res.failed_runs:
        text += f" (+{len(res.failed_runs)} run(s): {'; '.join(res.failed_runs)})"
    return text


def _fmt_err(e: dict[str, float] | None) -> tuple[str, str, str, str]:
    if e is None:
        return "–", "–", "–", "–"
    if "mean" not in e:
        return "(as the array row)", "", f"{e['band_disagree']:.3f}", ""
    return f"{e['mean']:.2e}", f"{e['p99']:.2e}", f"{e['band_disagree']:.3f}", f"{e['mean_all']:.2e}"


def _table_row(it: Measured, ref_max: float) -> str:
    """One markdown row: a finished run's figures, or why it did not finish."""
    res = it.res
    scene = f"{fmt_mpx(it.mpx)} Mpx ({it.side}²)"
    name = ROW_TEXT.get(it.row.split(" ")[0], it.row) + (" AMP" if it.row.endswith("AMP") else "")
    if res.status != "ok":
        rss = f"≥ {res.rss / 2**30:.1f} GiB" if res.rss == res.rss and res.rss > 0 else "–"
        return f"| {scene} | {name} | {res.status} | – | {rss} | – | – | – | – | – |"
    mean, p99, band, mean_all = _fmt_err(it.err)
    if it.row == "reference":
        mean = p99 = band = mean_all = "(reference)"
    elif it.err is None and it.mpx > ref_max:
        mean, p99, band, mean_all = "n/c", "n/c", "n/c", "n/c"
    read = f"{res.read_seconds:.1f} s" if res.read_seconds is not None else "(included)"
    gpu = f", GPU busy {res.gpu_busy:.0%}" if res.gpu_busy is not None else ""
    return (
        f"| {scene} | {name} | {_fmt_seconds(res)}{gpu} | {it.mpx / res.seconds:.2f} "
        f"| {res.rss / 2**20:,.0f} MiB "
        f"| {read} | {mean} | {p99} | {band} | {mean_all} |"
    )


def _table_notes(items: list[Measured], ref_max: float, repeat: int, repeat_max: float) -> str:
    """What the table's columns mean, as one paragraph."""
    notes = [
        f"n/c: not computed — the untiled reference pass is only run up to {ref_max:.0f} Mpx. Seam figures "
        f"leave out a {FRAME}-px frame at the scene edge (last column: with it); the border band is "
        f"±{BAND} px around every tile edge of the overlapping and of the non-overlapping grid.",
        "Two references, one untiled pass each: the gigaseg rows (which run the model channels-last, the "
        "engine's default) are compared with `reference-cl` (model and input channels-last), the peers "
        "with `reference` (the model in its own, contiguous layout), so the layout's float rounding is not "
        "counted as seam error; the `reference-cl` row's Δp is that rounding (against `reference`).",
    ]
    if repeat > 1:
        notes.append(
            f"Seconds: the fastest of {repeat} runs (all rows once, then all again, per scene; range in "
            f"brackets; scenes over {repeat_max:.0f} Mpx once); peak RSS: the largest of the runs; seam "
            "figures: the first run."
        )
    if any(it.row.startswith("gigaseg-ray") for it in items):
        notes.append(
            f"Ray row: the same call with `workers={RAY_WORKERS}` on a fresh local Ray cluster; its seconds "
            "include starting the cluster (`ray_start` below) and its peak RSS is **summed over processes** "
            "(the driver and every Ray process it started: GCS, raylet, dashboard and agents, monitors, "
            "workers; sampled every 0.1 s; pages shared between processes count once per process)."
        )
    return " ".join(notes)


def table(
    case: Case, items: list[Measured], ref_max: float, repeat: int = 1, repeat_max: float = math.inf
) -> list[str]:
    """Markdown table for one case."""
    out = [f"### {case.name}: tile {case.tile}, overlap 0.25, batch {case.batch}", "", *TABLE_HEAD]
    out += [_table_row(it, ref_max) for it in items]
    out.append("")
    out.append(_table_notes(items, ref_max, repeat, repeat_max))
    staged = [it for it in items if it.res.stages]
    if staged:
        out.append("End-to-end stages (s): " + "; ".join(
            f"{fmt_mpx(it.mpx)} Mpx {it.row}: " + ", ".join(f"{k} {v}" for k, v in it.res.stages.items())
            for it in staged))  # fmt: skip
    out.append("")
    return out


def _ratio(
    ga: RowResult | None, mb: RowResult | None, a: str, b: str, what: str, targets: bool
) -> str | None:
    """Row ``a`` against row ``b`` on one scene: time ratio and peak RSS share, or why there is none."""
    if ga is None or mb is None:
        return None
    if mb.status != "ok":
        verdict = f"{b}: {mb.status}"
        if ga.status == "ok":
            verdict += f"; {a} finished in {ga.seconds:.0f} s at {ga.rss / 2**20:,.0f} MiB"
        return f"{what}: {verdict}"
    if ga.status != "ok":
        return f"{what}: {a} {ga.status}"
    t = f"time **{ga.seconds / mb.seconds:.2f}×**" + (" (target ≤ 1 from 64 Mpx)" if targets else "")
    m = f"peak RSS **{ga.rss / mb.rss:.0%}**" + (" (target ≤ 25%)" if targets else "")
    return f"{what}: {t}, {m}"


def _speed_lines(summary: list[Measured], min_mpx: float) -> list[str]:
    """Per case and scene of at least ``min_mpx``: the COMPARISONS' time and memory ratios."""
    by = {(s.case, s.side, s.row): s.res for s in summary}
    lines = []
    for case, side in sorted({(s.case, s.side) for s in summary}):
        mpx = side * side / 1e6
        if mpx < min_mpx:
            continue
        parts = [
            r
            for a, b, what, tg in COMPARISONS
            if (r := _ratio(by.get((case, side, a)), by.get((case, side, b)), a, b, what, tg))
        ]
        if parts:
            lines.append(f"- {case}, {fmt_mpx(mpx)} Mpx — " + "; ".join(parts))
    return lines


def _seam_line(case: str, side: int, errs: dict[str, dict[str, float]]) -> str:
    """gigaseg's seam error against MONAI's, the other peers' and naive tiles' on one scene."""
    g, m, n = errs["gigaseg-array"], errs["monai-gaussian"], errs["naive"]
    cl = ""
    if "reference-cl" in errs:
        cl = f" (channels-last rounding alone: {errs['reference-cl']['mean']:.1e})"
    return (
        f"- {case}, {fmt_mpx(side * side / 1e6)} Mpx seam error (mean |Δp|): "
        f"gigaseg {g['mean']:.2e} vs reference-cl{cl}, MONAI gaussian {m['mean']:.2e}, "
        + "".join(f"{what} {errs[r]['mean']:.2e}, " for r, what in SEAM_PEERS if r in errs)
        + f"naive {n['mean']:.2e} "
        f"→ naive ÷ gigaseg **{n['mean'] / max(g['mean'], 1e-12):.0f}×** (target ≥ 10×)"
    )


def _seam_lines(summary: list[Measured]) -> list[str]:
    lines = []
    for case, side in sorted({(s.case, s.side) for s in summary}):
        errs = {
            s.row: s.err for s in summary if (s.case, s.side) == (case, side) and s.err and "mean" in s.err
        }
        if "gigaseg-array" in errs and "monai-gaussian" in errs and "naive" in errs and errs["naive"]["mean"]:
            lines.append(_seam_line(case, side, errs))
    return lines


def headline(summary: list[Measured], min_mpx: float = 4) -> str:
    """gigaseg vs MONAI gaussian (and channels-last MONAI): time and memory ratios per size; seam ratios."""
    lines = [
        "Headline (same scene, same weights / tile / overlap / batch; time ratio of the fastest runs; "
        "peak RSS as % of MONAI's):",
        "",
    ]
    return "\n".join(lines + _speed_lines(summary, min_mpx) + _seam_lines(summary))


@dataclass
class RunInfo:
    """How the bench was run, for the head of its results section."""

    command: str
    started: dt.datetime
    loads: tuple[float, float]
    """Load average at the start and at the end (the machine is shared)."""
    device: str
    timeout: float
    mem_cap: float
    repeat: int
    repeat_max_mpx: float


def _total_gib() -> float:
    import psutil

    return psutil.virtual_memory().total / 2**30


def results_section(run: RunInfo, report: str) -> str:
    """The "Peer tools" section of ``bench/RESULTS.md``: how it was run, what the figures mean, the tables."""
    import torch

    return (
        f"Command: `{run.command}`  \nDate: {run.started:%Y-%m-%d %H:%M}, "
        f"finished {dt.datetime.now():%H:%M}  \n"
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores "
        f"({device_text(run.device)}), torch {torch.__version__}, monai {monai_version()}, "
        f"nnU-Net {nnunet_version() or 'not installed'}; shared with other work: "
        f"{load_text(*run.loads)}  \n"
        f"Tile / overlap / batch as in each table; gaussian σ = 1/8 tile everywhere; per-row limits "
        f"{run.timeout:.0f} s and {run.mem_cap:.0f} GiB RSS (the machine has "
        f"{_total_gib():.0f} GiB, shared). Seconds: gigaseg end-to-end rows from the input GeoTIFF "
        f"to the finished COG; peers from the array in memory to labels (reading the GeoTIFF into the "
        f"array, shown apart, is not counted). RSS: peak of the whole child process (the Ray row: "
        f"summed over the driver and the cluster's processes). Each row runs {run.repeat} time(s) "
        f"up to {run.repeat_max_mpx:.0f} Mpx, interleaved; the table shows the fastest.\n\n"
        f"{report}\n"
    )
