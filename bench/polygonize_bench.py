"""Polygonising a class map: gigaseg's blockwise pieces + merge against GDAL's ``gdal_polygonize``.

``python -m bench.polygonize_bench`` writes a realistic class map (five classes in patches
from ~10 px to ~2000 px across, with speckle, a nodata margin) as a tiled GeoTIFF at each
size, then polygonises it in a fresh process each way, sampling the process tree's RSS:

- *gigaseg*: the path of a run with ``--vector``, in two processes: each block's piece
  (:class:`~pipeline.exporters.polygon_pieces.BlockPolygons`, what an actor makes) written to
  a folder; then (the export step) merged across block edges and streamed to a GeoPackage;
- *gdal_polygonize*: GDAL's own command on the same map (4-connectedness, GeoPackage).

Throughput is megapixels per second of wall time; the ratio is gigaseg's time and peak over
GDAL's. The section "Polygons" of ``bench/RESULTS.md`` is rewritten unless ``--no-record``.
Run it alone: at 1 Gpx it takes tens of minutes and several GB of disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from bench.results import command_line, current_commit, load_text, table_head, write_section

NODATA = 255
STRIP = 1024
PIECES_GDAL_CACHE_MB = 64
"""GDAL's block cache while the pieces are made: each window is read once, and in a run the
actors make the pieces from labels they hold, so GDAL's default (5% of RAM) would only measure
the cache filling."""


def class_strip(row0: int, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Rows ``[row0, row0 + rows)`` of the class map: a deterministic function of the pixel position."""
    rng = np.random.default_rng(seed)
    y = np.arange(row0, row0 + rows, dtype=np.float64)[:, None]
    x = np.arange(cols, dtype=np.float64)[None, :]
    field = np.zeros((rows, cols))
    for wavelength in (4000.0, 1300.0, 420.0, 140.0, 45.0):
        for _ in range(2):
            kx, ky = rng.normal(size=2) * 2 * np.pi / wavelength
            field += np.sin(kx * x + ky * y + rng.uniform(0, 2 * np.pi)) * (wavelength / 4000.0) ** 0.5
    labels = np.digitize(field, [-0.9, -0.2, 0.4, 1.0]).astype(np.uint8)
    speckle = (np.sin(x * 12.9898 + y * 78.233) * 43758.5453) % 1.0 < 0.002
    labels[speckle] = (labels[speckle] + 1) % 5
    labels[:, :64] = NODATA  # a nodata margin
    return labels


def write_class_map(path: Path, side: int) -> Path:
    """The map as a tiled, DEFLATE GeoTIFF (10 m UTM pixels), written strip by strip."""
    profile = {
        "driver": "GTiff", "height": side, "width": side, "count": 1, "dtype": "uint8", "nodata": NODATA,
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate", "bigtiff": "IF_SAFER",
        "crs": CRS.from_epsg(32633), "transform": Affine(10.0, 0, 400_000.0, 0, -10.0, 5_000_000.0),
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, side, STRIP):
            rows = min(STRIP, side - r)
            dst.write(class_strip(r, rows, side), 1, window=Window(0, r, side, rows))
    return path


def gigaseg_pieces(raster: Path, pieces_dir: Path, block: int) -> None:
    """What the actors of a ``--vector`` run do: each block's piece, written to a folder."""
    from pipeline.exporters.polygon_pieces import BlockPolygons

    pieces_dir.mkdir(parents=True, exist_ok=True)
    with rasterio.Env(GDAL_CACHEMAX=PIECES_GDAL_CACHE_MB), rasterio.open(raster) as src:
        for i, r in enumerate(range(0, src.height, block)):
            for j, c in enumerate(range(0, src.width, block)):
                window = Window(c, r, min(block, src.width - c), min(block, src.height - r))
                piece = BlockPolygons.from_labels(src.read(1, window=window), None, (r, c), NODATA)
                (pieces_dir / f"{i}_{j}.npz").write_bytes(piece.to_bytes())


def gigaseg_merge(raster: Path, pieces_dir: Path, out: Path) -> None:
    """What the export of a ``--vector`` run does: the pieces merged across block edges and
    streamed to a GeoPackage."""
    from pipeline.exporters.polygon_stream import stream_features, write_region_stream
    from pipeline.exporters.polygons import VectorTarget

    with rasterio.open(raster) as src:
        crs, transform = src.crs.to_wkt(), tuple(src.transform)[:6]

    def load():
        for path in sorted(pieces_dir.glob("*.npz"), key=lambda p: tuple(map(int, p.stem.split("_")))):
            yield tuple(map(int, path.stem.split("_"))), path.read_bytes()

    names = ["water", "forest", "grassland", "cropland", "built-up"]
    write_region_stream(stream_features(load, transform), VectorTarget(out, crs, names, [(0, 0, 0)] * 5))


