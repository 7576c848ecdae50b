"""Stage 4, checks 1-2 on SR outputs: seam continuity and post-SR consistency (PSNR, SSIM, LPIPS).

* Seam continuity: at every tile edge of the SR tile grid (from that image's SR record), the mean
  absolute grey step *across* the edge divided by the mean step on the lines just beside it
  (floored at ``min_step`` grey levels, so flat regions do not amplify invisible differences).  A
  blended, seamless output gives ~1; a visible seam gives a large ratio.
* Post-SR consistency: the SR output area-downsampled to the source size, compared with the
  source by PSNR and SSIM (scikit-image's definition: 7x7 uniform window, data range 255, the
  per-channel mean of the SSIM map with the window's half-width cropped at the borders), computed
  in row bands with halos so a 25 MP source never becomes one float64 image.
* LPIPS (the ``lpips`` package, AlexNet backbone by default; inputs scaled to [-1, 1]) between the
  same two images, computed on a grid of near-equal tiles of about ``tile_px`` source pixels and
  averaged weighted by tile area -- a 25 MP source is never one tensor.  For images up to
  ``tile_px`` on a side this is exactly LPIPS of the whole image; above, it is the area-weighted
  mean of per-tile LPIPS (LPIPS is itself a spatial mean; only the backbone's receptive field at
  tile borders differs).  The backbone's ImageNet weights come from torchvision's cache; a
  missing file is an error naming it (``weights: random`` = ``pnet_rand``, smoke only).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from pixverve.core.tiling import TileGrid
from pixverve.models.loading import ModelUnavailable

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


class SeamSteps:
    """Seam ratios of a grey image fed top to bottom in row bands of any height (a 400 MP SR
    output is never one array): the steps across and beside every seam, averaged along its line.

    The typical step beside a seam is floored at ``min_step`` grey levels: in a flat sky the steps
    are tiny, and a sub-level difference across a seam (invisible) must not become a big ratio.
    Steps are summed as integers, so any banding gives the same ratios as the whole image.
    """

    def __init__(self, height: int, width: int, xs, ys, beside: int = 6, min_step: float = 1.0):
        self.height, self.width, self.beside, self.min_step = height, width, beside, min_step
        # a seam whose strip (``beside`` lines each side) leaves the image is not measured
        self.xs = [p for p in xs if p - beside - 1 >= 0 and p + beside < width]
        self.ys = [p for p in ys if p - beside - 1 >= 0 and p + beside < height]
        self._x_sums = {p: np.zeros(2 * beside + 1, np.int64) for p in self.xs}
        self._y_steps: dict[int, np.ndarray] = {}
        self._carry = np.empty((0, width), np.int16)  # the last rows, for a y strip across bands
        self._rows_seen = 0

    def add(self, band: np.ndarray) -> None:
        """The next ``band`` of grey rows (uint8, full width)."""
        b, g = self.beside, band.astype(np.int16)
        for p in self.xs:
            self._x_sums[p] += np.abs(np.diff(g[:, p - b - 1 : p + b + 1], axis=1)).sum(axis=0)
        rows = np.concatenate([self._carry, g]) if len(self._carry) else g
        top = self._rows_seen - len(self._carry)  # image row of rows[0]
        for p in self.ys:
            lo, hi = p - b - 1, p + b  # the strip's first and last line
            if p not in self._y_steps and lo >= top and hi < top + len(rows):
                self._y_steps[p] = np.abs(np.diff(rows[lo - top : hi - top + 1], axis=0)).mean(axis=1)
        self._rows_seen += len(g)
        self._carry = rows[-(2 * b + 1) :].copy()

    def _ratio(self, steps: np.ndarray) -> float:
        centre = self.beside  # the step from line p-1 to line p
        side = np.concatenate([steps[: centre - 1], steps[centre + 2 :]]).mean()
        return float(steps[centre] / max(side, self.min_step))

    def ratios(self) -> list[tuple[str, int, float]]:
        """(axis, position, ratio) for every measured seam, x seams first; needs every row fed."""
        if self._rows_seen != self.height:
            raise ValueError(f"seam steps saw {self._rows_seen} of {self.height} rows")
        out = [("x", p, self._ratio(self._x_sums[p] / self.height)) for p in self.xs]
        return out + [("y", p, self._ratio(self._y_steps[p])) for p in self.ys]


def seam_ratios(
    grey: np.ndarray, xs: list[int], ys: list[int], beside: int = 6, min_step: float = 1.0
) -> list[tuple[str, int, float]]:
    """(axis, position, ratio) for every seam of a whole grey image (see :class:`SeamSteps`)."""
    steps = SeamSteps(*grey.shape[:2], xs, ys, beside, min_step)
    steps.add(grey)
    return steps.ratios()


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


def ssim(a: np.ndarray, b: np.ndarray, band_rows: int | None = None) -> float:
    """Mean SSIM of two uint8 RGB (or grey) images, equal to skimage's structural_similarity
    (channel_axis=-1, data_range=255), computed in row bands with a halo of the window's size.
    The default band holds about 1 M pixels (a dozen float64 maps of it: ~100 MB at any width)."""
    pad = (SSIM_WIN - 1) // 2
    h, w = a.shape[:2]
    band_rows = band_rows or max(16, 2**20 // w)
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


class LPIPSUnavailable(ModelUnavailable):
    """The LPIPS backbone weights are missing; the message says which file and how to get it."""


LPIPS_BACKBONE_WEIGHTS = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}
LPIPS_MIN_TILE = 32  # AlexNet's last layer needs at least ~32 px of input


def lpips_backbone_file(net: str) -> Path:
    """Where torchvision looks for the backbone's ImageNet weights (``$TORCH_HOME/hub/checkpoints``)."""
    import torch
    import torchvision.models as tvm

    url = getattr(tvm, LPIPS_BACKBONE_WEIGHTS[net]).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]


