"""Scheme II factor patterns and window settings, without torch: the config check
(pixverve.workflow -> train_config) runs in every rule's env, most of which have no torch/diffusers.
Checked against flux2_infer/local_attention.py and scripts/infer.sh of HaojunChen663/PixVerve-95K."""

from __future__ import annotations

import functools
import math

# published presets (local_attention.py; scripts/infer.sh picks 4k for 4K, 8k for 8K and 10K)
PATTERN_PRESETS = {
    "4k": ((1, 1), (8, 16), (16, 8), (4, 32), (32, 4)),
    "8k": ((1, 1), (16, 32), (32, 16), (8, 64), (64, 8)),
    "10k": ((1, 1), (16, 32), (32, 16), (8, 64), (64, 8)),
}


def parse_pattern(value) -> tuple[tuple[int, int], ...] | None:
    """A factor pattern: a preset name (4k | 8k | 10k), "FHxFW,..." or a list of [fh, fw];
    each entry counts windows along the token grid's height / width.  None / "" = no pattern."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "none", "off"):
            return None
        if text == "auto":
            return AUTO
        if text in PATTERN_PRESETS:
            return PATTERN_PRESETS[text]
        items = [s.strip().replace("*", "x") for s in text.replace(";", ",").split(",") if s.strip()]
        value = [tuple(s.split("x", 1)) if "x" in s else (s, s) for s in items]
    out = []
    for item in value:
        fh, fw = (item, item) if isinstance(item, int) else item
        if int(fh) <= 0 or int(fw) <= 0:
            raise ValueError(f"window pattern entries must be positive, got {item!r}")
        out.append((int(fh), int(fw)))
    return tuple(out) or None


AUTO = "auto"  # the pattern is derived per token grid at run time (auto_pattern)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@functools.lru_cache(maxsize=64)
def auto_pattern(grid: tuple[int, int], window: tuple[int, int], length: int = 5) -> tuple[tuple[int, int], ...]:
    """The published `auto` factor pattern for a (gh, gw) token grid and a target close window
    (flux2_infer/models/flux2_dit.py): candidates are divisor pairs (fh, fw) != (1, 1) whose
    window (gh/fh, gw/fw) has 1/8 to 8 times the target's area; one is picked per aspect target
    (the target's aspect, /2, x2, /4, x4) by 1.5 |log area ratio| + 0.6 |log aspect ratio| +
    0.15 (log2 gcd(fh, wh) + log2 gcd(fw, ww)), the first lowest score in (fh, fw) order winning;
    a short list is filled up by area score, then gcd score."""
    gh, gw = int(grid[0]), int(grid[1])
    th, tw = int(window[0]), int(window[1])
    target_area, target_aspect = max(th * tw, 1), max(th / max(tw, 1), 1e-6)
    candidates = []
    for fh in _divisors(gh):
        for fw in _divisors(gw):
            wh, ww = gh // fh, gw // fw
            ratio = wh * ww / target_area
            if (fh, fw) == (1, 1) or not 0.125 <= ratio <= 8.0:
                continue
            candidates.append(
                {
                    "factors": (fh, fw),
                    "area": abs(math.log(ratio)),
                    "aspect": max(wh / ww, 1e-6),
                    "gcd": math.log2(math.gcd(fh, wh)) + math.log2(math.gcd(fw, ww)),
                }
            )
    if not candidates:
        raise ValueError(f"no auto window pattern for a {gh}x{gw} token grid and a {th}x{tw} target window")
    chosen: list[tuple[int, int]] = []
    for aspect in (target_aspect, target_aspect / 2, target_aspect * 2, target_aspect / 4, target_aspect * 4):
        free = [c for c in candidates if c["factors"] not in chosen]
        if free:
            chosen.append(
                min(free, key=lambda c: 1.5 * c["area"] + 0.6 * abs(math.log(c["aspect"] / aspect)) + 0.15 * c["gcd"])[
                    "factors"
                ]
            )
        if len(chosen) >= length:
            break
    for c in sorted(candidates, key=lambda c: (c["area"], c["gcd"])):
        if len(chosen) >= length:
            break
        if c["factors"] not in chosen:
            chosen.append(c["factors"])
    return tuple(chosen)


def default_pattern(resolution: int):
    """The preset infer.sh uses: 4K -> 4k, 8K and above -> 8k."""
    return PATTERN_PRESETS["4k" if int(resolution) < 8192 else "8k"]


def block_factors(n_blocks: int, pattern) -> list:
    """Factors per block: the pattern entry at block index modulo its length (None everywhere
    without a pattern: the window-size fallback; ("auto", i) with the auto pattern, resolved
    when the token grid is known)."""
    if pattern == AUTO:
        return [(AUTO, i) for i in range(n_blocks)]
    return [pattern[i % len(pattern)] if pattern else None for i in range(n_blocks)]


def window_settings(window: dict, resolution: int) -> dict:
    """A run's scheme II settings resolved for one resolution (config key train.runs.*.window)."""
    patterns = window.get("pattern") or {}
    raw = patterns.get(str(int(resolution)), "preset")
    pattern = default_pattern(resolution) if raw == "preset" else parse_pattern(raw)
    size = window.get("window_size", 24)
    size = (int(size), int(size)) if isinstance(size, (int, float, str)) else tuple(int(v) for v in size)
    if pattern == AUTO:
        pattern_out = AUTO
    else:
        pattern_out = [list(p) for p in pattern] if pattern else None
    return {
        "pattern": pattern_out,
        "window_size": list(size),
        "max_windows_per_batch": int(window.get("max_windows_per_batch", 4)),
        "checkpoint_chunks": bool(window.get("checkpoint_chunks", True)),
    }
