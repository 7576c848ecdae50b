"""Paper figures built from the stage tables (matplotlib/seaborn, Agg backend)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

THUMB_PX = 220


def _thumbnail(path, max_megapixels: float) -> np.ndarray | None:
    import cv2

    from pixverve.core import images

    try:
        rgb, _ = images.read_rgb(path, max_megapixels, reduce_to_min_side=THUMB_PX)
    except images.ImageError:
        return None
    scale = THUMB_PX / max(rgb.shape[:2])
    if scale < 1:
        rgb = cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    return rgb


def fig4_purification(
    decisions: pd.DataFrame, cutoffs: pd.DataFrame, resolve_path, max_megapixels: float, out_png, out_pdf
):
    """Per filter: the pool's score distribution with its threshold, and the lowest/highest image.

    ``resolve_path(root, relpath)`` gives the file of an image (for thumbnails).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    df = decisions[decisions["reason"].isin(["", "exposure", "sharpness", "flatness", "entropy", "aesthetics"])]
    panels = [
        (
            "exposure",
            "exposure_share",
            "share of pixels > 250 or < 5",
            float(df["exposure_max_share"].iloc[0]),
            "above",
            False,
        ),
        (
            "sharpness",
            "laplacian_var",
            "Laplacian variance",
            float(df["sharpness_min_laplacian_var"].iloc[0]),
            "below",
            True,
        ),
        (
            "flatness",
            "flat_share",
            "share of smooth patches",
            float(df["flatness_max_smooth_share"].iloc[0]),
            "above",
            False,
        ),
        (
            "entropy",
            "entropy_bits",
            "Shannon entropy (bits)",
            float(cutoffs.set_index("score").loc["entropy_bits", "cutoff"]),
            "below",
            False,
        ),
    ]
    for row in cutoffs[cutoffs["filter"] == "aesthetics"].itertuples():
        label = f"{row.score} ({'SMOKE: tiny model' if row.smoke else 'model score'})"
        panels.append(("aesthetics", row.score, label, float(row.cutoff), "below", False))

    fig, axes = plt.subplots(len(panels), 3, figsize=(13, 3.1 * len(panels)), gridspec_kw={"width_ratios": [2.2, 1, 1]})
    axes = np.atleast_2d(axes)
    for r, (name, col, label, threshold, side, logx) in enumerate(panels):
        ax = axes[r, 0]
        values = df[col].astype(float)
        data = np.log10(values.clip(lower=1e-3)) if logx else values
        sns.histplot(data, bins=min(30, max(5, len(df))), ax=ax, color="tab:blue")
        thr = math.log10(max(threshold, 1e-3)) if logx else threshold
        ax.axvline(thr, color="tab:red", lw=2)
        ax.set_xlabel(("log10 " if logx else "") + label)
        rule = "drop " + side + f" {threshold:.3g}"
        title = f"{name}: {rule}" + (" (pool cut-off)" if name in ("entropy", "aesthetics") else "")
        if "SMOKE" in label:
            title = "SMOKE, not a result: " + title
        ax.set_title(title, fontsize=10, color="tab:red" if "SMOKE" in label else "black")
        order = df.sort_values(col, kind="mergesort")
        worst = order.iloc[-1] if side == "above" else order.iloc[0]
        kept = order[order["passed"].astype(bool)]
        best = (kept.iloc[0] if side == "above" else kept.iloc[-1]) if len(kept) else worst
        worst_label = f"fails {name}" if not rec_ok(worst, name) else f"worst, passes {name}"
        for c, (rec, kind) in enumerate(((worst, worst_label), (best, "kept (best of candidates)"))):
            axi = axes[r, c + 1]
            axi.axis("off")
            thumb = _thumbnail(resolve_path(rec["root"], rec["relpath"]), max_megapixels)
            if thumb is not None:
                axi.imshow(thumb)
            axi.set_title(f"{kind}: {rec['relpath'][:28]}\n{col} = {rec[col]:.3g}", fontsize=8, parse_math=False)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    fig.savefig(out_pdf, metadata={"CreationDate": None})
    plt.close(fig)


