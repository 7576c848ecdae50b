"""PixVerve-Bench inputs: the benchmark JSONL, a method's images paired by basename, simple metrics.

The benchmark file is a JSONL of ``file_name``, ``short_caption``, ``long_caption`` (the paper's
200 images); a method is a folder of generated images named like the real ones (any image
extension: ``<basename>.jpg`` in the published code).  Pairing is by basename without extension;
any real image without a generated one (or a generated image without a benchmark row) is an error
that lists them -- never a silently smaller benchmark.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff"}


class PairingError(ValueError):
    pass


@dataclass(frozen=True)
class BenchItem:
    name: str  # basename without extension: the pairing key
    real: Path
    generated: Path
    short_caption: str
    long_caption: str


def read_benchmark(jsonl: str | Path) -> list[dict]:
    rows = []
    with open(jsonl, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = [k for k in ("file_name", "short_caption", "long_caption") if k not in row]
            if missing:
                raise PairingError(f"{jsonl}:{n}: missing {missing}")
            rows.append(row)
    names = [Path(r["file_name"]).stem for r in rows]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PairingError(f"{jsonl}: basenames listed more than once: {dupes[:10]}")
    return rows


def pair_method(rows: list[dict], real_dir: str | Path, generated_dir: str | Path) -> list[BenchItem]:
    """Benchmark rows paired with the method's images; raises listing every missing pair."""
    real_dir, generated_dir = Path(real_dir), Path(generated_dir)
    generated = {p.stem: p for p in sorted(generated_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    items, no_real, no_gen = [], [], []
    for row in rows:
        name = Path(row["file_name"]).stem
        real = real_dir / row["file_name"]
        if not real.is_file():
            no_real.append(row["file_name"])
        if name not in generated:
            no_gen.append(name)
        if real.is_file() and name in generated:
            items.append(BenchItem(name, real, generated[name], row["short_caption"], row["long_caption"]))
    extra = sorted(set(generated) - {Path(r["file_name"]).stem for r in rows})
    problems = []
    if no_gen:
        problems.append(f"{len(no_gen)} benchmark image(s) have no generated image in {generated_dir}: {no_gen[:20]}")
    if no_real:
        problems.append(f"{len(no_real)} real image(s) missing from {real_dir}: {no_real[:20]}")
    if extra:
        problems.append(f"{len(extra)} generated image(s) match no benchmark row: {extra[:20]}")
    if problems:
        raise PairingError("; ".join(problems))
    return items


def compression_ratio(paths: list[Path], size: int) -> float:
    """Diffusion-4K's extra metric: raw bytes (size^2 x 3 x N) / total bytes of the JPEG files."""
    total = sum(Path(p).stat().st_size for p in paths)
    return size * size * 3 * len(paths) / total


FID_MIN_IMAGES = 2  # torchmetrics' FID needs more than one sample per distribution


def require_fid_pairs(items, method: str, benchmark: str) -> None:
    """Too few paired images for FID: an error naming the method and the count (not torchmetrics')."""
    if len(items) < FID_MIN_IMAGES:
        raise ValueError(
            f"bench method {method!r}: {len(items)} benchmark image pair(s) from {benchmark}; FID needs at least "
            f"{FID_MIN_IMAGES}. The held-out split is empty or too small: every image may have been dropped by an "
            "earlier stage (paper_figures/table1_data_flow.csv shows where), or caption.export.benchmark_size is too small."
        )
