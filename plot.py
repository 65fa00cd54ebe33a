"""A picture of any run, offline: its curves from metrics.jsonl and eval.jsonl, drawn to a PNG.

    python plot.py out-tiny                                  # one run -> out-tiny/curves.png
    python plot.py out-tiny out-tiny-gold out-lr1e-5         # runs side by side -> compare.png
    python plot.py out-a out-b -o ablation.png --smooth 10

Panels: the step's pseudo-reward, the majority's share, the pseudo-label's accuracy and the KL to the start
model where a run logs them, entropy and response length (running means over --smooth steps: one step's 16
prompts are noisy), then held-out avg@k and maj@k for every held-out set. Each run has a colour of its own,
the legend sits beside the panels, and a run's label-free alarms (--kl_alarm, --collapse_alarm) are drawn as
labelled reference lines. miniature.py draws its figures with `draw` too. Needs matplotlib (pip install
matplotlib), which nothing else here does.
"""
import argparse
import json
import math
import os

# (key in metrics.jsonl, y-axis label), in panel order; a panel no run logs is left out
METRICS = [("reward", "pseudo-reward\n(gold runs: true reward)"), ("maj_share", "majority answer's share"),
           ("same_answer", "prompts sharing the step's\nmost common answer"),
           ("label_acc", "pseudo-label accuracy\n(against gold)"), ("kl", "KL to the start model\n(per token)"),
           ("entropy", "entropy (nats per token)"), ("resp_len", "response length (tokens)")]
ALARMS = {"kl_alarm": "kl", "collapse_alarm": "same_answer"}  # a run's alarm flag -> the panel it watches


def read_jsonl(path):
    """The rows of a .jsonl file by step, [] if there is none; a resumed run may log a step again: the last counts."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = {r["step"]: r for r in map(json.loads, filter(str.strip, f))}
    return [rows[s] for s in sorted(rows)]


def read_run(folder):
    """A run folder -> dict(metrics=[rows], evals=[rows], config={...}), from what selftrain.py wrote there."""
    if not any(os.path.exists(os.path.join(folder, f)) for f in ("metrics.jsonl", "eval.jsonl")):
        raise SystemExit(f"{folder}: no metrics.jsonl or eval.jsonl (a run's --out_dir holds them)")
    config = os.path.join(folder, "config.json")
    cfg = {}
    if os.path.exists(config):
        with open(config) as f:
            cfg = json.load(f)
    return {"metrics": read_jsonl(os.path.join(folder, "metrics.jsonl")),
            "evals": read_jsonl(os.path.join(folder, "eval.jsonl")), "config": cfg}


def running_mean(ys, w):
    return [sum(ys[max(0, i - w + 1):i + 1]) / len(ys[max(0, i - w + 1):i + 1]) for i in range(len(ys))]


def panels(runs):
    """[(y-axis label, source, key, set)] for what at least one run logged: metrics first, then avg@k and maj@k
    of each held-out set, in the order the runs name them."""
    out = [(label, "metrics", key, None) for key, label in METRICS
           if any(m.get(key) is not None for r in runs for m in r["metrics"])]
    sets = list(dict.fromkeys(name for r in runs for e in r["evals"] for name in e if name != "step"))
    ks = {r["config"].get("eval_samples") for r in runs} - {None}
    k = str(ks.pop()) if len(ks) == 1 else "k"
    for name in sets:
        out += [(f"{name}: avg@{k}\n(sample accuracy)", "evals", "avg", name),
                (f"{name}: maj@{k}\n(majority-vote accuracy)", "evals", "maj", name)]
    return out


def draw(runs, path, title="", smooth=5, refs=()):
    """Draw runs to path (a PNG) and return the figure. runs: [(label, run, style)], run as read_run returns it,
    style a dict of matplotlib line options (a distinct colour per run unless style gives one). refs: extra
    reference lines [(metrics key, value, label)], besides each run's own alarms."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = panels([run for _, run, _ in runs])
    if not rows:
        raise SystemExit("nothing to draw: the runs have logged no step and no eval yet")
    cols = min(4, len(rows))
    n_rows = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(4 * cols + 3, 2.9 * n_rows), layout="constrained", squeeze=False)
    colours = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20").colors
    lines = list(refs) + [(key, run["config"][flag], f"--{flag} {run['config'][flag]} ({label})")
                          for label, run, _ in runs for flag, key in ALARMS.items() if run["config"].get(flag)]
    for ax, (ylabel, source, key, name) in zip(axes.flat, rows):
        for i, (label, run, style) in enumerate(runs):
            pts = [(r["step"], (r[name] if name else r).get(key)) for r in run[source] if (r.get(name) if name else r)]
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                xs, ys = zip(*pts)
                ys = running_mean(ys, smooth) if source == "metrics" else ys
                look = {"color": colours[i % len(colours)], "linewidth": 1.5,
                        "marker": "." if source == "evals" else None}
                ax.plot(xs, ys, label=label, **{**look, **style})
        for j, (_, value, ref_label) in enumerate(x for x in lines if x[0] == key and source == "metrics"):
            ax.axhline(value, color="0.35", linestyle=("--", ":", "-.")[j % 3], linewidth=1, label=ref_label)
        if key == "kl" and ax.lines and min(min(l.get_ydata()) for l in ax.lines) > 0:
            ax.set_yscale("log")
        ax.set_ylabel(ylabel + (f"\n({smooth}-step mean)" if source == "metrics" and smooth > 1 else ""), fontsize=8)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(rows):]:
        ax.set_visible(False)
    handles = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:  # beside the panels, never over a curve
        fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=90)
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders (each a selftrain.py --out_dir)")
    p.add_argument("-o", "--out", default="",
                   help="the PNG (default: RUN/curves.png for one run, compare.png for several)")
    p.add_argument("--smooth", type=int, default=5,
                   help="running mean over this many steps for per-step metrics (1: raw)")
    p.add_argument("--title", default="", help="the figure's title (default: the run and its label and lr)")
    a = p.parse_args(argv)
    if a.smooth < 1:
        raise SystemExit(f"--smooth {a.smooth}: expected an integer >= 1")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("plot.py needs matplotlib: pip install matplotlib") from None
    folders = [os.path.expanduser(r).rstrip("/") for r in a.runs]
    names = [os.path.basename(f) for f in folders]
    labels = names if len(set(names)) == len(names) else folders
    runs = [(label, read_run(f), {}) for label, f in zip(labels, folders)]
    out = a.out or (os.path.join(folders[0], "curves.png") if len(folders) == 1 else "compare.png")
    cfg = runs[0][1]["config"]
    title = a.title or (f"{labels[0]}: label {cfg.get('label', '?')}, lr {cfg.get('lr', '?')}" if len(runs) == 1
                        else ", ".join(labels))
    import matplotlib.pyplot as plt
    plt.close(draw(runs, out, title, a.smooth))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
