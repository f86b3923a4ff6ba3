"""Read a run's TensorBoard event files and plot the R1 signatures over training steps.

    python -m r1lightning.analysis lightning_logs/r1/version_0 --out curves.png

The notebook ``notebooks/analyze_run.ipynb`` uses the same functions.
"""

from __future__ import annotations

import argparse
import glob
import os
from pathlib import Path

# (panel title, [(tag, label), ...]) -- the first tag found in a panel decides whether it is drawn
PANELS = [
    ("reward", [("train/reward", "total reward"), ("train/rewards/accuracy/mean", "accuracy reward"),
                ("train/rewards/format/mean", "format reward")]),
    ("held-out accuracy", [("val/pass@1", "pass@1 (held out)"), ("train/accuracy", "train accuracy")]),
    ("response length (tokens)", [("train/completion_length/mean", "mean"), ("train/completion_length/max", "max"),
                                  ("gen/max_new_tokens", "limit")]),
    ("reflective words per 1k tokens", [("reflect/per_1k_tokens", "all"), ("reflect/per_1k_tokens/correct", "correct"),
                                        ("reflect/per_1k_tokens/incorrect", "incorrect")]),
    ("language consistency", [("lang/consistency_mean", "target-language share"), ("lang/mixing_rate", "mixing rate")]),
    ("KL / entropy", [("train/kl", "KL(pi||ref)"), ("train/entropy", "entropy")]),
]


def event_files(logdir: str | os.PathLike) -> list[str]:
    files = sorted(glob.glob(os.path.join(str(logdir), "**", "events.out.tfevents*"), recursive=True))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files under {str(logdir)!r}")
    return files


def load_scalars(logdir: str | os.PathLike):
    """All scalars of a run as a long pandas DataFrame with columns tag, step, value."""
    import pandas as pd
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = []
    for path in event_files(logdir):
        acc = EventAccumulator(path, size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            rows.extend((tag, e.step, e.value) for e in acc.Scalars(tag))
    return pd.DataFrame(rows, columns=["tag", "step", "value"])


def plot_run(logdir: str | os.PathLike, out: str | os.PathLike | None = None, smooth: int = 5):
    """A grid of the panels that the run has data for; saved as PNG when ``out`` is given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = load_scalars(logdir)
    tags = set(df["tag"])
    panels = [(title, [(t, l) for t, l in series if t in tags]) for title, series in PANELS]
    panels = [(title, series) for title, series in panels if series]
    if not panels:
        raise ValueError(f"{str(logdir)!r} has none of the tags this plot knows: {sorted(tags)[:10]} ...")
    cols = 3 if len(panels) > 4 else 2
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, (title, series) in zip(axes.flat, panels):
        for tag, label in series:
            s = df[df["tag"] == tag].sort_values("step").drop_duplicates("step", keep="last")
            y = s["value"]
            if tag.startswith("train/") and smooth > 1 and len(s) > smooth:
                y = y.rolling(smooth, min_periods=1).mean()
                label = f"{label} (avg {smooth})"
            marker = "o" if tag.startswith("val/") else None
            ax.plot(s["step"], y, label=label, marker=marker)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logdir", help="a run folder (or any folder above its event files)")
    parser.add_argument("--out", default="curves.png", help="PNG to write")
    parser.add_argument("--smooth", type=int, default=5, help="moving average window for train/* curves")
    args = parser.parse_args(argv)
    plot_run(args.logdir, args.out, args.smooth)
    print(args.out)


if __name__ == "__main__":
    main()
