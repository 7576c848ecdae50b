"""Pictures of a training run for the report: the loss curve and the sample image."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_train_log(log_csv, out_png, title: str, smoke: bool) -> None:
    """Loss (per-step and fixed-batch) and throughput against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    log = pd.read_csv(log_csv)
    fig, (ax_loss, ax_speed) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(log["step"], log["loss"], label="training loss (mean over ranks)", color="tab:blue")
    ev = log.dropna(subset=["eval_loss"])
    if len(ev):
        ax_loss.plot(ev["step"], ev["eval_loss"], "o-", label="fixed-batch loss", color="tab:orange")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("flow-matching loss")
    ax_loss.legend(fontsize=8)
    ax_speed.plot(log["step"], log["images_per_s"], color="tab:green")
    ax_speed.set_xlabel("step")
    ax_speed.set_ylabel("images / s (all ranks)")
    ax_mem = ax_speed.twinx()
    ax_mem.plot(log["step"], log["peak_mem_mb"] / 1024, color="tab:gray", linestyle="--")
    ax_mem.set_ylabel("peak memory (GiB, dashed)")
    if smoke:
        title = "SMOKE (tiny random model), not a result: " + title
    fig.suptitle(title, color="tab:red" if smoke else "black", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def save_sample(rgb: np.ndarray, out_png, smoke: bool) -> None:
    """The generated image; a smoke image gets a red banner saying so (it is noise by design)."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(rgb)
    if smoke:
        w, h = img.size
        banner = Image.new("RGB", (max(w, 200), h + 18), "white")
        banner.paste(img, (0, 18))
        ImageDraw.Draw(banner).text((3, 3), "SMOKE: tiny random model", fill=(200, 0, 0))
        img = banner
    tmp = Path(str(out_png) + ".tmp.png")
    img.save(tmp)
    tmp.replace(out_png)
