"""Training data for the three schemes (issue #8, first piece): samples from the curated 100 MP
images at the training resolution, read from the tiled SR outputs without decoding whole images,
captions from the annotation records, aspect-ratio buckets.

* ``aspect_buckets``: (width, height) pairs whose area is about ``resolution``^2, both sides
  multiples of ``multiple`` (the latent/patch grid: 16 for FLUX.2's VAE x patchify, 32 for
  safety), aspect ratios from ``max_ratio``:1 to 1:``max_ratio``.
* ``TrainSamples``: one sample per record; its bucket is the one nearest the image's aspect
  ratio (in log space).  ``crop`` mode reads a random bucket-sized window at full resolution
  (only the tiles it touches); ``resize`` mode reads the whole image as block means (one tile
  row at a time) and resizes that to the bucket.  Randomness comes from (seed, epoch, index), so
  a resumed run sees the same samples a run that never stopped would.
* ``sizes``: ``buckets`` (ours, above); ``square`` (every image to resolution x resolution) and
  ``max_pixels`` (the image's aspect within a resolution^2 pixel budget, sides floored to the
  multiple) as the published L2P training reads images (DiffSynth's ImageCropAndResize with
  --height/--width at 4K/10K, --max_pixels at 8K): both scale the image to cover the target and
  take the centre, which ``cover`` mode does on the tiled image.  ``cover_resample: published``
  (the default) gives the published pixels -- Pillow's bilinear resize of the whole image to
  ``round(side * scale)``, then torchvision's centre crop -- from the window those output pixels
  read (``published_cover``: Pillow's resize of a source box uses the same filter taps as the
  whole-image resize), so a 100 MP image is never resized whole; ``area`` (ours) reads the
  centred window and area-resizes it (the same geometry up to a source pixel, another filter).
* ``bucket_batches``: batches that each hold one bucket, shuffled per epoch, split across ranks
  (every rank gets the same number of batches, so DDP steps stay in lock-step).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def aspect_buckets(
    resolution: int, multiple: int = 32, max_ratio: float = 4.0, steps: int = 8
) -> list[tuple[int, int]]:
    """Buckets (w, h) of about ``resolution``^2 pixels, sides multiples of ``multiple``, sorted by w/h."""
    out = set()
    area = resolution * resolution
    for k in range(-steps, steps + 1):
        ratio = max_ratio ** (k / steps)  # w / h, evenly spaced in log space
        w = max(multiple, round(math.sqrt(area * ratio) / multiple) * multiple)
        h = max(multiple, round(math.sqrt(area / ratio) / multiple) * multiple)
        out.add((w, h))
    return sorted(out, key=lambda wh: (wh[0] / wh[1], wh[0]))


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    r = math.log(width / height)
    return min(buckets, key=lambda wh: (abs(math.log(wh[0] / wh[1]) - r), wh[0]))


SIZES = ("buckets", "square", "max_pixels")


def budget_size(width: int, height: int, max_pixels: int, multiple: int) -> tuple[int, int]:
    """(w, h) of an image within a pixel budget, as DiffSynth's dynamic resolution: scaled down
    by sqrt(area / budget) when over it (int truncation), sides floored to ``multiple``."""
    if width * height > max_pixels:
        scale = (width * height / max_pixels) ** 0.5
        width, height = int(width / scale), int(height / scale)
    w, h = width // multiple * multiple, height // multiple * multiple
    if w < multiple or h < multiple:
        raise ValueError(f"a {width}x{height} image has a side under {multiple} px at this budget")
    return w, h


@dataclass(frozen=True)
class Sample:
    image_id: str
    path: Path
    width: int
    height: int
    bucket: tuple[int, int]
    caption: str


class CaptionMissing(ValueError):
    pass


def samples_from_records(
    records: list[dict],
    resolution: int,
    caption: str = "long",
    multiple: int = 32,
    max_ratio: float = 4.0,
    sizes: str = "buckets",
) -> list[Sample]:
    """Samples of the records that have the chosen caption; raises listing any that do not (a
    training set must not silently shrink).  ``sizes``: how each sample's size is chosen."""
    if caption not in ("long", "short"):
        raise ValueError(f"caption must be long or short, got {caption!r}")
    if sizes not in SIZES:
        raise ValueError(f"sizes must be one of {SIZES}, got {sizes!r}")
    buckets = aspect_buckets(resolution, multiple, max_ratio)

    def size_of(r):
        w, h = int(r["width"]), int(r["height"])
        if sizes == "square":
            return resolution, resolution
        if sizes == "max_pixels":
            return budget_size(w, h, resolution * resolution, multiple)
        return nearest_bucket(w, h, buckets)

    missing = [r["image_id"] for r in records if not r.get(f"{caption}_caption")]
    if missing:
        raise CaptionMissing(
            f"{len(missing)} record(s) have no {caption} caption: {missing[:10]} -- drop them from the "
            "training set explicitly or caption them"
        )
    return [
        Sample(
            r["image_id"],
            Path(r["provenance"]["sr_output"]),
            int(r["width"]),
            int(r["height"]),
            size_of(r),
            r[f"{caption}_caption"],
        )
        for r in sorted(records, key=lambda r: r["image_id"])
    ]


