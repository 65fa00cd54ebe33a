"""The paper in miniature: each claim of arXiv 2505.21444, reproduced on the CPU testbed, one command.

    python miniature.py                  # every run (finished ones are skipped), then figures and the table
    python miniature.py srt-s0 gold-s0   # only these runs, then figures and the table
    python miniature.py --report         # figures and table from the finished runs only

Each run is a plain `python selftrain.py ...` command (printed, and listed in docs/miniature.md), writing to
out-mini/<name>/. The results table in docs/miniature.md (between the `miniature` markers) and the PNGs in
figures/ are generated here from those runs' eval.jsonl and metrics.jsonl, never typed in.
matplotlib is needed for the figures only.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(ROOT, "out-mini")
FIGS = os.path.join(ROOT, "figures")

# The testbed's own start policy (tiny_warmup): greedy 0.8 on validation, but ~0.38 of samples right at
# temperature 1, like the paper's base models, which solve 15-30% of their test problems.
BASE = ["--tiny", "--save_every", "50"]
STEPS = ["--steps", "150", "--eval_every", "20"]
SEEDS = (0, 1, 2)
SRT_LR, GOLD_LR = "2e-5", "2e-5"        # the sweep below shows how each method fares at another rate
SWEEP = ("2e-5", "4e-5")
TEACHER = ["--teacher_samples", "8"]     # the fixed teacher votes with 8 samples per prompt, like maj@8
# Too fast a rate for SRT (paper §4.1.1: prolonged training hacks the self-consistency reward; a high
# rate gets there in minutes). At COLLAPSE_LR accuracy drains away while the answers drift together; at
# FAST_LR the policy breaks within a few steps and then hacks the reward outright.
COLLAPSE_LR, COLLAPSE_STEPS, FAST_LR = "1e-4", 40, "3e-4"
KL = ["--kl_coef", "0.001"]

RUNS = {}
for s in SEEDS:                                    # claims 1-3: SRT against RL with gold labels, 3 seeds
    RUNS[f"srt-s{s}"] = BASE + STEPS + ["--lr", SRT_LR, "--seed", str(s)]
    RUNS[f"gold-s{s}"] = BASE + STEPS + ["--lr", GOLD_LR, "--seed", str(s), "--label", "gold"]
for lr in SWEEP:                                   # claim 2: a small learning-rate sweep for each, seed 0
    if lr != SRT_LR:
        RUNS[f"srt-lr{lr}"] = BASE + STEPS + ["--lr", lr]
    if lr != GOLD_LR:
        RUNS[f"gold-lr{lr}"] = BASE + STEPS + ["--lr", lr, "--label", "gold"]
# claim 4: collapse; claim 5: each mitigation at the same rate, for 3x as many steps
RUNS["collapse"] = BASE + KL + ["--eval_every", "10", "--lr", COLLAPSE_LR, "--steps", str(COLLAPSE_STEPS)]
RUNS["collapse-fast"] = BASE + KL + ["--eval_every", "20", "--lr", FAST_LR, "--steps", "100"]
LONG = BASE + KL + ["--eval_every", "20", "--lr", COLLAPSE_LR, "--steps", str(3 * COLLAPSE_STEPS)]
MITIGATIONS = {"early-stop": ["--early_stop", "2", "--val_data", "tiny-val"], "alarm": ["--collapse_alarm", "0.5"],
               "offline-labels": ["--label", "offline"] + TEACHER, "curriculum": ["--curriculum", "0.33"] + TEACHER,
               "online-filter": ["--filter_share", "0.6"]}
for name, flags in MITIGATIONS.items():
    RUNS[name] = LONG + flags
# claim 6: the evolving teacher against a fixed one, at the SRT rate
RUNS["offline-s0"] = BASE + STEPS + ["--lr", SRT_LR, "--label", "offline"] + TEACHER
# TTRL's variants: votes from more samples than are trained on; test-time training on the eval set
RUNS["ttrl-votes"] = BASE + STEPS + ["--lr", SRT_LR, "--samples_per_prompt", "8", "--votes_per_prompt", "16"]
RUNS["ttt"] = BASE + STEPS + ["--lr", SRT_LR, "--ttt"]
# The order `python miniature.py` runs them in: the collapse family first (its runs set the bar for claim 5)
ORDER = ["collapse", "offline-labels", "curriculum", "online-filter", "early-stop", "alarm", "collapse-fast"]
ORDER += [n for n in RUNS if n not in ORDER]


def command(name):
    return [sys.executable, "selftrain.py", *RUNS[name], "--out_dir", os.path.join("out-mini", name)]


def finished(name):
    """True if the run finished with the flags it has now (a run made with other flags is stale)."""
    done = os.path.join(OUT, name, "done.json")
    return os.path.exists(done) and json.load(open(done))["flags"] == RUNS[name]


def extends(old, new):
    """True if flags `new` are `old` (or the same run) with more --steps: the run resumes from its last
    checkpoint rather than starting over, and ends exactly where a fresh run would (the rate is constant)."""
    strip = lambda f: [x for i, x in enumerate(f) if x != "--steps" and (i == 0 or f[i - 1] != "--steps")]
    steps = lambda f: int(f[f.index("--steps") + 1]) if "--steps" in f else 0
    return strip(old) == strip(new) and steps(old) <= steps(new)


def run(name, threads):
    """One run, resumed if it was interrupted or asked for more steps, skipped if it finished with the same
    flags. A folder left by other flags (a stale run) is deleted first: nothing is resumed from or reported
    for it. The seconds in done.json add up all the sessions of a run."""
    out = os.path.join(OUT, name)
    if finished(name):
        return
    flags, done = os.path.join(out, "flags.json"), os.path.join(out, "done.json")
    before = json.load(open(done))["seconds"] if os.path.exists(done) else 0.0
    if os.path.exists(out) and not (os.path.exists(flags) and extends(json.load(open(flags)), RUNS[name])):
        shutil.rmtree(out)
        before = 0.0
    os.makedirs(out, exist_ok=True)
    json.dump(RUNS[name], open(flags, "w"))
    resume = os.path.exists(os.path.join(out, "ckpt", "trainer_state.pt"))
    if not resume:
        for f in ("metrics.jsonl", "eval.jsonl"):
            if os.path.exists(os.path.join(out, f)):
                os.remove(os.path.join(out, f))
    cmd = command(name) + (["--resume"] if resume else [])
    print(" ".join(cmd[1:]), flush=True)
    t0 = time.time()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    with open(os.path.join(out, "log.txt"), "a") as log:
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        print(f"{name}: failed (exit {rc}); see {out}/log.txt", flush=True)
        return
    json.dump({"flags": RUNS[name], "seconds": before + time.time() - t0, "threads": threads}, open(done, "w"))
    print(f"{name}: done in {(time.time() - t0) / 60:.1f} min", flush=True)


def read(name):
    """(evals, metrics) of a finished run: lists of dicts by step; None if it has not finished. Each eval is
    the held-out 'tiny' set's result, plus 'val' (the tiny-val avg@8) where the run scored the hold-out."""
    out = os.path.join(OUT, name)
    if not finished(name):
        return None
    lines = lambda f: [json.loads(l) for l in open(os.path.join(out, f))] if os.path.exists(os.path.join(out, f)) else []
    evals = {e["step"]: {**e["tiny"], **({"val": e["tiny-val"]["avg"]} if "tiny-val" in e else {})}
             for e in lines("eval.jsonl")}  # a resumed run may repeat a step: keep the last
    return [{"step": s, **evals[s]} for s in sorted(evals)], lines("metrics.jsonl")


