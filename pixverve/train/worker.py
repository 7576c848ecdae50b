"""One process of a training run (started by rule train directly, or by ``accelerate launch``
on every GPU / CPU process): reads the resolved spec, the training split and trains."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def samples_for(spec: dict):
    import pandas as pd

    from pixverve.train.config import bucket_multiple
    from pixverve.train.data import dataset_folder, records_from_metadata, resolve_image_paths, samples_from_records

    records = records_from_metadata(pd.read_parquet(spec["data"]["metadata"]))
    if not records:
        raise SystemExit(
            f"no training images: {spec['data']['metadata']} has no rows in split 'train' (every image "
            "may have been dropped by an earlier stage: paper_figures/table1_data_flow.csv shows where)"
        )
    folder = dataset_folder(spec["data"]["metadata"], spec["data"].get("root"))
    records = resolve_image_paths(records, folder)
    logging.getLogger("pixverve.train.loop").info(
        "%d training images (split train of %s, paths from %s)", len(records), spec["data"]["metadata"], folder
    )
    return samples_from_records(
        records,
        int(spec["resolution"]),
        spec["data"]["caption"],
        bucket_multiple(spec),
        float(spec["data"]["bucket_max_ratio"]),
        sizes=spec["sizes"],
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", required=True, help="resolved run spec (JSON)")
    parser.add_argument("--out", required=True, help="the run's folder: results/train/<run>/<resolution>")
    parser.add_argument("--init", default=None, help="final/ folder of the run to start from (progressive L2P)")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    spec = json.loads(Path(args.spec).read_text())
    if spec["distributed"]["strategy"] == "deepspeed":
        try:
            import deepspeed  # noqa: F401
        except ImportError as exc:
            raise SystemExit(
                f"train.distributed.strategy is deepspeed but DeepSpeed is not installed ({exc}); "
                "use the train conda env (envs/train.yaml) or strategy ddp/fsdp"
            ) from exc
    memory = spec.get("memory") or {}
    if memory.get("expandable_segments"):  # read by torch at the first CUDA allocation (published at L2P 8K/10K)
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    from pixverve.train.loop import train_run

    summary = train_run(spec, samples_for(spec), args.out, args.init, log=logging.getLogger("pixverve.train.loop").info)
    logging.getLogger("pixverve.train.loop").info("summary: %s", json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
