"""Rule atlas_shard: one shard's atlas entries (every stage's decision and overlays per image), its
pyramids and thumbnails (pixverve/atlas/build.py)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.atlas import build  # noqa: E402
from pixverve.atlas.pyramid import set_threads  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "atlas_shard")
set_threads(sm.threads)  # libvips' memory grows with its threads (NOTES.md, "Measured")
results = Path(sm.input[0]).parents[1]  # results/index/index.parquet
tiles = Path(sm.output.tiles)
tiles.mkdir(parents=True, exist_ok=True)
entries, thumbs = build.build_shard(results, sm.params.shard, sm.params.config, tiles.parents[1], log=log.info)
tmp = Path(sm.output.entries + ".tmp")
with open(tmp, "w", encoding="utf-8") as fh:
    for entry, thumb in zip(entries, thumbs, strict=True):
        fh.write(json.dumps({"entry": entry, "thumb": thumb}, ensure_ascii=True) + "\n")
tmp.replace(sm.output.entries)
failed = sum(1 for e in entries if e["pyramid_error"])
log.info(f"{len(entries)} images, {failed} without pixels (their reasons are on their pages)")