# ------------------------------------------------------------------------------------------------------
# The claims, measured from the runs


def gain(evals, key="avg"):
    """Peak improvement of a held-out metric over its start value."""
    return max(e[key] for e in evals) - evals[0][key]


def mean_sd(xs):
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0) if xs else (None, None)


def fmt(m, sd=None, pct=True):
    """+12.3 ± 1.0 (points) for gains, 0.85 ± 0.05 for ratios."""
    if m is None:
        return "—"
    k, f = (100, "{:+.1f}") if pct else (1, "{:.2f}")
    return f.format(k * m) + (" ± " + f.format(k * sd).lstrip("+") if sd else "")


def claims():
    r = {n: read(n) for n in RUNS}
    rows = []
    seeds = [s for s in SEEDS if r[f"srt-s{s}"] and r[f"gold-s{s}"]]
    srt = [gain(r[f"srt-s{s}"][0]) for s in seeds]
    gold = [gain(r[f"gold-s{s}"][0]) for s in seeds]
    m, sd = mean_sd(srt)
    # the gain by earlier steps too: these runs were first 60, then 100 steps long, and fell short there
    early = "; ".join(f"by step {k}: {fmt(*mean_sd([gain([e for e in r[f'srt-s{s}'][0] if e['step'] <= k]) for s in seeds]))}"
                      for k in (60, 100))
    rows.append(("1. SRT improves held-out avg@8 without labels", "peak gain ≥ +15 pts",
                 f"{fmt(m, sd)} pts (mean ± sd, {len(srt)} seeds; {early})" if srt else "not run", m is not None and m >= 0.15))
    m2, sd2 = mean_sd([a / b for a, b in zip(srt, gold) if b > 0])
    sweep = {method: {lr: gain(r[n][0]) for lr in SWEEP for n in [f"{method}-s0" if lr == base else f"{method}-lr{lr}"]
                      if r[n]} for method, base in (("srt", SRT_LR), ("gold", GOLD_LR))}
    tuned = max(sweep["srt"].values()) / max(sweep["gold"].values()) if sweep["srt"] and sweep["gold"] else None
    rows.append(("2. SRT rivals gold RL early", "SRT gain / gold gain ≥ 0.75",
                 (f"{fmt(m2, sd2, pct=False)} at lr {SRT_LR} (gold {fmt(*mean_sd(gold))} pts); best of each sweep, seed 0: "
                  f"{fmt(tuned, pct=False)}") if srt else "not run", m2 is not None and m2 >= 0.75 and (tuned is None or tuned >= 0.75)))
    maj = [gain(r[f"srt-s{s}"][0], "maj") for s in seeds]
    m3, sd3 = mean_sd(maj)
    rows.append(("3. The teacher improves: maj@8 rises", "peak gain ≥ +10 pts", f"{fmt(m3, sd3)} pts" if maj else "not run",
                 m3 is not None and m3 >= 0.10))
    texts, hacked = [], False
    for name in ("collapse", "collapse-fast"):
        if r[name]:
            ev, me = r[name]
            top = max(x["reward"] for x in me)
            hacked |= top > 0.85 and ev[-1]["avg"] <= 0.1
            texts.append(f"{name} (lr {RUNS[name][RUNS[name].index('--lr') + 1]}): pseudo-reward max {top:.2f}, avg@8 "
                         f"{ev[0]['avg']:.2f} → {ev[-1]['avg']:.2f}, one answer for up to "
                         f"{100 * max(x.get('same_answer', 0) for x in me):.0f}% of a step's prompts; first to move: "
                         f"{first_mover(me)}")
    rows.append(("4. Aggressive SRT reward-hacks and collapses", "pseudo-reward > 0.85, avg@8 ≤ 0.1",
                 "; ".join(texts) or "not run", hacked))
    survived = []
    for name in MITIGATIONS:
        if r[name]:
            ev, me = r[name]
            steps = me[-1]["step"] if me else 0
            ok = steps >= 3 * COLLAPSE_STEPS and ev[-1]["avg"] > 0.1
            text = f"{name}: {steps} steps, avg@8 {ev[-1]['avg']:.2f}" + (" (no collapse)" if ok else "")
            if any("val" in e for e in ev):  # early stopping keeps the model that scored best on the hold-out
                kept = max((e for e in ev if "val" in e), key=lambda e: (e["val"], -e["step"]))
                text += f", kept step {kept['step']} (avg@8 {kept['avg']:.2f})"
            survived.append(text)
    rows.append(("5. Mitigations", f"one runs {3 * COLLAPSE_STEPS} steps without collapse", "; ".join(survived) or "not run",
                 any("no collapse" in s for s in survived)))
    on, off = r["srt-s0"], r["offline-s0"]
    if on and off:
        d = on[0][-1]["avg"] - off[0][-1]["avg"]
        rows.append(("6. The evolving teacher beats a fixed one", "online − offline avg@8 at the last step > 0",
                     f"{fmt(d)} pts ({on[0][-1]['avg']:.3f} vs {off[0][-1]['avg']:.3f} at step {on[0][-1]['step']})", d > 0))
    else:
        rows.append(("6. The evolving teacher beats a fixed one", "online − offline > 0", "not run", False))
    return rows, r, sweep


