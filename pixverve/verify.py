"""Stage 4 measures on SR outputs (library only so far; the rules come with the VLM judges).

* Seam continuity: at every tile edge of the SR tile grid (from that image's SR record), the mean
  absolute grey step *across* the edge divided by the mean step on the lines just beside it
  (floored at ``min_step`` grey levels, so flat regions do not amplify invisible differences).  A
  blended, seamless output gives ~1; a visible seam gives a large ratio.
* Post-SR consistency: the SR output area-downsampled to the source size, compared with the
  source by PSNR and SSIM (scikit-image's definition: 7x7 uniform window, data range 255, the
  per-channel mean of the SSIM map with the window's half-width cropped at the borders), computed
  in row bands with halos so a 25 MP source never becomes one float64 image.
"""

from __future__ import annotations

import math

import numpy as np

from .tiling import TileGrid

SSIM_WIN = 7


def seam_positions(grid: TileGrid) -> tuple[list[int], list[int]]:
    """Output-pixel positions of tile edges inside the image: (x positions, y positions)."""

    def edges(starts: list[int], tile_in: int, length_in: int) -> list[int]:
        s = grid.scale
        out = set()
        for start in starts:
            for edge in (start, start + tile_in):
                if 0 < edge < length_in:
                    out.add(edge * s)
        return sorted(out)

    return (
        edges(grid.cols(), grid.tile_in(grid.in_w), grid.in_w),
        edges(grid.rows(), grid.tile_in(grid.in_h), grid.in_h),
    )


def seam_ratios(
    grey: np.ndarray, xs: list[int], ys: list[int], beside: int = 6, min_step: float = 1.0
) -> list[tuple[str, int, float]]:
    """(axis, position, ratio) for every seam; the steps are averaged along the whole seam line.

    The typical step beside a seam is floored at ``min_step`` grey levels: in a flat sky the steps
    are tiny, and a sub-level difference across a seam (invisible) must not become a big ratio.
    """
    g = grey.astype(np.int16, copy=False)
    out = []
    for axis, positions in (("x", xs), ("y", ys)):
        for p in positions:
            lo, hi = p - beside - 1, p + beside
            if lo < 0 or hi >= (g.shape[1] if axis == "x" else g.shape[0]):
                continue
            strip = g[:, lo : hi + 1] if axis == "x" else g[lo : hi + 1, :].T
            steps = np.abs(np.diff(strip, axis=1)).mean(axis=0)  # mean step between neighbouring lines
            centre = beside  # the step from line p-1 to line p
            across = steps[centre]
            side = np.concatenate([steps[: centre - 1], steps[centre + 2 :]]).mean()
            out.append((axis, p, float(across / max(side, min_step))))
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB for uint8 images (data range 255), accumulated in bands."""
    se = 0.0
    for top in range(0, a.shape[0], 512):
        d = (a[top : top + 512].astype(np.int32) - b[top : top + 512].astype(np.int32)).ravel()
        se += float(np.dot(d.astype(np.int64), d.astype(np.int64)))
    mse = se / a.size
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _ssim_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """scikit-image's SSIM map (uniform 7x7 window, sample covariance, data range 255)."""
    from scipy.ndimage import uniform_filter

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    np_ = SSIM_WIN * SSIM_WIN
    cov_norm = np_ / (np_ - 1)
    ux, uy = uniform_filter(x, SSIM_WIN), uniform_filter(y, SSIM_WIN)
    uxx, uyy, uxy = uniform_filter(x * x, SSIM_WIN), uniform_filter(y * y, SSIM_WIN), uniform_filter(x * y, SSIM_WIN)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))


def ssim(a: np.ndarray, b: np.ndarray, band_rows: int = 512) -> float:
    """Mean SSIM of two uint8 RGB (or grey) images, equal to skimage's structural_similarity
    (channel_axis=-1, data_range=255), computed in row bands with a halo of the window's size."""
    pad = (SSIM_WIN - 1) // 2
    h, w = a.shape[:2]
    a3 = a if a.ndim == 3 else a[..., None]
    b3 = b if b.ndim == 3 else b[..., None]
    total, count = 0.0, 0
    for top in range(pad, h - pad, band_rows):
        bottom = min(h - pad, top + band_rows)
        lo, hi = max(0, top - 2 * pad), min(h, bottom + 2 * pad)
        for c in range(a3.shape[2]):
            s = _ssim_map(a3[lo:hi, :, c].astype(np.float64), b3[lo:hi, :, c].astype(np.float64))
            inner = s[top - lo : bottom - lo, pad : w - pad]
            total += float(inner.sum())
        count += (bottom - top) * (w - 2 * pad)
    return total / (count * a3.shape[2])


