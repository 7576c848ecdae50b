"""Stage summaries: how many images entered and left each stage, and why the rest were dropped."""

from __future__ import annotations

import pandas as pd

from pixverve.core.config import screening_criteria


def funnel(stages: list[tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    """One row per stage: entered, passed, rejected, and the rejection count per reason."""
    rows = []
    for name, df in stages:
        passed = df["passed"].astype(bool) if len(df) else pd.Series(dtype=bool)
        reasons = df.loc[~passed, "reason"].value_counts().sort_index() if len(df) else pd.Series(dtype=int)
        rows.append(
            {
                "stage": name,
                "entered": len(df),
                "passed": int(passed.sum()),
                "rejected": int((~passed).sum()),
                "reasons": "; ".join(f"{r}: {n}" for r, n in reasons.items()),
            }
        )
    return pd.DataFrame(rows)


def plot_ingest(index: pd.DataFrame, screen: pd.DataFrame, dedup: pd.DataFrame, config: dict, path) -> None:
    """Left: pixel count vs shorter side with the screening rules; right: rejections per reason."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    outcome = pd.Series("kept", index=index.index)
    outcome[~index["passed"].astype(bool)] = "rejected at index"
    key = index["image_id"] + "|" + index["root"] + "|" + index["relpath"]
    for df, label in ((screen, "rejected at screen"), (dedup, "duplicate")):
        if len(df):
            rejected = df.loc[~df["passed"].astype(bool)]
            bad = set(rejected["image_id"] + "|" + rejected["root"] + "|" + rejected["relpath"])
            outcome[key.isin(bad)] = label
    readable = index["passed"].astype(bool)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    sns.scatterplot(
        x=index.loc[readable, "megapixels"],
        y=index.loc[readable, ["width", "height"]].min(axis=1),
        hue=outcome[readable],
        style=outcome[readable],
        ax=ax1,
        s=50,
    )
    for c in screening_criteria(config):
        top = (c.max_pixels / 1e6) if c.max_pixels else max(index["megapixels"].max(), c.min_pixels / 1e6) * 1.2
        ax1.fill_between([c.min_pixels / 1e6, top], c.min_side_px, 1e9, alpha=0.08)
        ax1.text(c.min_pixels / 1e6, c.min_side_px, f" ({c.name})", fontsize=8, va="bottom")
    if ax1.get_legend() is not None:
        ax1.get_legend().set_title("outcome")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ymax = max(index.loc[readable, ["width", "height"]].min(axis=1).max() * 1.5, 10) if readable.any() else 10
    ax1.set_ylim(top=ymax)
    ax1.set_xlabel("megapixels")
    ax1.set_ylabel("shorter side (px)")
    ax1.set_title(f"Resolution screening (target {config['target_megapixels']:g} MP; shaded = kept)")
    reasons = []
    for stage, df in (("index", index), ("screen", screen), ("dedup", dedup)):
        if len(df):
            for r, n in df.loc[~df["passed"].astype(bool), "reason"].value_counts().items():
                reasons.append({"reason": f"{stage}: {r}", "images": n})
    if reasons:
        r = pd.DataFrame(reasons).sort_values("reason")
        sns.barplot(data=r, y="reason", x="images", ax=ax2, color="tab:red")
    ax2.xaxis.get_major_locator().set_params(integer=True)
    ax2.set_title("Rejections by stage and reason")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