def first_mover(metrics, window=5):
    """Which label-free diagnostic leaves its early range first: the step where its running mean over
    `window` steps moves past 3 spreads plus 20% of its mean over the first `window` steps. The running mean
    keeps one noisy step (two prompts sharing an answer by chance) from counting as a move."""
    keys = ("reward", "kl", "entropy", "same_answer", "resp_len")
    firsts = {}
    for k in keys:
        xs = [m.get(k) for m in metrics]
        if any(x is None for x in xs) or len(xs) < 2 * window:
            continue
        mu, sd = statistics.mean(xs[:window]), statistics.pstdev(xs[:window]) + 1e-3
        hit = next((metrics[i]["step"] for i in range(window, len(xs))
                    if abs(statistics.mean(xs[i - window + 1:i + 1]) - mu) > 3 * sd + 0.2 * abs(mu)), None)
        if hit is not None:
            firsts[k] = hit
    return ", ".join(f"{k} (step {s})" for k, s in sorted(firsts.items(), key=lambda kv: kv[1])) or "none"


# ------------------------------------------------------------------------------------------------------
# Figures and the results table (docs/miniature.md)


def figures(r):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(FIGS, exist_ok=True)
    panels = [("held-out avg@8", "eval", "avg"), ("held-out maj@8", "eval", "maj"),
              ("pseudo-reward (gold runs: true reward)", "metrics", "reward"), ("pseudo-label accuracy", "metrics", "label_acc"),
              ("KL to start model", "metrics", "kl"), ("entropy", "metrics", "entropy")]

    def plot(groups, path, title):
        fig, axes = plt.subplots(2, 3, figsize=(13, 7))
        for ax, (label, src, key) in zip(axes.flat, panels):
            drawn = False
            for name, style in groups:
                if not r.get(name):
                    continue
                ev, me = r[name]
                pts = [(x["step"], x.get(key)) for x in (ev if src == "eval" else me) if x.get(key) is not None]
                if pts:
                    xs, ys = zip(*pts)
                    if src == "metrics":                    # per-step metrics are noisy: a running mean of 5
                        ys = [statistics.mean(ys[max(0, i - 4):i + 1]) for i in range(len(ys))]
                    ax.plot(xs, ys, label=name, **style)
                    drawn = True
            if not drawn:
                ax.text(0.5, 0.5, "not logged in these runs\n(kl: only with --kl_coef > 0)", ha="center",
                        va="center", transform=ax.transAxes, color="gray")
            ax.set_title(label)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        if axes.flat[0].get_legend_handles_labels()[0]:
            axes.flat[0].legend(fontsize=8)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        plt.close(fig)

    seeds = [(f"srt-s{s}", {"color": "C0", "alpha": 1 - 0.25 * s}) for s in SEEDS] + \
            [(f"gold-s{s}", {"color": "C1", "alpha": 1 - 0.25 * s}) for s in SEEDS] + \
            [("offline-s0", {"color": "C2"})] + \
            [(f"{m}-lr{lr}", {"color": c, "linestyle": "--"}) for lr in SWEEP for m, c in (("srt", "C0"), ("gold", "C1"))
             if f"{m}-lr{lr}" in RUNS]
    plot(seeds, os.path.join(FIGS, "srt_vs_gold.png"), "Claims 1-3, 6: SRT (no labels) vs RL with gold labels vs offline labels (dashed: lr "
         + ", ".join(lr for lr in SWEEP if lr != SRT_LR) + ")")
    plot([("collapse", {"color": "C3"}), ("collapse-fast", {"color": "C3", "linestyle": ":"})] +
         [(n, {"color": f"C{i + 4}"}) for i, n in enumerate(MITIGATIONS)], os.path.join(FIGS, "collapse.png"),
         f"Claims 4-5: SRT collapses at lr {COLLAPSE_LR} (and {FAST_LR}, dotted); mitigations at {COLLAPSE_LR}")
    plot([("srt-s0", {"color": "C0"}), ("ttrl-votes", {"color": "C5"}), ("ttt", {"color": "C6"})],
         os.path.join(FIGS, "ttrl.png"), "TTRL variants: 16 votes / 8 trained; test-time training on the eval set")


