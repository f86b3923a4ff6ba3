"""Read a run's TensorBoard event files and plot the R1 signatures over training steps or wall-clock time;
tabulate evaluations.

    python -m r1lightning.analysis lightning_logs/r1/version_0 --out curves.png
    python -m r1lightning.analysis lightning_logs/r1/version_0 --x minutes --out curves_time.png
    # several runs on shared axes (e.g. synchronous vs asynchronous rollouts), against wall-clock minutes
    python -m r1lightning.analysis RUN_A RUN_B --labels sync async --x minutes --out compare.png
    # evaluation summaries of `python -m r1lightning test`, one markdown table across checkpoints
    python -m r1lightning.analysis table lightning_logs/eval/version_*/eval/summary.json [--detail]
    # start -> end (first vs last tenth) of accuracy, length, reflective words and mixing, runs side by side
    python -m r1lightning.analysis trends RUN_A RUN_B --labels with without --out behaviours.png

Wall-clock minutes count from the run's first logged scalar (every event carries its ``wall_time``).

The notebook ``notebooks/analyze_run.ipynb`` uses the same functions.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
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
    """All scalars of a run as a long pandas DataFrame with columns tag, step, value, wall_time (seconds since
    the epoch, when the value was logged)."""
    import pandas as pd
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = []
    for path in event_files(logdir):
        acc = EventAccumulator(path, size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            rows.extend((tag, e.step, e.value, e.wall_time) for e in acc.Scalars(tag))
    return pd.DataFrame(rows, columns=["tag", "step", "value", "wall_time"])


X_AXES = ("step", "minutes")


def series(df, tag: str, x: str = "step"):
    """``(x values, y values)`` of one tag, one point per step (the last logged wins, as TensorBoard shows);
    ``x`` is ``"step"`` or ``"minutes"`` (wall-clock since the run's first scalar)."""
    if x not in X_AXES:
        raise ValueError(f"x must be one of {X_AXES}, got {x!r}")
    s = df[df["tag"] == tag].sort_values(["step", "wall_time"]).drop_duplicates("step", keep="last")
    if x == "step":
        return s["step"], s["value"]
    return (s["wall_time"] - df["wall_time"].min()) / 60.0, s["value"]


def plot_run(logdir: str | os.PathLike, out: str | os.PathLike | None = None, smooth: int = 5, x: str = "step"):
    """A grid of the panels that the run has data for, against ``x`` ("step" or "minutes" of wall-clock);
    saved as PNG when ``out`` is given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = load_scalars(logdir)
    tags = set(df["tag"])
    panels = [(title, [(t, l) for t, l in curves if t in tags]) for title, curves in PANELS]
    panels = [(title, curves) for title, curves in panels if curves]
    if not panels:
        raise ValueError(f"{str(logdir)!r} has none of the tags this plot knows: {sorted(tags)[:10]} ...")
    cols = 3 if len(panels) > 4 else 2
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, (title, curves) in zip(axes.flat, panels):
        for tag, label in curves:
            xs, y = series(df, tag, x)
            if tag.startswith("train/") and smooth > 1 and len(y) > smooth:
                y = y.rolling(smooth, min_periods=1).mean()
                label = f"{label} (avg {smooth})"
            marker = "o" if tag.startswith("val/") else None
            ax.plot(xs, y, label=label, marker=marker)
        ax.set_title(title)
        ax.set_xlabel("wall-clock minutes" if x == "minutes" else "step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
    return fig


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{100 * value:.1f}"


def _num(value, digits: int = 0) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def _pass1(m: dict) -> str:
    lo, hi = m.get("pass@1_ci_low"), m.get("pass@1_ci_high")
    ci = f" [{_pct(lo)}, {_pct(hi)}]" if lo is not None and math.isfinite(lo) else ""
    return _pct(m.get("pass@1")) + ci


def _extra_pass(m: dict) -> str:
    keys = sorted((k for k in m if k.startswith(("pass@", "cons@")) and k != "pass@1" and "_ci_" not in k),
                  key=lambda k: (k[:4], int(k.split("@")[1]) if k.split("@")[1].isdigit() else 0))
    return ", ".join(f"{k} {_pct(m[k])}" for k in keys) or "-"


def load_summaries(paths) -> list[dict]:
    """Evaluation summaries (``summary.json`` of ``python -m r1lightning test``), in the order given."""
    out = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
        if "benchmarks" not in data:
            raise ValueError(f"{p}: not an r1lightning evaluation summary (no 'benchmarks')")
        out.append(data)
    return out


def eval_table(summaries: list[dict], detail: bool = False) -> str:
    """Markdown table of evaluation summaries.

    ``detail``: one row per (model, benchmark) with every metric (pass@1 in % with its confidence interval,
    other pass@k / cons@k, mean length, truncation, format and language-consistency rates). Otherwise one row
    per model and one column per benchmark: pass@1 % (cons@k %).
    """
    if detail:
        head = ["model", "benchmark", "questions", "k", "pass@1 % [CI]", "pass@k / cons@k %", "length",
                "truncated %", "format %", "language %", "seconds"]
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for s in summaries:
            for name, b in s["benchmarks"].items():
                m = b["metrics"]
                k = m["samples"] / m["questions"] if m.get("questions") else float("nan")
                lines.append("| " + " | ".join([
                    str(s.get("model")), name, _num(m.get("questions")), _num(k, 0 if k == int(k or 0) else 1),
                    _pass1(m), _extra_pass(m), _num(m.get("completion_length"), 1), _pct(m.get("truncated_ratio")),
                    _pct(m.get("format_rate")), _pct(m.get("language_consistency")), _num(m.get("seconds"), 1)]) + " |")
        return "\n".join(lines)
    names: list[str] = []
    for s in summaries:
        names.extend(n for n in s["benchmarks"] if n not in names)
    lines = ["| model | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 1)]
    for s in summaries:
        cells = []
        for n in names:
            m = s["benchmarks"].get(n, {}).get("metrics")
            if m is None:
                cells.append("")
                continue
            cons = next((m[k] for k in m if k.startswith("cons@")), None)
            cells.append(_pct(m.get("pass@1")) + (f" ({_pct(cons)})" if cons is not None else ""))
        lines.append(f"| {s.get('model')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


COMPARE_TAGS = ("val/pass@1", "train/reward", "train/accuracy")
#: The panels ``trends --out`` draws: held-out accuracy and the three R1 behaviours.
BEHAVIOUR_TAGS = ("val/pass@1", "train/completion_length/mean", "reflect/per_1k_tokens", "lang/mixing_rate")


def compare_runs(logdirs: list, labels: list[str] | None = None, out: str | os.PathLike | None = None,
                 x: str = "minutes", tags: tuple[str, ...] = COMPARE_TAGS, smooth: int = 5):
    """One panel per tag, one curve per run, against ``x`` (wall-clock minutes by default: which run gets
    there first). Tags no run has are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(labels) if labels else [str(d) for d in logdirs]
    if len(labels) != len(logdirs):
        raise ValueError(f"{len(labels)} labels for {len(logdirs)} runs")
    frames = [load_scalars(d) for d in logdirs]
    tags = [t for t in tags if any(t in set(df["tag"]) for df in frames)]
    if not tags:
        raise ValueError("none of the runs has any of the tags to compare")
    fig, axes = plt.subplots(1, len(tags), figsize=(5 * len(tags), 3.6), squeeze=False)
    for ax, tag in zip(axes.flat, tags):
        for df, label in zip(frames, labels):
            xs, y = series(df, tag, x)
            if not len(y):
                continue
            # per-step rollout statistics (train/*, reflect/*, lang/*) are smoothed; evaluations are not
            if not tag.startswith("val/") and smooth > 1 and len(y) > smooth:
                y = y.rolling(smooth, min_periods=1).mean()
            ax.plot(xs, y, label=label, marker="o" if tag.startswith("val/") else None)
        ax.set_title(tag + (f" (avg {smooth})" if not tag.startswith("val/") and smooth > 1 else ""))
        ax.set_xlabel("wall-clock minutes" if x == "minutes" else "step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
    return fig


#: The R1 behaviours tabulated by ``trends`` (tag, label, format): held-out accuracy, response length,
#: reflective words, language mixing.
TREND_TAGS = (
    ("val/pass@1", "held-out pass@1 %", "pct"),
    ("train/completion_length/mean", "response length (tokens)", "num"),
    ("reflect/per_1k_tokens", "reflective words / 1k tokens", "num"),
    ("reflect/share_with_any/correct", "share with reflection, correct %", "pct"),
    ("reflect/share_with_any/incorrect", "share with reflection, incorrect %", "pct"),
    ("lang/mixing_rate", "language mixing rate %", "pct"),
    ("lang/consistency_mean", "English share of CoT words %", "pct"),
    ("train/rewards/accuracy/mean", "train accuracy %", "pct"),
)


def trend(df, tag: str, fraction: float = 0.1) -> tuple[float, float] | None:
    """``(start, end)`` of a tag: the mean over the first and the last ``fraction`` of its logged steps
    (at least one point each; ``val/*`` tags, logged a few times per run, use their first and last
    value). None when the run never logged the tag."""
    s = df[df["tag"] == tag].sort_values(["step", "wall_time"]).drop_duplicates("step", keep="last")["value"]
    if not len(s):
        return None
    if tag.startswith("val/"):
        return float(s.iloc[0]), float(s.iloc[-1])
    k = max(1, int(round(len(s) * fraction)))
    return float(s.iloc[:k].mean()), float(s.iloc[-k:].mean())


def trend_table(logdirs: list, labels: list[str] | None = None, fraction: float = 0.1,
                tags=TREND_TAGS) -> str:
    """Markdown table, one row per behaviour, one ``start -> end`` column per run (first vs last tenth of
    training by default; held-out evaluations: first vs last)."""
    labels = list(labels) if labels else [str(d) for d in logdirs]
    if len(labels) != len(logdirs):
        raise ValueError(f"{len(labels)} labels for {len(logdirs)} runs")
    frames = [load_scalars(d) for d in logdirs]
    fmt = {"pct": lambda v: f"{100 * v:.1f}", "num": lambda v: f"{v:.1f}"}
    lines = ["| | " + " | ".join(labels) + " |", "|" + " --- |" * (len(labels) + 1)]
    for tag, label, kind in tags:
        cells = []
        for df in frames:
            t = trend(df, tag, fraction)
            cells.append("-" if t is None else f"{fmt[kind](t[0])} -> {fmt[kind](t[1])}")
        if any(c != "-" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "table":
        tp = argparse.ArgumentParser(prog="python -m r1lightning.analysis table",
                                     description="Markdown table of evaluation summaries (summary.json files).")
        tp.add_argument("summaries", nargs="+", help="summary.json files of `python -m r1lightning test` runs")
        tp.add_argument("--detail", action="store_true", help="one row per model and benchmark, every metric")
        targs = tp.parse_args(argv[1:])
        print(eval_table(load_summaries(targs.summaries), detail=targs.detail))
        return
    if argv and argv[0] == "trends":
        rp = argparse.ArgumentParser(prog="python -m r1lightning.analysis trends",
                                     description="Start -> end table of the R1 behaviours (first vs last tenth of "
                                                 "training) for one or more runs, optionally with their curves.")
        rp.add_argument("logdir", nargs="+", help="run folders (or folders above their event files)")
        rp.add_argument("--labels", nargs="+", help="column names of the runs")
        rp.add_argument("--fraction", type=float, default=0.1, help="share of the logged steps averaged at each end")
        rp.add_argument("--out", help="also draw the behaviour curves of the runs on shared axes to this PNG")
        rp.add_argument("--smooth", type=int, default=10, help="moving average window for the curves")
        rargs = rp.parse_args(argv[1:])
        print(trend_table(rargs.logdir, rargs.labels, rargs.fraction))
        if rargs.out:
            compare_runs(rargs.logdir, rargs.labels, rargs.out, x="step", tags=BEHAVIOUR_TAGS, smooth=rargs.smooth)
            print(rargs.out)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logdir", nargs="+", help="a run folder (or any folder above its event files); several "
                        "folders draw one comparison figure")
    parser.add_argument("--out", default="curves.png", help="PNG to write")
    parser.add_argument("--smooth", type=int, default=5, help="moving average window for train/* curves")
    parser.add_argument("--x", choices=X_AXES, default="step", help="x axis: optimizer step or wall-clock minutes")
    parser.add_argument("--labels", nargs="+", help="legend names of the runs (several folders)")
    parser.add_argument("--tags", nargs="+", default=list(COMPARE_TAGS), help="tags compared (several folders)")
    args = parser.parse_args(argv)
    if len(args.logdir) == 1:
        plot_run(args.logdir[0], args.out, args.smooth, args.x)
    else:
        compare_runs(args.logdir, args.labels, args.out, args.x, tuple(args.tags), args.smooth)
    print(args.out)


if __name__ == "__main__":
    main()
