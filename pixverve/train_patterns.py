"""Scheme II factor patterns and window settings, without torch: the config check
(pixverve.workflow -> train_config) runs in every rule's env, most of which have no torch/diffusers.
Checked against flux2_infer/local_attention.py and scripts/infer.sh of HaojunChen663/PixVerve-95K."""

from __future__ import annotations

# published presets (local_attention.py; scripts/infer.sh picks 4k for 4K, 8k for 8K and 10K)
PATTERN_PRESETS = {"4k": ((1, 1), (8, 16), (16, 8), (4, 32), (32, 4)),
                   "8k": ((1, 1), (16, 32), (32, 16), (8, 64), (64, 8)),
                   "10k": ((1, 1), (16, 32), (32, 16), (8, 64), (64, 8))}


def parse_pattern(value) -> tuple[tuple[int, int], ...] | None:
    """A factor pattern: a preset name (4k | 8k | 10k), "FHxFW,..." or a list of [fh, fw];
    each entry counts windows along the token grid's height / width.  None / "" = no pattern."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "none", "off"):
            return None
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


def default_pattern(resolution: int):
    """The preset infer.sh uses: 4K -> 4k, 8K and above -> 8k."""
    return PATTERN_PRESETS["4k" if int(resolution) < 8192 else "8k"]


def block_factors(n_blocks: int, pattern) -> list:
    """Factors per block: the pattern entry at block index modulo its length (None everywhere
    without a pattern: the window-size fallback)."""
    return [pattern[i % len(pattern)] if pattern else None for i in range(n_blocks)]


def window_settings(window: dict, resolution: int) -> dict:
    """A run's scheme II settings resolved for one resolution (config key train.runs.*.window)."""
    patterns = window.get("pattern") or {}
    raw = patterns.get(str(int(resolution)), "preset")
    pattern = default_pattern(resolution) if raw == "preset" else parse_pattern(raw)
    size = window.get("window_size", 24)
    size = (int(size), int(size)) if isinstance(size, (int, float, str)) else tuple(int(v) for v in size)
    return {"pattern": [list(p) for p in pattern] if pattern else None, "window_size": list(size),
            "max_windows_per_batch": int(window.get("max_windows_per_batch", 4)),
            "checkpoint_chunks": bool(window.get("checkpoint_chunks", True))}
