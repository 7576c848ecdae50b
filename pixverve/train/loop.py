"""Training loop of the three schemes (issue #8): one run = (scheme, resolution) -> a checkpoint.

``train_run(spec, samples, out_dir)`` runs under accelerate (one process here, or every process of
``accelerate launch`` / torchrun: DDP, FSDP or DeepSpeed as launched).  Per step: a one-bucket
batch of crops read from the tiled 100 MP outputs (pixverve.train.data), captions through the
base pipeline's text encoder, a noise level under a static shift (schemes I/II: logit-normal,
``train_shift``, mu 0.8 at every resolution by default; III: L2P's grid with ``l2p.shift``), the
flow-matching loss (v = noise - x0), AdamW, constant lr after a linear warm-up.  The final
``model.json`` records the resolved training shift, which sampling reads (pixverve.train.infer).

Resume: every ``checkpoint_every`` steps ``accelerator.save_state`` writes
``<out>/checkpoints/step-NNNNNN`` (model, optimizer, lr schedule, RNG) and then a ``done`` marker;
a new job starts from the newest marked checkpoint.  The data order and every noise draw are
functions of (seed, step, rank), so a resumed run takes the same steps a run that never stopped
would.  The running log lives beside the checkpoints (``<out>/checkpoints/train_log.csv``,
rows after the resumed step dropped) and is copied to the run's output at the end.

Each logged step also checks the ranks agree: the gradient norm and a parameter checksum are
gathered from every rank (their spread must be ~0 under data parallelism) and the number of
ranks that stepped is recorded.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from pixverve.train import models as tm
from pixverve.train.data import TrainSamples, bucket_batches
from pixverve.train.published import l2p_to_ours, l2p_to_published, lora_target_names, published_lora_state

FAMILY = {"full_attention": "flux2", "window": "flux2", "l2p": "zimage"}
LOG_FIELDS = [
    "step",
    "epoch",
    "loss",
    "eval_loss",
    "lr",
    "images_per_s",
    "peak_mem_mb",
    "grad_norm",
    "grad_norm_spread",
    "param_spread",
    "rank_loss_spread",
    "ranks_stepped",
    "sigma_q05",
    "sigma_q50",
    "sigma_q95",
]
SIGMA_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


class TrainError(RuntimeError):
    pass


MASTER_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _dtype(name: str):
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}[name]


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    from pixverve.core.memory import peak_rss_mb

    return peak_rss_mb()  # resident peak of this process


def step_generator(seed: int, step: int, rank: int, stream: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 9_973 + rank * 101 + stream) % 2**63)


def flux2_train_mu(spec: dict, tokens: int) -> float:
    """mu of the schemes I/II training shift (config key train_shift; ours): static, or FLUX.2's
    dynamic inference fit at the token count (mu 11.55 at 4K: nearly every sigma ~1)."""
    shift = tm.train_shift(spec)
    if shift["mode"] == "dynamic":
        return tm.flux2_mu(tokens, int(spec["inference_steps"]))
    return shift["mu"]


# ---------------------------------------------------------------------------------------------
# families: what turns a batch of pixels + captions into a loss


class Flux2Adapter:
    """Schemes I and II on a Flux2KleinPipeline."""

    def __init__(self, spec: dict, work_dir: Path, device, weight_dtype):
        self.spec, self.device = spec, device
        self.pipe = tm.load_pipeline("flux2", spec["base"], weight_dtype, work_dir)
        self.pipe.text_encoder.to(device).requires_grad_(False)
        self.pipe.vae.to(device).requires_grad_(False)
        tm.configure_vae_tiling(self.pipe.vae, spec["vae_tile"], spec["vae_tile_stride"])
        self.model = self.pipe.transformer
        if tm.needs_own_processors(spec["scheme"], spec.get("memory")):
            window = tm.window_settings(spec["window"], spec["resolution"]) if spec["scheme"] == "window" else None
            tm.install_window_attention(self.model, window, spec.get("memory"))
        self.text_layers = tuple(spec["text"]["out_layers"])
        self.last_sigmas = None

    def train_mu(self, tokens: int) -> float:
        return flux2_train_mu(self.spec, tokens)

    def encode_text(self, captions: list[str]):
        with torch.no_grad():
            emb, ids = self.pipe.encode_prompt(
                captions,
                device=self.device,
                max_sequence_length=int(self.spec["text"]["max_length"]),
                text_encoder_out_layers=self.text_layers,
            )
        return emb, ids

    def encode_images(self, pixels: torch.Tensor):
        with torch.no_grad():
            lat = self.pipe._encode_vae_image(pixels.to(self.device, self.pipe.vae.dtype), None)
            ids = self.pipe._prepare_latent_ids(lat).to(self.device)
            return self.pipe._pack_latents(lat), ids

    def loss(self, model, pixels, captions, generator, sigmas=None):
        x0, img_ids = self.encode_images(pixels)
        emb, txt_ids = self.encode_text(captions)
        b, n = x0.shape[:2]
        if sigmas is None:
            sigmas = tm.sample_sigmas(b, generator, self.train_mu(n), self.spec["logit_mean"], self.spec["logit_std"])
            self.last_sigmas = sigmas
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        s = sigmas.to(x0)[:, None, None]
        xt = (1 - s) * x0 + s * noise
        dt = next(model.parameters()).dtype  # bf16 master weights: inputs in bf16 (no autocast on the CPU)
        pred = model(
            hidden_states=xt.to(dt),
            encoder_hidden_states=emb.to(dt),
            timestep=sigmas.to(x0.device, dt),
            img_ids=img_ids,
            txt_ids=txt_ids,
            guidance=None,
            return_dict=False,
        )[0]
        return torch.nn.functional.mse_loss(pred.float(), (noise - x0).float())


class L2PAdapter:
    """Scheme III: pixel-space Z-Image (L2P) initialised from the latent DiT."""

    def __init__(self, spec: dict, work_dir: Path, device, weight_dtype, init_from: Path | None = None, log=print):
        from safetensors.torch import load_file

        self.spec, self.device = spec, device
        l2p = spec["l2p"]
        pipe = tm.load_pipeline("zimage", spec["base"], weight_dtype, work_dir)
        pipe.text_encoder.to(device).requires_grad_(False)
        self.text_pipe = pipe  # kept for its tokenizer + text encoder only
        self.patch = tm.l2p_patch_size(int(spec["resolution"]), int(l2p["token_grid"]))
        self.model = tm.l2p_build(pipe.transformer, self.patch, l2p.get("unet") or {})
        self.frozen = tm.l2p_frozen_layers(len(self.model.transformer.layers), int(l2p.get("train_edge_layers", 5)))
        if init_from is not None:  # progressive: the previous resolution's trained weights, by name and shape
            previous = l2p_to_ours(load_file(init_from / "l2p_trained.safetensors"))  # either format
            loaded, skipped = tm.load_matching(self.model, previous)
            log(
                f"L2P initialised from {init_from} (progressive): {len(loaded)} tensors carried, "
                f"{len(skipped)} new at this resolution ({', '.join(skipped[:6])}{' ...' if len(skipped) > 6 else ''})"
            )
        pipe.transformer, pipe.vae = None, None  # no VAE in pixel space; the latent DiT was copied
        self.shift = float(l2p.get("shift", 3.0))
        self.grid_steps = int(l2p.get("timestep_grid", 1000))
        self.last_sigmas = None

    def freeze(self, model) -> None:
        """Main layers train_edge .. n - train_edge frozen (published: 5-24 of 30)."""
        for i in self.frozen:
            model.transformer.layers[i].requires_grad_(False).eval()

    def encode_text(self, captions: list[str]):
        with torch.no_grad():
            return self.text_pipe.encode_prompt(
                list(captions),  # a copy: ZImagePipeline.encode_prompt writes the templated text into its list
                device=self.device,
                do_classifier_free_guidance=False,
                max_sequence_length=int(self.spec["text"]["max_length"]),
            )[0]

    def loss(self, model, pixels, captions, generator, sigmas=None):
        dtype = next(model.parameters()).dtype
        x0 = published_l2p_pixels(pixels, self.device, dtype)
        caps = self.encode_text(captions)
        mixed = sigmas  # explicit noise levels (the eval loss's) are used as given
        if sigmas is None:
            sigmas = tm.l2p_sample_sigmas(x0.shape[0], generator, self.shift, self.grid_steps)
            self.last_sigmas = sigmas
            mixed = tm.l2p_noise_sigmas(sigmas, dtype, self.shift, self.grid_steps)  # add_noise's table pick
        # as the published FlowMatchSFTLoss: float32 noise, mix and target; the model sees x_t in its dtype.
        # Per sample with a 0-dim float32 sigma, as add_noise mixes its batch of 1: the same roundings.
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        xt = torch.stack([(1 - s) * x + s * n for s, x, n in zip(mixed.float().cpu(), x0, noise, strict=True)])
        pred = model(xt.to(dtype), sigmas.to(x0.device), [c.to(dtype) for c in caps], self.patch)
        return torch.nn.functional.mse_loss(pred.float(), noise - x0)


def published_l2p_pixels(pixels: torch.Tensor, device, dtype) -> torch.Tensor:
    """DiffSynth's ``preprocess_image`` for the L2P loss: the 0-255 levels in the run's dtype,
    times 2/255 minus 1 in that dtype (two roundings in bf16), then float32 as the published
    loss holds them.  ``pixels`` are our [-1, 1] batch (level / 127.5 - 1), whose levels are exact."""
    levels = ((pixels + 1) * 127.5).round()
    return (levels.to(device, dtype) * ((1 - (-1)) / 255) + (-1)).float()


# ---------------------------------------------------------------------------------------------
# checkpoints


def newest_checkpoint(ckpt_dir: Path) -> Path | None:
    done = sorted(p.parent for p in Path(ckpt_dir).glob("step-*/done"))
    return done[-1] if done else None


def _prune(ckpt_dir: Path, keep: int) -> None:
    done = sorted(p.parent for p in Path(ckpt_dir).glob("step-*/done"))
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def _read_log(path: Path, upto: int) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if int(r["step"]) <= upto]


def _write_log(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def _read_sigmas(path: Path, upto: int) -> list[tuple[int, float]]:
    if not path.exists():
        return []
    rows = [line.split(",") for line in path.read_text().splitlines()[1:] if line]
    return [(int(a), float(b)) for a, b in rows if int(a) <= upto]


def _write_sigmas(path: Path, values: list[tuple[int, float]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("step,sigma\n" + "".join(f"{a},{b:.6g}\n" for a, b in values))
    tmp.replace(path)


def sigma_stats(values) -> dict:
    """Quantiles of the noise levels a run trained on (rank 0's draws)."""
    arr = np.asarray(values, dtype=np.float64)
    if not arr.size:
        return {"count": 0}
    return {
        "count": int(arr.size),
        "mean": float(arr.mean()),
        "frac_above_0.99": float((arr > 0.99).mean()),
        **{f"q{int(q * 100):02d}": float(np.quantile(arr, q)) for q in SIGMA_QUANTILES},
    }


def trainable_model(model, spec: dict):
    """Full parameters, or a LoRA adapter (peft) on the attention projections."""
    lora = spec.get("lora")
    if not lora:
        model.requires_grad_(True)
        return model
    from peft import LoraConfig

    model.requires_grad_(False)
    model.add_adapter(
        LoraConfig(
            r=int(lora["rank"]),
            lora_alpha=float(lora["alpha"]),
            init_lora_weights="gaussian",
            # exact names: a "*" entry is any block index; each entry must pick linear layers only
            target_modules=lora_target_names(model, lora["target_modules"]),
        )
    )
    return model


def save_final(adapter, model, spec: dict, out: Path, steps: int, smoke: bool) -> None:
    """Final weights as safetensors + model.json (what generation needs to rebuild the model)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    info = {
        "scheme": spec["scheme"],
        "family": FAMILY[spec["scheme"]],
        "resolution": int(spec["resolution"]),
        "base": spec["base"],
        "steps": steps,
        "smoke": smoke,
        "lora": spec.get("lora") or None,
        "window": tm.window_settings(spec["window"], spec["resolution"]) if spec["scheme"] == "window" else None,
        "text": spec["text"],
        "sample": spec.get("sample"),
        # resolved, so sampling finds the shift the weights were trained at (infer.checkpoint_sample_mu)
        "train_shift": tm.train_shift(spec) if FAMILY[spec["scheme"]] == "flux2" else None,
        "vae_tile": spec["vae_tile"],
        "vae_tile_stride": spec["vae_tile_stride"],
        "master_weights": spec.get("master_weights", "fp32"),
        "seq_chunk": dict(zip(("seq_chunk_single", "seq_chunk_double"), tm.seq_chunk_sizes(spec.get("memory"))))
        if spec["scheme"] != "l2p"
        else None,
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if spec["scheme"] == "l2p":  # the trained subset only (frozen layers come from the base, as published)
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        subset = {k: v for k, v in state.items() if k in trained}
        names = spec["l2p"].get("checkpoint_format") or "published"
        # published: the names of the authors' ZImageDiT (their train_L2P.py step-N.safetensors);
        # export_l2p_published (pixverve.train.infer) writes the whole model, as their released files
        save_file(l2p_to_published(subset) if names == "published" else subset, out / "l2p_trained.safetensors")
        info["l2p"] = dict(spec["l2p"], patch=adapter.patch, frozen_layers=adapter.frozen, checkpoint_format=names)
    elif spec.get("lora"):
        from peft.utils import get_peft_model_state_dict

        # the published flux2_infer LoRA format: <module>.lora_A/lora_B.weight + <module>.alpha (A scaled
        # by alpha / rank, peft's scaling), so its --lora_alpha 1.0 reproduces this model
        lora = published_lora_state(get_peft_model_state_dict(model), float(spec["lora"]["alpha"]))
        save_file(lora, out / "transformer_lora.safetensors")
    else:
        # the whole transformer under diffusers' names = the published Flux2DiT's (flux2_infer --checkpoint_path)
        save_file(state, out / "transformer.safetensors")  # the base's config rebuilds it
    probe_patch = adapter.patch if spec["scheme"] == "l2p" else None
    was_training = model.training
    model.eval()
    save_file({"output": tm.probe_output(info["family"], model, probe_patch)}, out / "probe.safetensors")
    model.train(was_training)
    info["probe_patch"] = probe_patch
    (out / "model.json").write_text(json.dumps(info, indent=1, sort_keys=True, default=list))


# ---------------------------------------------------------------------------------------------
# the loop


def _batch_pixels(data: TrainSamples, indices: list[int], epoch: int) -> tuple[torch.Tensor, list[str]]:
    arrays, captions = [], []
    for i in indices:
        rgb, caption, _ = data[i, epoch]
        arrays.append(rgb)
        captions.append(caption)
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, captions


def release_cache_between_blocks(model, scheme: str) -> int:
    """torch.cuda.empty_cache() after every transformer block (published flux2_infer does it between
    blocks with local attention): less fragmentation at 4K-10K for some speed."""
    blocks = (
        list(model.transformer.layers)
        if scheme == "l2p"
        else list(model.transformer_blocks) + list(model.single_transformer_blocks)
    )
    for block in blocks:
        block.register_forward_hook(lambda *a: torch.cuda.empty_cache())
    return len(blocks)


def train_run(spec: dict, samples: list, out_dir, init_from=None, log=print) -> dict:
    """Train one (scheme, resolution) run; returns a summary.  ``spec`` is the run's resolved
    settings (see config.yaml ``train``); ``samples`` from train_data.samples_from_records."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm import tqdm

    out = Path(out_dir)
    ckpt_dir = out / "checkpoints"
    cpu = spec["device"] == "cpu" or not torch.cuda.is_available()
    if spec["device"] == "cuda" and not torch.cuda.is_available():
        raise TrainError("train.device is cuda but no GPU is visible to this job")
    accelerator = Accelerator(
        mixed_precision=spec["mixed_precision"], cpu=cpu, gradient_accumulation_steps=int(spec["gradient_accumulation"])
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    set_seed(int(spec["seed"]))
    device = accelerator.device
    weight_dtype = _dtype(spec["mixed_precision"]) if not cpu else torch.float32
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    with accelerator.main_process_first():  # rank 0 builds/caches a tiny base before the others read it
        if spec["scheme"] == "l2p":
            adapter = L2PAdapter(spec, ckpt_dir, device, weight_dtype, Path(init_from) if init_from else None, log)
        else:
            adapter = Flux2Adapter(spec, ckpt_dir, device, weight_dtype)
    # master weights: fp32 (ours; autocast computes in bf16) or bf16 (published L2P: DiffSynth loads and
    # trains the model in bf16 -- under DeepSpeed's bf16 mode its optimizer may hold its own fp32 copy)
    model = trainable_model(adapter.model.to(device, MASTER_DTYPES[spec.get("master_weights", "fp32")]), spec)
    if spec["scheme"] == "l2p":
        adapter.freeze(model)
    if spec["gradient_checkpointing"]:
        inner = model.transformer if spec["scheme"] == "l2p" else model
        inner.enable_gradient_checkpointing()
    if (spec.get("memory") or {}).get("empty_cache_between_blocks") and device.type == "cuda":
        release_cache_between_blocks(model, spec["scheme"])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=float(spec["lr"]), betas=tuple(spec["adam_betas"]), weight_decay=float(spec["weight_decay"])
    )
    warmup = int(spec["warmup_steps"])
    lr_sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:  # no dataloader goes through prepare(): DeepSpeed cannot infer the micro-batch
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = int(spec["batch_size"])
    model, optimizer, lr_sched = accelerator.prepare(model, optimizer, lr_sched)

    start = 0
    resume = newest_checkpoint(ckpt_dir)
    if resume is not None:
        accelerator.load_state(str(resume))
        start = json.loads((resume / "trainer_state.json").read_text())["step"]
        log(f"resumed from {resume.name} at step {start}")
    log_path = ckpt_dir / "train_log.csv"
    rows = _read_log(log_path, start) if accelerator.is_main_process else []
    sigma_path = ckpt_dir / "sigmas.csv"  # every training noise level (rank 0), for sigma_stats.json
    sigmas_seen = _read_sigmas(sigma_path, start) if accelerator.is_main_process else []
    interval = []

    data = TrainSamples(
        samples,
        mode=spec["data"]["crop_mode"],
        seed=int(spec["seed"]),
        cover_resample=spec["data"].get("cover_resample", "published"),
    )
    batch_size, seed, total = int(spec["batch_size"]), int(spec["seed"]), int(spec["max_steps"])
    epoch_batches = {}
    # a batch holds one size: images of a size with fewer than batch_size left over are not
    # trained on in an epoch (with `sizes: max_pixels` nearly every image has its own size)
    used = sum(len(b) for b in bucket_batches(samples, batch_size, 0, seed)) if accelerator.is_main_process else 0
    if accelerator.is_main_process and used < len(samples):
        log(
            f"an epoch trains on {used} of {len(samples)} images: {len(samples) - used} sit in sizes with fewer "
            f"than batch_size={batch_size} images left over (sizes {spec.get('sizes', 'buckets')}; batch_size 1 "
            "uses every image)"
        )

    def batch_for(step):
        if spec.get("overfit_batches"):
            step = step % int(spec["overfit_batches"])
        epoch = 0
        while True:
            if epoch not in epoch_batches:
                epoch_batches[epoch] = bucket_batches(samples, batch_size, epoch, seed, rank, world)
                if not epoch_batches[epoch]:
                    raise TrainError(
                        f"no full batch of {batch_size} for rank {rank}/{world}: {len(samples)} samples "
                        "(lower train batch_size, or use fewer processes)"
                    )
            n = len(epoch_batches[epoch])
            if step < n:
                return epoch, epoch_batches[epoch][step]
            step -= n
            epoch += 1

    dist = spec.get("distributed") or {}
    sharded = dist.get("strategy") == "fsdp" or (
        dist.get("strategy") == "deepspeed" and int(dist.get("zero_stage", 0)) == 3
    )
    eval_every = int(spec["eval_every"])
    eval_batch = _batch_pixels(data, batch_for(0)[1], batch_for(0)[0]) if eval_every else None
    eval_sigmas = torch.tensor([0.25, 0.5, 0.75])

    def eval_loss():  # noise-free loss curve: fixed batch, fixed noise, fixed noise levels
        model.eval()
        with torch.no_grad(), accelerator.autocast():
            gen = step_generator(seed, 0, 0, stream=7)
            vals = [
                adapter.loss(model, eval_batch[0], eval_batch[1], gen, s.repeat(eval_batch[0].shape[0])).item()
                for s in eval_sigmas
            ]
        model.train()
        return float(np.mean(vals))

    model.train()
    bar = tqdm(
        range(start, total),
        initial=start,
        total=total,
        desc=f"train {spec['name']}",
        unit="step",
        disable=not accelerator.is_main_process,
    )
    last = time.perf_counter()
    for step in bar:
        epoch, indices = batch_for(step)
        pixels, captions = _batch_pixels(data, indices, epoch)
        with accelerator.accumulate(model), accelerator.autocast():
            loss = adapter.loss(model, pixels, captions, step_generator(seed, step, rank))
            interval += [float(v) for v in adapter.last_sigmas]
            accelerator.backward(loss)
            grad_norm = (
                accelerator.clip_grad_norm_(params, float(spec["max_grad_norm"]))
                if accelerator.sync_gradients
                else None
            )
            grad_norm = float("nan") if grad_norm is None else float(grad_norm)  # DeepSpeed clips inside its engine
            optimizer.step()
            lr_sched.step()
            optimizer.zero_grad(set_to_none=True)
        done = step + 1
        if done % int(spec["log_every"]) == 0 or done == total:
            now = time.perf_counter()
            checks = torch.tensor(
                [float(grad_norm), float(sum(p.detach().double().sum() for p in params)), 1.0],
                device=device,
                dtype=torch.float64,
            )
            gathered = accelerator.gather(checks[None]).reshape(-1, 3).cpu()
            rank_losses = accelerator.gather(loss.detach().float()[None]).cpu()
            mean_loss = rank_losses.mean().item()
            row = {
                "step": done,
                "epoch": epoch,
                "loss": f"{mean_loss:.6g}",
                "eval_loss": f"{eval_loss():.6g}" if eval_every and done % eval_every == 0 else "",
                "lr": f"{lr_sched.get_last_lr()[0]:.3g}",
                "images_per_s": f"{batch_size * world * int(spec['log_every']) / (now - last):.4g}",
                "peak_mem_mb": f"{peak_memory_mb(device):.0f}",
                "grad_norm": f"{float(grad_norm):.6g}",
                "grad_norm_spread": f"{float(gathered[:, 0].max() - gathered[:, 0].min()):.3g}",
                # sharded strategies hold different parameter shards per rank: no replica to compare
                "param_spread": "" if sharded else f"{float(gathered[:, 1].max() - gathered[:, 1].min()):.3g}",
                "rank_loss_spread": f"{float(rank_losses.max() - rank_losses.min()):.3g}",  # > 0: ranks saw different data
                "ranks_stepped": int(gathered[:, 2].sum()),
                **{f"sigma_q{int(q * 100):02d}": f"{np.quantile(interval, q):.4g}" for q in (0.05, 0.5, 0.95)},
            }
            sigmas_seen += [(done, v) for v in interval]
            interval = []
            last = now
            bar.set_postfix(loss=row["loss"])
            if accelerator.is_main_process:
                rows.append(row)
                _write_log(log_path, rows)
                _write_sigmas(sigma_path, sigmas_seen)
        if done % int(spec["checkpoint_every"]) == 0 or done == total:
            target = ckpt_dir / f"step-{done:06d}"
            accelerator.save_state(str(target))
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                (target / "trainer_state.json").write_text(json.dumps({"step": done}))
                (target / "done").write_text("")
                _prune(ckpt_dir, int(spec["keep_checkpoints"]))
            accelerator.wait_for_everyone()

    accelerator.wait_for_everyone()
    summary = {"steps": total, "resumed_from": start, "world_size": world}
    if accelerator.is_main_process:
        smoke = spec["base"]["backend"] == "tiny"
        save_final(adapter, accelerator.unwrap_model(model), spec, out / "final", total, smoke)
        _write_log(log_path, rows)
        shutil.copyfile(log_path, out / "train_log.csv")
        stats = sigma_stats([v for _, v in sigmas_seen])
        (out / "sigma_stats.json").write_text(json.dumps(stats, indent=1))
        log(f"trained noise levels: {json.dumps(stats)}")
        summary["sigma_stats"] = stats
        summary.update(smoke=smoke, final_loss=rows[-1]["loss"] if rows else None)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary
