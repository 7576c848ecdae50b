"""Config of the training runs (config.yaml ``train``): one resolved spec per (run, resolution),
the checks the JSON schema cannot express, and the launch command for a job's processes.

A run's spec is ``train.defaults`` updated with the run's own keys, plus its scheme's base model
and text settings; ``resolution`` is the training side length (buckets keep about that area).
"""

from __future__ import annotations

import copy
import shlex
import sys

FAMILIES = {"full_attention": "flux2", "window": "flux2", "l2p": "zimage"}


def resolve_run(config: dict, run: str, resolution: int) -> dict:
    train = config["train"]
    if run not in train["runs"]:
        raise ValueError(f"config key train.runs: no run named {run!r} (have {sorted(train['runs'])})")
    spec = copy.deepcopy(train["defaults"])
    spec.update(copy.deepcopy(train["runs"][run]))
    family = FAMILIES[spec["scheme"]]
    spec.update(
        name=run,
        resolution=int(resolution),
        family=family,
        base=copy.deepcopy(train["bases"][family]),
        text=copy.deepcopy(train["text"][family]),
        data=copy.deepcopy(train["data"]),
        distributed=dict(copy.deepcopy(train["distributed"]), **spec.get("distributed", {})),
        resources=dict(copy.deepcopy(train["resources"]), **spec.get("resources", {})),
    )
    if spec["scheme"] == "l2p":
        spec["l2p"] = dict(spec["l2p"], resolutions=[int(r) for r in spec["resolutions"]])
    spec.setdefault("lora", None)
    spec["sizes"] = sizes_at(spec.get("sizes", "buckets"), int(resolution), run)
    if spec["sizes"] != "buckets":  # the published L2P reading: scale to cover, keep the centre
        spec["data"]["crop_mode"] = "cover"
    return spec


def sizes_at(sizes, resolution: int, run: str) -> str:
    """A run's ``sizes`` at one resolution: one mode for all, or a mapping resolution -> mode."""
    if isinstance(sizes, str):
        return sizes
    mode = sizes.get(str(resolution), sizes.get(resolution))
    if mode is None:
        raise ValueError(
            f"config key train.runs.{run}.sizes has no entry for resolution {resolution} "
            f"(has {sorted(sizes)}): add one (buckets | square | max_pixels)"
        )
    return mode


def enabled_runs(config: dict) -> list[tuple[str, int]]:
    train = config.get("train") or {}
    return [(run, int(res)) for run in train.get("enabled", []) for res in train["runs"][run]["resolutions"]]


def previous_resolution(config: dict, run: str, resolution: int) -> int | None:
    """The resolution a progressive run starts from (the next smaller one configured), or None."""
    spec = config["train"]["runs"][run]
    if not spec.get("progressive"):
        return None
    smaller = sorted(int(r) for r in spec["resolutions"] if int(r) < int(resolution))
    return smaller[-1] if smaller else None