def load_lpips(spec: dict, device: str = "cpu"):
    """The LPIPS model of ``verify.consistency.lpips``; never downloads behind the user's back."""
    import warnings

    import lpips

    net, weights = spec.get("net", "alex"), spec.get("weights", "pretrained")
    if weights == "pretrained":
        path = lpips_backbone_file(net)
        if not path.is_file():
            import torchvision.models as tvm

            url = getattr(tvm, LPIPS_BACKBONE_WEIGHTS[net]).IMAGENET1K_V1.url
            raise LPIPSUnavailable(
                f"LPIPS ({net}) needs torchvision's ImageNet backbone weights at {path} (not found). "
                f"Download {url} into that folder (or set TORCH_HOME), or set "
                "verify.consistency.lpips.weights: random for a smoke run (its numbers mean nothing)."
            )
    if weights == "random":
        import torch

        torch.manual_seed(0)  # the smoke backbone is the same random network in every job
    with warnings.catch_warnings():  # lpips 0.1.4 uses torchvision's deprecated `pretrained=` argument
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=weights == "random", verbose=False)
    return model.to(device).eval()


def _even_splits(length: int, tile: int) -> list[int]:
    n = max(1, math.ceil(length / tile))
    return [round(i * length / n) for i in range(n + 1)]


def lpips_tiled(model, a: np.ndarray, b: np.ndarray, tile_px: int = 1024, device: str = "cpu") -> float:
    """Area-weighted mean LPIPS over a grid of near-equal tiles of two uint8 RGB images."""
    import torch

    h, w = a.shape[:2]
    if min(h, w) < LPIPS_MIN_TILE:
        return math.nan  # too small for the backbone: recorded as nan, the threshold is not applied
    ys, xs = _even_splits(h, tile_px), _even_splits(w, tile_px)
    total = 0.0
    with torch.inference_mode():
        for y0, y1 in zip(ys, ys[1:]):
            for x0, x1 in zip(xs, xs[1:]):
                ta, tb = (
                    torch.from_numpy(np.array(im[y0:y1, x0:x1]))  # a small tile copy (the source may be read-only)
                    .to(device)
                    .permute(2, 0, 1)[None]
                    .float()
                    / 127.5
                    - 1
                    for im in (a, b)
                )
                total += float(model(ta, tb).item()) * (y1 - y0) * (x1 - x0)
    return total / (h * w)