def downsample_to(sr: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    return cv2.resize(sr, (width, height), interpolation=cv2.INTER_AREA)


def verify_shard(upscaled, config: dict, base_dir=".", log=print):
    """Seam continuity then post-SR consistency for one shard's SR outputs (the paper's order).

    ``upscaled``: the shard's upscale table.  The tile grid is rebuilt from the SR record and the
    source's decoded size (what SR saw).  Every image gets every measure that could be computed
    and the thresholds used.
    """
    import cv2
    import pandas as pd
    import tifffile
    from tqdm import tqdm

    from . import images
    from .index import image_path, roots_from_config
    from .tables import fail, ok

    v = config["verify"]
    roots = roots_from_config(config, base_dir)
    cap = config["io"]["max_megapixels"]
    background = tuple(config["io"]["alpha_background"])
    rows = []
    for rec in tqdm(upscaled.to_dict("records"), desc="verify", unit="img", mininterval=2):
        row = {
            "image_id": rec["image_id"],
            "root": rec["root"],
            "relpath": rec["relpath"],
            "shard": rec["shard"],
            "scale": int(rec["scale"]),
            "n_seams": 0,
            "max_seam_ratio": 0.0,
            "worst_seam": "",
            "psnr": math.nan,
            "ssim": math.nan,
            "seam_ok": False,
            "consistency_ok": False,
            "seam_max_ratio": float(v["seam"]["max_ratio"]),
            "min_psnr": float(v["consistency"]["min_psnr"]),
            "min_ssim": float(v["consistency"]["min_ssim"]),
        }
        if not rec["passed"]:
            rows.append(fail(row, "no_sr_output", f"SR failed: {rec['reason']}"))
            continue
        try:
            src, _ = images.read_rgb(image_path(roots, rec["root"], rec["relpath"]), cap, background=background)
            sr = tifffile.imread(rec["output_path"])
        except (images.ImageError, OSError, ValueError) as exc:
            rows.append(fail(row, "unreadable", str(exc)))
            continue
        h, w = src.shape[:2]
        if row["scale"] > 1 and rec["tile_px"]:
            grid = TileGrid(h, w, row["scale"], int(rec["tile_px"]), int(rec["stride_px"]))
            ratios = seam_ratios(
                cv2.cvtColor(sr, cv2.COLOR_RGB2GRAY),
                *seam_positions(grid),
                beside=int(v["seam"]["beside_px"]),
                min_step=float(v["seam"]["min_step"]),
            )
            if ratios:
                axis, pos, worst = max(ratios, key=lambda t: t[2])
                row.update(n_seams=len(ratios), max_seam_ratio=round(worst, 6), worst_seam=f"{axis}={pos}")
        row["seam_ok"] = row["max_seam_ratio"] <= row["seam_max_ratio"]
        back = downsample_to(sr, src.shape[1], src.shape[0]) if sr.shape[:2] != src.shape[:2] else sr
        del sr
        row["psnr"], row["ssim"] = round(psnr(back, src), 6), round(ssim(back, src), 6)
        row["consistency_ok"] = row["psnr"] >= row["min_psnr"] and row["ssim"] >= row["min_ssim"]
        if not row["seam_ok"]:
            rows.append(fail(row, "seam", f"seam at {row['worst_seam']} px: step ratio {row['max_seam_ratio']:.2f} > {row['seam_max_ratio']:g}"))
        elif not row["consistency_ok"]:
            rows.append(
                fail(row, "consistency", f"downsampled SR vs source: PSNR {row['psnr']:.2f} dB (min {row['min_psnr']:g}), "
                     f"SSIM {row['ssim']:.3f} (min {row['min_ssim']:g})")
            )
        else:
            rows.append(ok(row))
        log(f"{rec['relpath']}: seam {row['max_seam_ratio']:.2f}, PSNR {row['psnr']:.2f}, SSIM {row['ssim']:.3f} -> {rows[-1]['reason'] or 'ok'}")
    return pd.DataFrame(rows)