def measure(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB, the process and its children, sampled every 50 ms)."""
    t0 = time.perf_counter()
    proc = psutil.Popen(command, stdout=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        try:
            tree = [proc, *proc.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.05)
    if proc.returncode:
        raise RuntimeError(f"{command[:3]} failed with status {proc.returncode}")
    return time.perf_counter() - t0, peak / 2**20


def count_features(path: Path) -> int:
    """Features in the first layer of a vector file."""
    from pyogrio import read_info

    return int(read_info(str(path), layer=0)["features"])


def run_size(side: int, block: int, folder: Path) -> dict[str, float]:
    """Both polygonisers on one map size."""
    raster = write_class_map(folder / f"map_{side}.tif", side)
    ours, theirs = folder / f"gigaseg_{side}.gpkg", folder / f"gdal_{side}.gpkg"
    pieces_dir = folder / f"pieces_{side}"
    me = [sys.executable, "-m", "bench.polygonize_bench"]
    t_pieces, m_pieces = measure([*me, "--pieces", str(raster), str(pieces_dir), str(block)])
    t_merge, m_merge = measure([*me, "--merge", str(raster), str(pieces_dir), str(ours)])
    shutil.rmtree(pieces_dir)
    t_ours, m_ours = t_pieces + t_merge, max(m_pieces, m_merge)
    gdal = shutil.which("gdal_polygonize.py") or shutil.which("gdal_polygonize")
    if gdal is None:
        raise SystemExit("gdal_polygonize not found (Debian: apt-get install gdal-bin python3-gdal)")
    t_gdal, m_gdal = measure([gdal, "-q", "-f", "GPKG", str(raster), str(theirs), "classes", "class_id"])
    mpx = side * side / 1e6
    row = {
        "mpx": mpx, "t_ours": t_ours, "m_ours": m_ours, "t_gdal": t_gdal, "m_gdal": m_gdal,
        "t_merge": t_merge, "m_merge": m_merge,
        "n_ours": count_features(ours), "n_gdal": count_features(theirs),
    }  # fmt: skip
    for path in (raster, ours, theirs):
        path.unlink(missing_ok=True)
    return row


def report(rows: list[dict[str, float]], args: list[str], load: str) -> str:
    """The results section."""
    lines = [
        f"Command: `{command_line('bench.polygonize_bench', args)}`  ",
        f"Date: {time.strftime('%Y-%m-%d')}, commit {current_commit()}  ",
        f"Machine: {os.cpu_count()} CPU cores, {load}",
        "",
        *table_head(
            "map", "gigaseg s", "gigaseg Mpx/s", "gigaseg peak MiB", "merge s", "merge peak MiB",
            "GDAL s", "GDAL Mpx/s", "GDAL peak MiB", "time ratio", "memory ratio",
            "features (gigaseg / GDAL)",
        ),
    ]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['mpx']:.0f} Mpx | {r['t_ours']:.1f} | {r['mpx'] / r['t_ours']:.2f} | {r['m_ours']:.0f} | "
            f"{r['t_merge']:.1f} | {r['m_merge']:.0f} | "
            f"{r['t_gdal']:.1f} | {r['mpx'] / r['t_gdal']:.2f} | {r['m_gdal']:.0f} | "
            f"{r['t_ours'] / r['t_gdal']:.2f}× | {r['m_ours'] / r['m_gdal']:.2f}× | "
            f"{r['n_ours']} / {r['n_gdal']} |"
        )
    lines += [
        "",
        "Both make one polygon per 4-connected region and skip nodata, so the feature counts agree "
        "when gigaseg's merge across block edges is right. gigaseg runs in two processes, as in a run: "
        f"the pieces (made on the actors in a run from the labels they hold; here one process reads the map "
        f"through GDAL with a {PIECES_GDAL_CACHE_MB} MB block cache, each window once) and the merge and "
        "write (the export step); its time is their sum and its peak the larger of the two. GDAL's own "
        "command runs with its defaults.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Measure each size, print the table, record it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sides", default="8192,32768", help="map sides in pixels (8192² = 67 Mpx, 32768² ≈ 1 Gpx)"
    )
    parser.add_argument("--block", type=int, default=4096, help="block side, as the segment default")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--no-record", action="store_true", help="print only; leave bench/RESULTS.md alone")
    parser.add_argument("--pieces", nargs=3, metavar=("RASTER", "DIR", "BLOCK"), help=argparse.SUPPRESS)
    parser.add_argument("--merge", nargs=3, metavar=("RASTER", "DIR", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pieces:
        gigaseg_pieces(Path(args.pieces[0]), Path(args.pieces[1]), int(args.pieces[2]))
        return
    if args.merge:
        gigaseg_merge(Path(args.merge[0]), Path(args.merge[1]), Path(args.merge[2]))
        return
    folder = Path(tempfile.mkdtemp(prefix="polygonize-bench-", dir=args.work))
    start = os.getloadavg()[0]
    try:
        rows = [run_size(int(s), args.block, folder) for s in args.sides.split(",")]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    given = sys.argv[1:] if argv is None else argv
    body = report(rows, given, load_text(start, os.getloadavg()[0]))
    print(body)
    if not args.no_record:
        write_section("Polygons", body)


if __name__ == "__main__":
    main()