def downsample_to(sr: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    return cv2.resize(sr, (width, height), interpolation=cv2.INTER_AREA)


class WrongSize(ValueError):
    """The SR output is not an integer multiple of its source's size."""


def output_factor(sr_size: tuple[int, int], src_size: tuple[int, int]) -> int:
    """The integer factor f with SR (h, w) = f * source (h, w); anything else is an error."""
    (sh, sw), (h, w) = sr_size, src_size
    f = sh // h
    if f < 1 or (sh, sw) != (f * h, f * w):
        raise WrongSize(f"SR output is {sw}x{sh}, not a whole multiple of the {w}x{h} source")
    return f


def banded_measures(tiled, src_size: tuple[int, int], scale: int, seams: SeamSteps | None, band_rows: int = 1024):
    """One pass over a tiled SR output in row bands: feeds ``seams`` the grey rows and returns the
    output area-downsampled to ``src_size`` (h, w), the only full copy made (source-sized).  The
    output must be ``scale`` (its SR record's) times the source.

    Bands hold a whole number of output blocks (and of TIFF tile rows), so the area resize of each
    band is the resize of the whole image (OpenCV's integer-factor area path averages each block
    on its own).
    """
    import cv2

    h, w = src_size
    f = output_factor((tiled.height, tiled.width), src_size)
    if f != scale:  # a stale file from another tier or run
        raise WrongSize(
            f"SR output is {tiled.width}x{tiled.height}: x{f} of the {w}x{h} source, its record says x{scale}"
        )
    unit = math.lcm(f, tiled.th)
    rows = unit * max(1, band_rows // unit)
    back = np.empty((h, w, 3), np.uint8)
    for top, band in tiled.row_bands(rows):
        if seams is not None:
            seams.add(cv2.cvtColor(band, cv2.COLOR_RGB2GRAY))
        back[top // f : (top + len(band)) // f] = band if f == 1 else downsample_to(band, w, len(band) // f)
        del band
    return back


def verify_shard(upscaled, config: dict, base_dir=".", log=print, lpips_model=None):
    """Seam continuity then post-SR consistency for one shard's SR outputs (the paper's order).

    ``upscaled``: the shard's upscale table.  The tile grid is rebuilt from the SR record and the
    source's decoded size (what SR saw).  Every image gets every measure that could be computed
    and the thresholds used.  ``lpips_model``: a loaded LPIPS (else loaded from config).
    """
    import pandas as pd
    from tqdm import tqdm

    from pixverve.core import images
    from pixverve.core.paths import image_path, roots_from_config
    from pixverve.core.tables import fail, ok
    from pixverve.core.views import TiledImage
    from pixverve.models.devices import resolve_device

    v = config["verify"]
    roots = roots_from_config(config, base_dir)
    cap = config["io"]["max_megapixels"]
    background = tuple(config["io"]["alpha_background"])
    lp = v["consistency"]["lpips"]
    max_lpips = lp.get("max")
    device = resolve_device(lp.get("device", "cpu"))
    if lpips_model is None and len(upscaled):
        lpips_model = load_lpips(lp, device)
    lpips_smoke = lp.get("weights", "pretrained") == "random"
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
            "seams": "[]",  # every seam: [axis, position px, ratio] (JSON), drawn by the atlas
            "psnr": math.nan,
            "ssim": math.nan,
            "lpips": math.nan,
            "lpips_smoke": lpips_smoke,
            "seam_ok": False,
            "consistency_ok": False,
            "seam_max_ratio": float(v["seam"]["max_ratio"]),
            "min_psnr": float(v["consistency"]["min_psnr"]),
            "min_ssim": float(v["consistency"]["min_ssim"]),
            "max_lpips": math.nan if max_lpips is None else float(max_lpips),
        }
        if not rec["passed"]:
            rows.append(fail(row, "no_sr_output", f"SR failed: {rec['reason']}"))
            continue
        try:
            src, _ = images.read_rgb(image_path(roots, rec["root"], rec["relpath"]), cap, background=background)
            h, w = src.shape[:2]
            seams = None
            if row["scale"] > 1 and rec["tile_px"]:
                grid = TileGrid(h, w, row["scale"], int(rec["tile_px"]), int(rec["stride_px"]))
                seams = SeamSteps(
                    grid.out_h,
                    grid.out_w,
                    *seam_positions(grid),
                    beside=int(v["seam"]["beside_px"]),
                    min_step=float(v["seam"]["min_step"]),
                )
            with TiledImage(rec["output_path"]) as tiled:
                back = banded_measures(tiled, (h, w), row["scale"], seams)
        except WrongSize as exc:
            rows.append(fail(row, "sr_wrong_size", str(exc)))
            continue
        except (images.ImageError, OSError, ValueError) as exc:
            rows.append(fail(row, "unreadable", str(exc)))
            continue
        if seams is not None:
            ratios = seams.ratios()
            if ratios:
                axis, pos, worst = max(ratios, key=lambda t: t[2])
                row.update(
                    n_seams=len(ratios),
                    max_seam_ratio=round(worst, 6),
                    worst_seam=f"{axis}={pos}",
                    seams=json.dumps([[a, int(q), round(float(r), 4)] for a, q, r in ratios]),
                )
        row["seam_ok"] = row["max_seam_ratio"] <= row["seam_max_ratio"]
        row["psnr"], row["ssim"] = round(psnr(back, src), 6), round(ssim(back, src), 6)
        row["lpips"] = round(lpips_tiled(lpips_model, back, src, int(lp.get("tile_px", 1024)), device), 6)
        lpips_ok = max_lpips is None or math.isnan(row["lpips"]) or row["lpips"] <= max_lpips  # null: recorded only
        row["consistency_ok"] = row["psnr"] >= row["min_psnr"] and row["ssim"] >= row["min_ssim"] and lpips_ok
        if not row["seam_ok"]:
            rows.append(
                fail(
                    row,
                    "seam",
                    f"seam at {row['worst_seam']} px: step ratio {row['max_seam_ratio']:.2f} > {row['seam_max_ratio']:g}",
                )
            )
        elif not row["consistency_ok"]:
            rows.append(
                fail(
                    row,
                    "consistency",
                    f"downsampled SR vs source: PSNR {row['psnr']:.2f} dB (min {row['min_psnr']:g}), "
                    f"SSIM {row['ssim']:.3f} (min {row['min_ssim']:g}), LPIPS {row['lpips']:.3f} (max {row['max_lpips']:g})",
                )
            )
        else:
            rows.append(ok(row))
        log(
            f"{rec['relpath']}: seam {row['max_seam_ratio']:.2f}, PSNR {row['psnr']:.2f}, SSIM {row['ssim']:.3f}, LPIPS {row['lpips']:.3f} -> {rows[-1]['reason'] or 'ok'}"
        )
    return pd.DataFrame(rows)


# Stage 4's checks in the paper's order, with the reason codes each table uses.
STAGE4_CHECKS = [
    ("sr_output", "verify", {"no_sr_output", "unreadable", "sr_wrong_size"}),
    ("seam", "verify", {"seam"}),
    ("consistency", "verify", {"consistency"}),
    ("regions", "regions", {"unreadable", "region_artifacts", "judge_unparseable", "judge_failed"}),
]


def decide_stage4(verify, regions, upscaled):
    """(decisions, counts): one row per SR'd image with the first failed check; images in/out per check.

    An image missing from the regions table after passing checks 1-2 is an error, not a pass.
    """
    import pandas as pd

    regions_by_id = {r["image_id"]: r for r in regions.to_dict("records")} if len(regions) else {}
    out_paths = dict(zip(upscaled["image_id"], upscaled["output_path"], strict=True)) if len(upscaled) else {}
    rows = []
    for v in verify.to_dict("records"):
        row = {k: v[k] for k in ("image_id", "root", "relpath", "shard", "scale")}
        row["output_path"] = out_paths.get(v["image_id"], "")
        if not v["passed"]:
            check = next(c for c, table, codes in STAGE4_CHECKS if table == "verify" and v["reason"] in codes)
            row.update(
                passed=False,
                failed_check=check,
                reason=v["reason"],
                reason_detail=v["reason_detail"],
                judge_smoke=False,
            )
        else:
            r = regions_by_id.get(v["image_id"])
            if r is None:
                raise ValueError(
                    f"image {v['image_id']} passed seam/consistency but has no region judgment: the regions tables are incomplete"
                )
            row.update(
                passed=bool(r["passed"]),
                failed_check="" if r["passed"] else "regions",
                reason=r["reason"],
                reason_detail=r["reason_detail"],
                judge_smoke=bool(r["smoke"]),
            )
        rows.append(row)
    decisions = pd.DataFrame(
        rows,
        columns=[
            "image_id",
            "root",
            "relpath",
            "shard",
            "scale",
            "output_path",
            "passed",
            "failed_check",
            "reason",
            "reason_detail",
            "judge_smoke",
        ],
    )
    counts, remaining = [], len(decisions)
    for check, _, _ in STAGE4_CHECKS:
        dropped = int((decisions["failed_check"] == check).sum())
        counts.append({"check": check, "entering": remaining, "dropped": dropped, "kept": remaining - dropped})
        remaining -= dropped
    return decisions, pd.DataFrame(counts)