def rec_ok(rec, name: str) -> bool:
    return bool(rec.get(f"{name}_ok", True))


# ----------------------------------------------------------------------------- Fig. 5

FIG5_OVERVIEW_PX = 900  # long side of each sample's whole-image view
FIG5_ZOOM_MAX_PX = 512  # the zoom region's longest side: the centre of a larger patch (keeps the PNG ~4 MB)
# the table columns Fig. 5 reads (the patches' raw replies and the long captions stay on disk)
FIG5_METADATA_COLUMNS = [
    "image_id",
    "split",
    "smoke",
    "short_caption",
    "prov_sr_output",
    "prov_sr_scale",
    "prov_sr_backend",
    "prov_root",
    "prov_relpath",
]
FIG5_PATCH_COLUMNS = ["image_id", "patch_index", "x", "y", "w", "h", "sobel_var"]


def fig5_order(image_ids, seed: int) -> list[str]:
    """The order samples are drawn in: smallest sha256(fig5:seed:image_id) first (stable under added images)."""
    import hashlib

    return sorted(image_ids, key=lambda i: hashlib.sha256(f"fig5:{seed}:{i}".encode()).hexdigest())


def zoom_box(patches: pd.DataFrame, image_id: str, width: int, height: int, patch_px: int) -> tuple[int, int, int, int]:
    """(x, y, w, h) shown at 100 %: the stage 4 patch with the highest Sobel variance (the most
    detailed region the judge saw), else a centred patch; its centre ``FIG5_ZOOM_MAX_PX`` at most."""
    rows = patches[patches["image_id"] == image_id] if len(patches) else patches
    if len(rows):
        best = rows.sort_values(["sobel_var", "patch_index"], ascending=[False, True], kind="mergesort").iloc[0]
        x, y, w, h = int(best["x"]), int(best["y"]), int(best["w"]), int(best["h"])
    else:
        w, h = min(patch_px, width), min(patch_px, height)
        x, y = (width - w) // 2, (height - h) // 2
    zw, zh = min(w, FIG5_ZOOM_MAX_PX), min(h, FIG5_ZOOM_MAX_PX)
    return x + (w - zw) // 2, y + (h - zh) // 2, zw, zh