def table(rows, r, sweep):
    out = ["| claim | threshold | measured | holds |", "|---|---|---|---|"]
    out += [f"| {c} | {t} | {m} | {'yes' if ok else 'no'} |" for c, t, m, ok in rows]
    out += ["", "The learning-rate sweep (seed 0): peak gain of held-out avg@8 over the start, in points.", "",
            "| lr | SRT | gold |", "|---|---|---|"]
    out += [f"| {lr} | {fmt(sweep['srt'].get(lr))} | {fmt(sweep['gold'].get(lr))} |" for lr in SWEEP]
    out += ["", "Every run (held-out avg@8 / maj@8 at the start, at the best eval, at the end):", "",
            "| run | flags | start | best (step) | end | minutes |", "|---|---|---|---|---|---|"]
    for name, flags in RUNS.items():
        if not r[name]:
            out.append(f"| {name} | `{' '.join(flags)}` | not run | | | |")
            continue
        ev, _ = r[name]
        best = max(ev, key=lambda e: e["avg"])
        secs = json.load(open(os.path.join(OUT, name, "done.json")))["seconds"]
        out.append(f"| {name} | `{' '.join(flags)}` | {ev[0]['avg']:.3f} / {ev[0]['maj']:.3f} | {best['avg']:.3f} / "
                   f"{best['maj']:.3f} ({best['step']}) | {ev[-1]['avg']:.3f} / {ev[-1]['maj']:.3f} | {secs / 60:.1f} |")
    said = {n: answers(n) for n in ("collapse", "collapse-fast") if r[n]}
    if said:
        head = next(iter(said.values()))
        out += ["", "What the collapsed policies answer (one sample each for the first held-out problems):", "",
                "| run | " + " | ".join(f"`{p}` = {a}" for p, a, _ in head) + " |", "|---|" + "---|" * len(head)]
        out += [f"| {n} | " + " | ".join(str(x) for _, _, x in said[n]) + " |" for n in said]
    return "\n".join(out)


def answers(name, n=6):
    """One sampled answer of a run's final policy to each of the first n held-out problems (seeded)."""
    import torch
    from model import encode_prompts, load_model, rollout, stop_token_ids
    from rewards import extract_answer
    from tiny import tiny_heldout
    model, tok = load_model(os.path.join(OUT, name, "ckpt"))
    rows = tiny_heldout()[:n]
    torch.manual_seed(0)
    outs = rollout(model, tok, encode_prompts(tok, [r["problem"] for r in rows], 64), 1, 64,
                   stop_ids=stop_token_ids(model, tok))
    return [(r["problem"], r["answer"], extract_answer(o.text)) for r, o in zip(rows, outs)]


def report():
    rows, r, sweep = claims()
    text = table(rows, r, sweep)
    print(text)
    try:
        figures(r)
    except ImportError:
        print("matplotlib is not installed: no figures")
    page = os.path.join(ROOT, "docs", "miniature.md")
    doc = open(page).read()
    a, b = "<!-- miniature:start -->", "<!-- miniature:end -->"
    if a in doc and b in doc:
        doc = doc[:doc.index(a) + len(a)] + "\n" + text + "\n" + doc[doc.index(b):]
        open(page, "w").write(doc)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help=f"run names (default: all): {', '.join(RUNS)}")
    p.add_argument("--jobs", type=int, default=2, help="runs at once; each gets cores // jobs threads")
    p.add_argument("--report", action="store_true", help="only regenerate the figures and the table")
    a = p.parse_args()
    unknown = [n for n in a.runs if n not in RUNS]
    if unknown:
        raise SystemExit(f"unknown runs {unknown}; known: {list(RUNS)}")
    if not a.report:
        from tiny import tiny_warmup  # build each seed's start policy once, before runs share it
        for s in sorted({int(RUNS[n][RUNS[n].index("--seed") + 1]) if "--seed" in RUNS[n] else 0 for n in a.runs or RUNS}):
            tiny_warmup(s)
        threads = max(1, (os.cpu_count() or 2) // a.jobs)
        with ThreadPoolExecutor(a.jobs) as pool:
            list(pool.map(lambda n: run(n, threads), a.runs or ORDER))
    report()