def dataset_folder(metadata_path, root=None) -> Path:
    """The folder a dataset's relative image paths (``prov_sr_output``) start from: ``root``
    (``train.data.root``) when given, else the folder the curation ran in -- the one holding the
    ``results/`` the metadata lies in (``<curation>/results/dataset/metadata.parquet``)."""
    if root:
        return Path(root)
    metadata_path = Path(metadata_path)
    for parent in metadata_path.parents:
        if parent.name == "results":
            return parent.parent
    return metadata_path.parent


def resolve_image_paths(records: list[dict], folder: Path, key: str = "train.data.root") -> list[dict]:
    """``records`` with each relative ``sr_output`` made to start at ``folder``; every file must
    exist, or the run stops before the model loads, naming the first missing ones and ``key``."""
    out, missing = [], []
    for r in records:
        path = Path(r["provenance"]["sr_output"])
        path = path if path.is_absolute() else folder / path
        if not path.is_file():
            missing.append(str(path))
        out.append({**r, "provenance": {**r["provenance"], "sr_output": str(path)}})
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(records)} training images not found, e.g. {missing[:3]}: the dataset's image "
            f"paths are relative to the folder its curation ran in, looked for under {folder}; set {key} to that folder"
        )
    return out


def records_from_metadata(metadata, split: str = "train") -> list[dict]:
    """The rows of results/dataset/metadata.parquet in ``split`` as the record fields training
    reads (the held-out benchmark images are never trained on)."""
    if metadata.empty:  # no image reached the dataset (an empty export has no columns to select on)
        return []
    rows = metadata[metadata["split"] == split]
    return [
        {
            "image_id": r.image_id,
            "width": int(r.width),
            "height": int(r.height),
            "long_caption": r.long_caption,
            "short_caption": r.short_caption,
            "provenance": {"sr_output": r.prov_sr_output},
        }
        for r in rows.itertuples()
    ]


COVER_RESAMPLE = ("published", "area")  # train.data.cover_resample


@dataclass(frozen=True)
class CoverGeometry:
    """DiffSynth's ImageCropAndResize on a ``width`` x ``height`` image for a ``target`` (w, h):
    the resized size ``round(side * scale)``, scale = the larger target/side ratio, and
    torchvision ``center_crop``'s offsets (``int(round((resized - target) / 2))``)."""

    width: int
    height: int
    target: tuple[int, int]

    @property
    def resized(self) -> tuple[int, int]:
        tw, th = self.target
        scale = max(tw / self.width, th / self.height)
        return round(self.width * scale), round(self.height * scale)

    @property
    def offset(self) -> tuple[int, int]:
        (rw, rh), (tw, th) = self.resized, self.target
        return int(round((rw - tw) / 2.0)), int(round((rh - th) / 2.0))

    def source_box(self) -> tuple[float, float, float, float]:
        """The crop in source pixels (x0, y0, x1, y1), as Pillow maps output pixels back."""
        (rw, rh), (tw, th), (left, top) = self.resized, self.target, self.offset
        sx, sy = self.width / rw, self.height / rh
        return left * sx, top * sy, (left + tw) * sx, (top + th) * sy

    def window(self) -> tuple[int, int, int, int]:
        """(x, y, w, h): the source pixels Pillow's bilinear taps for the crop can reach -- the
        box grown by the filter's support (1 output pixel in source pixels, at least 1) and a
        pixel of rounding, clipped to the image."""
        x0, y0, x1, y1 = self.source_box()
        (rw, rh) = self.resized
        mx, my = max(self.width / rw, 1.0) + 1, max(self.height / rh, 1.0) + 1
        left, top = max(0, math.floor(x0 - mx)), max(0, math.floor(y0 - my))
        right, bottom = min(self.width, math.ceil(x1 + mx)), min(self.height, math.ceil(y1 + my))
        return left, top, right - left, bottom - top