def fig5_panels(
    meta_row: dict,
    patches: pd.DataFrame,
    resolve_source,
    max_megapixels: float,
    patch_px: int,
    background=(255, 255, 255),
) -> dict:
    """The pixels of one sample: the whole image (downscaled), the zoom region at 100 % from the
    tiled output, and the same region of the source before SR (nearest-neighbour, so the SR's
    added detail is what differs).  Reads tiles and one source decode, never the whole output."""
    import cv2

    from pixverve.core import images
    from pixverve.core.views import TiledImage

    with TiledImage(meta_row["prov_sr_output"]) as tiled:
        overview = tiled.downscaled(FIG5_OVERVIEW_PX)
        box = zoom_box(patches, meta_row["image_id"], tiled.width, tiled.height, patch_px)
        crop = tiled.read(*box)
        size = (tiled.width, tiled.height)
    scale = int(meta_row["prov_sr_scale"])
    source_crop = None
    if scale > 1:
        path = resolve_source(meta_row["prov_root"], meta_row["prov_relpath"])
        src, _ = images.read_rgb(path, max_megapixels, background=background)  # as SR read it
        x, y, w, h = box
        region = src[y // scale : -(-(y + h) // scale), x // scale : -(-(x + w) // scale)]
        del src
        source_crop = cv2.resize(
            region, (region.shape[1] * scale, region.shape[0] * scale), interpolation=cv2.INTER_NEAREST
        )
        source_crop = source_crop[y % scale : y % scale + h, x % scale : x % scale + w]
    return {"overview": overview, "box": box, "crop": crop, "source_crop": source_crop, "size": size, "scale": scale}


def fig5_samples(
    metadata: pd.DataFrame,
    patches: pd.DataFrame,
    resolve_source,
    n: int,
    seed: int,
    max_megapixels: float,
    patch_px: int,
    out_png,
    out_pdf,
    background=(255, 255, 255),
) -> list[str]:
    """The paper's Fig. 5 ("best viewed zoomed-in"): ``n`` dataset images, each whole with its zoom
    region marked, that region at 100 %, and the source there before SR.  Returns the image ids
    drawn.  Captions and ids are drawn as plain text (no mathtext: a ``$`` stays a ``$``)."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as mpatches
    import matplotlib.pyplot as plt

    kept = metadata[metadata["split"] != "uncaptioned"] if len(metadata) else metadata
    chosen = fig5_order(kept["image_id"].tolist(), seed)[:n] if n else []
    rows = {r["image_id"]: r for r in kept.to_dict("records")}
    smoke = any(bool(rows[i]["smoke"]) for i in chosen)
    fig, axes = plt.subplots(max(1, len(chosen)), 3, figsize=(15, 4.6 * max(1, len(chosen))), squeeze=False)
    plain = {"parse_math": False}
    zooms = []  # (axes, width px, height px) of every 100 % panel
    if not chosen:
        for ax in axes[0]:
            ax.axis("off")
        axes[0, 1].text(0.5, 0.5, "no captioned image in the dataset", ha="center", va="center", **plain)
    for r, image_id in enumerate(chosen):
        rec = rows[image_id]
        p = fig5_panels(rec, patches, resolve_source, max_megapixels, patch_px, background)
        width, height = p["size"]
        f = width / p["overview"].shape[1]
        x, y, w, h = p["box"]
        ax = axes[r, 0]
        ax.imshow(p["overview"])
        ax.add_patch(mpatches.Rectangle((x / f, y / f), w / f, h / f, fill=False, ec="red", lw=1.5))
        tier = f"x{p['scale']} SR ({rec['prov_sr_backend']})" if p["scale"] > 1 else "native (no SR)"
        ax.set_title(f"{image_id}: {width}x{height} ({width * height / 1e6:.1f} MP), {tier}", fontsize=9, **plain)
        caption = rec["short_caption"] or ""
        ax.set_xlabel(textwrap.fill(caption[:300], 80), fontsize=7, **plain)
        ax.set_xticks([])
        ax.set_yticks([])
        ax = axes[r, 1]
        ax.axis("off")
        if p["source_crop"] is not None:
            ax.imshow(p["source_crop"], interpolation="nearest")
            ax.set_title(f"source, same region (x{p['scale']} nearest)", fontsize=9, **plain)
        else:
            ax.text(0.5, 0.5, "native image: no source before SR", ha="center", va="center", fontsize=9, **plain)
        ax = axes[r, 2]
        ax.axis("off")
        ax.imshow(p["crop"], interpolation="nearest")
        ax.set_title(f"{w}x{h} px at ({x}, {y}), 100 % or larger (no smoothing)", fontsize=9, **plain)
        zooms.append((ax, w, h))
    if smoke:
        fig.suptitle(
            "SMOKE OUTPUT: tiny random models wrote these captions (and maybe the SR); not a result",
            color="tab:red",
            fontsize=12,
            **plain,
        )
    fig.tight_layout(rect=(0, 0, 1, 0.97) if smoke else (0, 0, 1, 1))
    fig.canvas.draw()  # each image's axes box takes its final (aspect-kept) size
    # the resolution at which every zoom panel shows each image pixel on at least one figure pixel
    per_inch = [
        max(w / (ax.get_position().width * fig.get_figwidth()), h / (ax.get_position().height * fig.get_figheight()))
        for ax, w, h in zooms
    ]
    fig.savefig(out_png, dpi=max([110] + [math.ceil(p) for p in per_inch]))
    fig.savefig(out_pdf, metadata={"CreationDate": None})
    plt.close(fig)
    return chosen
