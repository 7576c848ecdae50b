"""Helpers that turn the validated config into the numbers the stages use.

Resolution rules are written in config.yaml at the paper's 100 MP reference and scaled by
``target_megapixels / 100`` (pixel counts) and its square root (side lengths).  The paper's
run uses ``target_megapixels: 100`` (scale 1); the demo uses ~1 MP, so the same rules and
tiers are exercised on images a laptop can handle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

REFERENCE_MEGAPIXELS = 100.0


def load_yaml(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def area_scale(config: dict) -> float:
    return float(config["target_megapixels"]) / REFERENCE_MEGAPIXELS


def side_scale(config: dict) -> float:
    return math.sqrt(area_scale(config))


@dataclass(frozen=True)
class ScreeningCriterion:
    """Keep an image whose pixel count is in the range and whose shorter side is long enough."""

    name: str
    min_pixels: int
    min_inclusive: bool
    max_pixels: int | None
    min_side_px: int

    def pixel_range_ok(self, pixels: int) -> bool:
        low_ok = pixels >= self.min_pixels if self.min_inclusive else pixels > self.min_pixels
        high_ok = self.max_pixels is None or pixels <= self.max_pixels
        return low_ok and high_ok

    def describe(self) -> str:
        low = ">=" if self.min_inclusive else ">"
        high = f" and <= {self.max_pixels / 1e6:g} MP" if self.max_pixels is not None else ""
        return f"({self.name}) {low} {self.min_pixels / 1e6:g} MP{high}, min side >= {self.min_side_px} px"


def screening_criteria(config: dict) -> list[ScreeningCriterion]:
    a, s = area_scale(config), side_scale(config)
    out = []
    for c in config["screening"]["criteria"]:
        max_mp = c.get("max_megapixels")
        out.append(
            ScreeningCriterion(
                name=str(c["name"]),
                min_pixels=round(c["min_megapixels"] * 1e6 * a),
                min_inclusive=bool(c.get("min_inclusive", True)),
                max_pixels=None if max_mp is None else round(max_mp * 1e6 * a),
                min_side_px=round(c["min_side_px"] * s),
            )
        )
    return out


@dataclass(frozen=True)
class SRTier:
    """Images with at least ``min_pixels`` (scaled) get upscaled by ``scale`` per side."""

    name: str
    min_pixels: int
    min_inclusive: bool
    scale: int

    def admits(self, pixels: int) -> bool:
        return pixels >= self.min_pixels if self.min_inclusive else pixels > self.min_pixels


def sr_tiers(config: dict) -> list[SRTier]:
    """Tiers ordered from the largest threshold down (first match wins)."""
    a = area_scale(config)
    tiers = [
        SRTier(
            str(t["name"]),
            round(t["min_megapixels"] * 1e6 * a),
            bool(t.get("min_inclusive", True)),
            int(t["scale"]),
        )
        for t in config["sr_tiers"]
    ]
    return sorted(tiers, key=lambda t: -t.min_pixels)


def tier_for(pixels: int, tiers: list[SRTier]) -> SRTier | None:
    for tier in tiers:
        if tier.admits(pixels):
            return tier
    return None


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge, lists replaced -- the way Snakemake layers --configfile files."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def check_resolution(width: int, height: int, criteria: list[ScreeningCriterion]) -> tuple[str | None, str, str]:
    """Return (criterion name or None, reason code, detail)."""
    pixels, short = width * height, min(width, height)
    in_range = [c for c in criteria if c.pixel_range_ok(pixels)]
    for c in in_range:
        if short >= c.min_side_px:
            return c.name, "", ""
    mp = pixels / 1e6
    rules = "; ".join(c.describe() for c in criteria)
    if in_range:
        c = in_range[0]
        return (
            None,
            "short_side",
            (
                f"{width}x{height} ({mp:.3g} MP): shorter side {short} px < {c.min_side_px} px required by ({c.name}); rules: {rules}"
            ),
        )
    return (
        None,
        "below_min_pixels" if pixels <= min(c.min_pixels for c in criteria) else "outside_pixel_ranges",
        (f"{width}x{height} ({mp:.3g} MP) matches no pixel range; rules: {rules}"),
    )
