"""DAG scale: `snakemake -n` for the paper config over an index of 300K images.

Usage: python benchmarks/dag_scale.py [--images 300000] [--per-shard 500]

Builds, in a temporary copy of the workflow, the index checkpoint's outputs for N synthetic
image records (no pixels), as if the index had run over the paper's raw pool, then times a dry
run of the whole workflow with config.yaml (the paper's run).  Prints the number of jobs, per
rule, and the seconds the dry run took.  Target: <= 30 s and a job count in the low thousands.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pixverve.ingest.index import assign_shards, write_shards  # noqa: E402


def synthetic_index(n: int, per_shard: int) -> pd.DataFrame:
    ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]
    df = pd.DataFrame(
        {
            "image_id": [h[:16] for h in ids],
            "sha256": ids,
            "root": ["pexels" if i % 2 else "unsplash" for i in range(n)],
            "relpath": [f"{i // 1000:04d}/{i}.jpg" for i in range(n)],
            "width": 6000,
            "height": 4000,
            "megapixels": 24.0,
            "passed": True,
            "reason": "",
            "reason_detail": "",
        }
    )
    return assign_shards(df, per_shard)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300_000)
    ap.add_argument("--per-shard", type=int, default=500)
    ap.add_argument("--quick", action="store_true", help="seconds: 2000 images, 20 shards (CI checks it still runs)")
    args = ap.parse_args()
    if args.quick:
        # 20 shards: more than a bundle of every bundled stage (the group-components re-merge
        # that hung this dry run showed from 9 shards on: rules/bundles.smk)
        args.images, args.per_shard = 2000, 100
    with tempfile.TemporaryDirectory() as tmp:
        # the checkout's workflow run with --directory (a copy of it went stale once: it lacked prompts/)
        work = Path(tmp)
        for folder in ("data/raw/pexels", "data/raw/unsplash"):
            (work / folder).mkdir(parents=True)
            (work / folder / "stand_in.jpg").touch()  # a scanned root must hold an image file
        # model weights the paper config names (a dry run only checks that they exist)
        weights = work / "resources/weights"
        weights.mkdir(parents=True)
        (weights / "sac+logos+ava1-l14-linearMSE.pth").touch()
        # the paper config's other EDIT lines that name files: a published eval checkout, FG-CLIP2
        (work / "eval/util").mkdir(parents=True)
        (work / "eval/util/build_prompts.py").touch()
        (work / "edits.yaml").write_text("bench:\n  fgclip2: {model: fg-clip2-base}\n  judge: {published_eval: eval}\n")
        t0 = time.perf_counter()
        df = synthetic_index(args.images, args.per_shard)
        names = write_shards(df, work / "results/index/index.parquet", work / "results/index/shards")
        t_index = time.perf_counter() - t0
        past = time.time() - 3600  # the source folders are older than the index
        for folder in ("data/raw/pexels", "data/raw/unsplash"):
            os.utime(work / folder / "stand_in.jpg", (past, past))
            os.utime(work / folder, (past, past))
        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(ROOT / "Snakefile"),
            "--directory",
            str(work),
            "-n",
            "--quiet",
            "rules",
            "--cores",
            "1",
            "--configfile",
            str(work / "edits.yaml"),
        ]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
        t_dag = time.perf_counter() - t0
        if res.returncode != 0:
            sys.exit(res.stdout[-2000:] + res.stderr[-2000:])
        counts = dict(re.findall(r"^(\w+)\s+(\d+)$", res.stdout, re.M))
    print(f"images: {args.images}, images per shard: {args.per_shard}, shards: {len(names)}")
    print(f"writing the synthetic index + shard manifests: {t_index:.1f} s")
    print(f"{'rule':<20} {'jobs':>8}")
    for rule, n in counts.items():
        if rule != "total":
            print(f"{rule:<20} {n:>8}")
    total = int(counts.get("total", 0))
    print(f"{'total':<20} {total:>8}")
    print(
        f"snakemake -n (paper config): {t_dag:.1f} s  (target <= 30 s, jobs in the low thousands: "
        f"{'OK' if t_dag <= 30 and total < 10_000 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