def bucket_multiple(spec: dict) -> int:
    """Bucket sides: multiples of the token size (16 px for FLUX.2; the L2P patch)."""
    if spec["scheme"] == "l2p":  # and the U-Net's pooling: multiples of 2^levels
        import math

        levels = len((spec["l2p"].get("unet") or {}).get("widths") or (16, 32, 64, 128, 256, 512))
        return math.lcm(spec["resolution"] // int(spec["l2p"]["token_grid"]), 2**levels)
    return 16


def check_train_config(config: dict) -> None:
    train = config.get("train")
    if not train:
        return
    bench = config.get("bench") or {}
    for name, method in (bench.get("methods") or {}).items():
        gen = method.get("generate") or {}
        if gen.get("backend") != "checkpoint" or (bench.get("enabled") is not None and name not in bench["enabled"]):
            # a method left out of bench.enabled is never built (the demo leaves the paper's out)
            continue
        key = f"config key bench.methods.{name}.generate"
        missing = [k for k in ("run", "train_resolution", "width", "height", "steps") if k not in gen]
        if missing:
            raise ValueError(f"{key}: backend checkpoint needs {missing}")
        if gen["run"] not in train["runs"]:
            raise ValueError(f"{key}.run: {gen['run']!r} is not one of train.runs {sorted(train['runs'])}")
        if int(gen["train_resolution"]) not in [int(r) for r in train["runs"][gen["run"]]["resolutions"]]:
            raise ValueError(
                f"{key}.train_resolution: {gen['train_resolution']} is not a resolution of run {gen['run']}"
            )
    for run in train.get("enabled", []):
        if run not in train["runs"]:
            raise ValueError(f"config key train.enabled: {run!r} is not one of train.runs {sorted(train['runs'])}")
    for run, spec in train["runs"].items():
        merged = dict(train["defaults"], **spec)
        if spec["scheme"] == "l2p":
            grid = int(merged["l2p"]["token_grid"])
            bad = [r for r in spec["resolutions"] if int(r) % grid]
            if bad:
                raise ValueError(
                    f"config key train.runs.{run}.resolutions: {bad} not multiples of l2p.token_grid {grid}"
                )
        elif spec.get("progressive"):
            raise ValueError(f"config key train.runs.{run}.progressive: only l2p runs start from a smaller resolution")
        for res in spec["resolutions"]:
            sizes_at(merged.get("sizes", "buckets"), int(res), run)  # a mapping covers every resolution
        if merged["eval_every"] % merged["log_every"]:
            raise ValueError(
                f"config key train eval_every ({merged['eval_every']}) of run {run}: must be a multiple of "
                f"log_every ({merged['log_every']}): the fixed-batch loss is computed on logged steps"
            )
        if merged["vae_tile_stride"] > merged["vae_tile"]:
            raise ValueError(
                f"config key train vae_tile_stride ({merged['vae_tile_stride']}) of run {run}: larger than "
                f"vae_tile ({merged['vae_tile']}) would leave gaps between VAE tiles"
            )
        if spec["scheme"] == "l2p" and merged.get("lora"):
            raise ValueError(
                f"config key train.runs.{run}.lora: LoRA is offered for the FLUX.2 schemes (I, II), not L2P"
            )
        if spec["scheme"] == "window":
            from pixverve.train.patterns import AUTO, auto_pattern, window_settings

            for res in spec["resolutions"]:
                try:
                    settings = window_settings(merged.get("window") or {}, int(res))
                    if settings["pattern"] == AUTO:  # a square crop's grid must have a pattern
                        auto_pattern((int(res) // 16, int(res) // 16), tuple(settings["window_size"]))
                except (ValueError, TypeError) as exc:
                    raise ValueError(f"config key train.runs.{run}.window.pattern (resolution {res}): {exc}") from exc
        for res in spec["resolutions"]:
            if int(res) % 16:
                raise ValueError(f"config key train.runs.{run}.resolutions: {res} is not a multiple of 16 px")
        strategy = dict(train["distributed"], **merged.get("distributed", {}))["strategy"]
        if strategy not in ("ddp", "fsdp", "deepspeed"):
            raise ValueError(f"config key train.distributed.strategy: {strategy!r} (ddp | fsdp | deepspeed)")


def world_size(spec: dict) -> tuple[int, int]:
    """(nodes, processes per node) of a run: GPUs per node on GPUs, ``cpu_processes`` on CPU."""
    res = spec["resources"]
    if spec["device"] == "cpu" or int(res["gpus_per_node"]) == 0:
        return 1, int(res.get("cpu_processes", 1))
    return int(res["nodes"]), int(res["gpus_per_node"])


def rendezvous_port(dist: dict) -> int:
    """The run's rendezvous port: a number from config, or with ``port: auto`` (the default) a
    port free on this host now -- the launch command is built on the first node, which is the
    rendezvous host, so two training jobs sharing a node never collide on a fixed 29500."""
    port = dist.get("port", "auto")
    if port not in ("auto", None, 0):
        return int(port)
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))  # all interfaces: the other nodes reach the master on its network address
        return sock.getsockname()[1]


def launch_command(spec: dict, worker_args: list[str]) -> list[str]:
    """The command that starts every process of a run: ``accelerate launch`` with the run's
    strategy; across nodes, one launcher per node through ``srun`` (rank 0's host is the
    rendezvous)."""
    nodes, per_node = world_size(spec)
    dist = spec["distributed"]
    port = rendezvous_port(dist)
    if spec["device"] == "cpu" or int(spec["resources"]["gpus_per_node"]) == 0:
        # CPU processes (tests, a laptop): torchrun; accelerate picks gloo from its environment
        # (accelerate launch --cpu would need MPI for more than one process)
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(per_node),
            "--master_port",
            str(port),
            "-m",
            "pixverve.train.worker",
            *worker_args,
        ]
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(nodes * per_node),
        "--num_machines",
        str(nodes),
        "--dynamo_backend",
        "no",
        "--mixed_precision",
        spec["mixed_precision"],
    ]
    if nodes * per_node > 1 and dist["strategy"] == "ddp":
        cmd += ["--multi_gpu"]
    if dist["strategy"] == "fsdp":
        cmd += [
            "--use_fsdp",
            "--fsdp_sharding_strategy",
            str(dist.get("fsdp_sharding", "FULL_SHARD")),
            "--fsdp_auto_wrap_policy",
            "TRANSFORMER_BASED_WRAP",
        ]
    elif dist["strategy"] == "deepspeed":
        cmd += [
            "--use_deepspeed",
            "--zero_stage",
            str(int(dist["zero_stage"])),
            "--gradient_accumulation_steps",
            str(int(spec["gradient_accumulation"])),
        ]
    cmd += ["--main_process_port", str(port)]
    if nodes > 1:
        cmd += ["--machine_rank", "$SLURM_NODEID", "--main_process_ip", "$PIXVERVE_MASTER", "--rdzv_backend", "static"]
    cmd += ["--module", "pixverve.train.worker", *worker_args]
    if nodes > 1:  # one launcher per node; the master is the first host of the allocation
        inner = " ".join(a if a.startswith("$") else shlex.quote(a) for a in cmd)
        script = 'export PIXVERVE_MASTER=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1); ' + inner
        # explicit geometry: an inherited SLURM_NTASKS=1 would otherwise start rank 0 only; and the
        # node's CPUs for its launcher (the job step would otherwise get 1 CPU per task)
        cpus = int(spec["resources"].get("cpus_per_gpu", 1)) * per_node
        return [
            "srun",
            "--overlap",
            f"--nodes={nodes}",
            f"--ntasks={nodes}",
            "--ntasks-per-node=1",
            f"--cpus-per-task={cpus}",
            "bash",
            "-c",
            script,
        ]
    return cmd
