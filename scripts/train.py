"""Rule train: one (run, resolution) -> final weights, train_log.csv, resolved config, loss plot."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.models.devices import resolve_device  # noqa: E402
from pixverve.train.config import launch_command, world_size  # noqa: E402
from pixverve.train.report import plot_train_log  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "train")
spec = dict(sm.params.spec, device=resolve_device(sm.params.spec["device"]))
out_dir = Path(sm.output.final).parent
(out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
Path(sm.output.resolved).write_text(yaml.safe_dump(spec, sort_keys=True))
spec_path = out_dir / "checkpoints" / "spec.json"
spec_path.write_text(json.dumps(spec, indent=1, sort_keys=True))
args = ["--spec", str(spec_path), "--out", str(out_dir)] + (["--init", str(sm.input.init[0])] if sm.input.init else [])
nodes, per_node = world_size(spec)
if nodes * per_node == 1:
    from pixverve.train.worker import main

    main(args)
else:
    cmd = launch_command(spec, args)
    log.info("launching %d process(es) on %d node(s): %s", nodes * per_node, nodes, " ".join(cmd))
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(Path(sm.scriptdir).parent), os.environ.get("PYTHONPATH", "")])
    )
    done = subprocess.run(cmd, env=env, stdout=sys.stderr, stderr=sys.stderr)
    if done.returncode != 0:
        raise SystemExit(f"training processes failed (exit {done.returncode}); see {sm.log[0]}")
plot_train_log(
    sm.output.log_csv,
    sm.output.plot,
    title=f"{sm.wildcards.run} @ {sm.wildcards.res} px",
    smoke=spec["base"]["backend"] == "tiny",
)