def published_cover(window: np.ndarray, geometry: CoverGeometry, window_xy: tuple[int, int]) -> np.ndarray:
    """The published pixels (Pillow bilinear resize of the whole image, then the centre crop)
    computed from ``window`` (the pixels of ``geometry.window()``, at ``window_xy``): Pillow's
    resize of a box computes each output pixel's taps from the box's coordinates within the
    whole input, so the crop of a resize equals the resize of the crop's source box."""
    from PIL import Image

    x0, y0, x1, y1 = geometry.source_box()
    wx, wy = window_xy
    with Image.fromarray(window) as im:
        out = im.resize(geometry.target, Image.Resampling.BILINEAR, box=(x0 - wx, y0 - wy, x1 - wx, y1 - wy))
        return np.asarray(out)


class TrainSamples:
    """Indexable training samples: ``ts[i, epoch]`` -> (uint8 RGB array of the bucket's size, caption, crop box)."""

    def __init__(self, samples: list[Sample], mode: str = "crop", seed: int = 0, cover_resample: str = "published"):
        if mode not in ("crop", "resize", "cover"):
            raise ValueError(f"mode must be crop, resize or cover, got {mode!r}")
        if cover_resample not in COVER_RESAMPLE:
            raise ValueError(f"train.data.cover_resample must be one of {COVER_RESAMPLE}, got {cover_resample!r}")
        self.samples, self.mode, self.seed, self.cover_resample = samples, mode, seed, cover_resample

    def __len__(self) -> int:
        return len(self.samples)

    def crop_box(self, index: int, epoch: int) -> tuple[int, int, int, int]:
        """(x, y, w, h) in full-resolution pixels of the window this (index, epoch) reads."""
        s = self.samples[index]
        bw, bh = s.bucket
        if self.mode == "resize":
            return 0, 0, s.width, s.height
        if self.mode == "cover" and self.cover_resample == "published":  # the pixels the crop's taps read
            return CoverGeometry(s.width, s.height, s.bucket).window()
        if self.mode == "cover":  # scale to cover the target, keep the centre (published L2P data)
            scale = max(bw / s.width, bh / s.height)
            w, h = min(s.width, round(bw / scale)), min(s.height, round(bh / scale))
            return round((s.width - w) / 2), round((s.height - h) / 2), w, h
        # a window of the bucket's aspect, the bucket's size (never upscaled: clipped to the image)
        scale = min(1.0, s.width / bw, s.height / bh)
        w, h = max(1, math.floor(bw * scale)), max(1, math.floor(bh * scale))
        rng = random.Random(f"{self.seed}:{epoch}:{s.image_id}")
        return rng.randint(0, s.width - w), rng.randint(0, s.height - h), w, h

    def __getitem__(self, key) -> tuple[np.ndarray, str, tuple[int, int, int, int]]:
        import cv2

        from pixverve.core.views import TiledImage

        index, epoch = key
        s = self.samples[index]
        box = self.crop_box(index, epoch)
        with TiledImage(s.path) as tiled:
            if self.mode in ("crop", "cover"):
                pixels = tiled.read(*box)
            else:  # block means down to about twice the bucket, then an exact area resize
                pixels = tiled.downscaled(2 * max(s.bucket))
        if self.mode == "cover" and self.cover_resample == "published":
            pixels = published_cover(pixels, CoverGeometry(s.width, s.height, s.bucket), box[:2])
        elif pixels.shape[1] != s.bucket[0] or pixels.shape[0] != s.bucket[1]:
            pixels = cv2.resize(pixels, s.bucket, interpolation=cv2.INTER_AREA)
        return pixels, s.caption, box


def bucket_batches(
    samples: list[Sample],
    batch_size: int,
    epoch: int,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = True,
) -> list[list[int]]:
    """This rank's batches of sample indices for one epoch; every batch holds one bucket."""
    rng = random.Random(f"{seed}:{epoch}")
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(samples):
        by_bucket.setdefault(s.bucket, []).append(i)
    batches = []
    for bucket in sorted(by_bucket):
        members = by_bucket[bucket][:]
        rng.shuffle(members)
        for start in range(0, len(members), batch_size):
            batch = members[start : start + batch_size]
            if len(batch) == batch_size or not drop_last:
                batches.append(batch)
    rng.shuffle(batches)
    per_rank = len(batches) // world_size  # equal counts: DDP ranks step together
    return batches[rank * per_rank : (rank + 1) * per_rank]
