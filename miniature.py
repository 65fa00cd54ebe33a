"""The paper in miniature: each claim of arXiv 2505.21444, reproduced on the CPU testbed, one command.

    python miniature.py                  # every run (finished ones are skipped), then figures and the table
    python miniature.py srt-s0 gold-s0   # only these runs, then figures and the table
    python miniature.py --report         # figures and table from the finished runs only
    python miniature.py --group rewards  # the label-free rewards side by side (docs/rewards.md), its own budget

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

from plot import draw, read_jsonl, read_run

ROOT = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(ROOT, "out-mini")
FIGS = os.path.join(ROOT, "figures")

# The testbed with easy and hard problems (tiny.py's 'tiny-spread': 2- to 7-digit additions), as the paper's
# data has: its start policy is right on most easy prompts and wrong on most hard ones. Every run logs the KL
# to the start model (--watch_kl), so the label-free alarm below can be checked on healthy runs too.
BASE = ["--tiny", "--model", "tiny-spread", "--train_data", "tiny-spread", "--eval_data", "tiny-spread",
        "--max_new_tokens", "96",        # a 7-digit solution runs ~80 tokens: hard prompts answer wrongly, not never
        "--eval_limit", "60", "--watch_kl", "true", "--save_every", "50"]
EVAL, VAL = "tiny-spread", "tiny-spread-val"
SEEDS = (0, 1, 2)
LR, STEPS = "2e-5", ["--steps", "80", "--eval_every", "10"]  # claims 1-3, 6: SRT peaks near step 70 at this rate
TEACHER = ["--teacher_samples", "8"]     # the fixed teacher votes with 8 samples per prompt, like maj@8
# Claim 4 (paper §4.1.1): prolonged SRT at a rate where RL with gold labels stays healthy for as long. Evals every
# 5 steps time the fall against the alarm; the gold run needs no finer evals than the others.
COLLAPSE_LR, COLLAPSE_STEPS = "1e-4", 300
COLLAPSE = ["--lr", COLLAPSE_LR, "--steps", str(COLLAPSE_STEPS)]
# Claim 5: each mitigation at the collapse rate, for 150 steps (seed 0 loses 10 points of avg@8 within ~15)
MITIGATION_STEPS = 150
ALARM_KL = 0.05  # the label-free alarm checked on every run: KL to the start model, mean of 10 steps, above this

RUNS = {}
for s in SEEDS:                                    # claims 1-3: SRT against RL with gold labels, 3 seeds
    RUNS[f"srt-s{s}"] = BASE + STEPS + ["--lr", LR, "--seed", str(s)]
    RUNS[f"gold-s{s}"] = BASE + STEPS + ["--lr", LR, "--seed", str(s), "--label", "gold"]
for s in SEEDS:                                    # claim 4: the collapse, 3 seeds; gold at the same rate, seed 0
    RUNS[f"collapse-s{s}"] = BASE + COLLAPSE + ["--eval_every", "5", "--seed", str(s)]
RUNS["collapse-gold-s0"] = BASE + COLLAPSE + ["--eval_every", "10", "--label", "gold"]
LONG = BASE + ["--lr", COLLAPSE_LR, "--steps", str(MITIGATION_STEPS), "--eval_every", "10"]
MITIGATIONS = {"early-stop": ["--early_stop", "2", "--val_data", VAL],
               "offline-labels": ["--label", "offline"] + TEACHER, "curriculum": ["--curriculum", "0.33"] + TEACHER,
               "online-filter": ["--filter_share", "0.6"]}
for name, flags in MITIGATIONS.items():
    RUNS[name] = LONG + flags
# claim 6: the evolving teacher against a fixed one, at the SRT rate
RUNS["offline-s0"] = BASE + STEPS + ["--lr", LR, "--label", "offline"] + TEACHER
# The order `python miniature.py` runs them in, two at a time: the longest first, so the two lanes end together
ORDER = ["collapse-gold-s0", "collapse-s0", "online-filter", "collapse-s1", "collapse-s2", "offline-labels",
         "curriculum", "offline-s0"]
ORDER += [n for n in RUNS if n not in ORDER]

# Group `rewards` (python miniature.py --group rewards; docs/rewards.md): the label-free signals side by side on
# the same loop, against SRT and gold RL from the suite above: each at the claims' rate on 3 seeds, and at the
# collapse rate for MITIGATION_STEPS steps on seed 0 (against collapse-s0 and collapse-gold-s0 where they ran).
SIGNALS = {"self-certainty": "self_certainty", "neg-entropy": "neg_entropy"}
for name, signal in SIGNALS.items():
    for s in SEEDS:
        RUNS[f"{name}-s{s}"] = BASE + STEPS + ["--lr", LR, "--seed", str(s), "--reward", signal]
    RUNS[f"collapse-{name}-s0"] = LONG + ["--reward", signal]
REWARD_RUNS = [f"{k}-s{s}" for s in SEEDS for k in ("srt", "gold", *SIGNALS)] + [f"collapse-{k}-s0" for k in SIGNALS]
GROUPS = {"claims": ORDER, "rewards": REWARD_RUNS}


def flag(flags, name, default=None):
    """The value given to flag `name` in a run's flag list, else default."""
    return flags[flags.index(name) + 1] if name in flags else default


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
    steps = lambda f: int(flag(f, "--steps", 0))
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
    the held-out set's result, plus 'val' (the labelled hold-out's avg@8) where the run scored it."""
    out = os.path.join(OUT, name)
    if not finished(name):
        return None
    evals = [{"step": e["step"], **e[EVAL], **({"val": e[VAL]["avg"]} if VAL in e else {})}
             for e in read_jsonl(os.path.join(out, "eval.jsonl"))]
    return evals, read_jsonl(os.path.join(out, "metrics.jsonl"))


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


def peak_and_fall(evals, drop):
    """(step of the peak, first step at which held-out avg@8 is `drop` below its peak so far, or None). avg@8 here
    is the mean of an eval and the one before it: one eval of 60 problems moves a few points by chance."""
    best, peak = -1.0, 0
    for i, e in enumerate(evals):
        avg = (e["avg"] + evals[max(0, i - 1)]["avg"]) / 2
        if avg > best:
            best, peak = avg, e["step"]
        elif avg <= best - drop:
            return peak, e["step"]
    return peak, None


def window(metrics, key, w=10):
    """[(step, mean of `key` over the last w steps)], from the w-th step on: one step's 16 prompts are noisy."""
    return [(metrics[i]["step"], statistics.mean(m.get(key) or 0 for m in metrics[i - w + 1:i + 1]))
            for i in range(w - 1, len(metrics))]


def alarm(metrics):
    """The step at which `--kl_alarm ALARM_KL` would stop a run (label-free): the alarm's own rule,
    mitigations.kl_mean, replayed on each step's log. None if it never fires."""
    from mitigations import kl_mean
    return next((m["step"] for i, m in enumerate(metrics) if (kl_mean(metrics[:i + 1]) or 0) > ALARM_KL), None)


def collapse_text(r, name):
    """One collapse run: (the reward hack, the fall and what moved first as text, whether it hacked and fell)."""
    ev, me = r[name]
    reward = window(me, "reward")
    top = max(x for _, x in reward)
    first = next((s for s, x in reward if x > 0.85), None)
    peak, fall = peak_and_fall(ev, 0.10)
    best = next(e["avg"] for e in ev if e["step"] == peak)
    text = (f"{name}: pseudo-reward {top:.2f} (10-step mean; > 0.85 from step {first}), avg@8 {ev[0]['avg']:.2f} → "
            f"{best:.2f} (step {peak}) → {ev[-1]['avg']:.2f}, 10 points below its peak by step {fall}; one answer "
            f"for up to {100 * max(x.get('same_answer', 0) for x in me):.0f}% of a step's prompts; first to move: "
            f"{first_mover(me)}")
    return text, first is not None and fall is not None


def claims():
    r = {n: read(n) for n in RUNS}
    rows = []
    seeds = [s for s in SEEDS if r[f"srt-s{s}"] and r[f"gold-s{s}"]]
    srt = [gain(r[f"srt-s{s}"][0]) for s in seeds]
    gold = [gain(r[f"gold-s{s}"][0]) for s in seeds]
    m, sd = mean_sd(srt)
    per_seed = ", ".join(f"{fmt(g)}" for g in srt)
    rows.append(("1. SRT improves held-out avg@8 without labels", "peak gain ≥ +15 pts",
                 f"{fmt(m, sd)} pts (mean ± sd, {len(srt)} seeds: {per_seed})" if srt else "not run",
                 m is not None and m >= 0.15))
    m2, sd2 = mean_sd([a / b for a, b in zip(srt, gold) if b > 0])
    rows.append(("2. SRT rivals gold RL early", "SRT gain / gold gain ≥ 0.75",
                 f"{fmt(m2, sd2, pct=False)} at lr {LR} (gold {fmt(*mean_sd(gold))} pts)" if srt else "not run",
                 m2 is not None and m2 >= 0.75))
    maj = [gain(r[f"srt-s{s}"][0], "maj") for s in seeds]
    m3, sd3 = mean_sd(maj)
    rows.append(("3. The teacher improves: maj@8 rises", "peak gain ≥ +10 pts", f"{fmt(m3, sd3)} pts" if maj else "not run",
                 m3 is not None and m3 >= 0.10))
    texts, hacked = [], 0
    for s in SEEDS:
        if r[f"collapse-s{s}"]:
            text, ok = collapse_text(r, f"collapse-s{s}")
            texts.append(text)
            hacked += ok
    healthy = False
    if r["collapse-gold-s0"]:
        ev, _ = r["collapse-gold-s0"]
        peak, fall = peak_and_fall(ev, 0.10)
        healthy = fall is None
        texts.append(f"collapse-gold-s0 (gold labels, same rate and steps): avg@8 {ev[0]['avg']:.2f} → "
                     f"{max(e['avg'] for e in ev):.2f} (step {peak}) → {ev[-1]['avg']:.2f}, "
                     + ("never 10 points below its peak" if healthy else f"10 points below its peak by step {fall}"))
    rows.append((f"4. Prolonged SRT (lr {COLLAPSE_LR}, {COLLAPSE_STEPS} steps) reward-hacks and collapses; gold RL "
                 "does not", "pseudo-reward > 0.85 and avg@8 ≥ 10 pts below its peak; the gold run never is",
                 f"{hacked} of {len(texts) - (r['collapse-gold-s0'] is not None)} seeds. " + "; ".join(texts)
                 if texts else "not run", hacked > 0 and healthy))
    fall10 = peak_and_fall(r["collapse-s0"][0], 0.10)[1] if r["collapse-s0"] else None
    survived = []
    for name in MITIGATIONS:
        if r[name]:
            ev, me = r[name]
            steps = me[-1]["step"] if me else 0
            ok = steps >= MITIGATION_STEPS and ev[-1]["avg"] > ev[0]["avg"] - 0.10
            text = f"{name}: {steps} steps, avg@8 {ev[0]['avg']:.2f} → {ev[-1]['avg']:.2f}" + (" (no collapse)" if ok else "")
            if any("val" in e for e in ev):  # early stopping keeps the model that scored best on the hold-out
                kept = max((e for e in ev if "val" in e), key=lambda e: (e["val"], -e["step"]))
                text += f", kept step {kept['step']} (avg@8 {kept['avg']:.2f})"
            survived.append(text)
    bar = f"one runs {MITIGATION_STEPS} steps (collapse-s0 fell 10 pts by step {fall10}) and ends ≤ 10 pts below its start"
    rows.append(("5. Mitigations, at the collapse rate", bar, "; ".join(survived) or "not run",
                 any("no collapse" in s for s in survived)))
    on, off = r["srt-s0"], r["offline-s0"]
    if on and off:
        d = on[0][-1]["avg"] - off[0][-1]["avg"]
        rows.append(("6. The evolving teacher beats a fixed one", "online − offline avg@8 at the last step > 0",
                     f"{fmt(d)} pts ({on[0][-1]['avg']:.3f} vs {off[0][-1]['avg']:.3f} at step {on[0][-1]['step']})", d > 0))
    else:
        rows.append(("6. The evolving teacher beats a fixed one", "online − offline > 0", "not run", False))
    verdicts = alarms(r)
    late = [n for n, v in verdicts.items() if v[-1] in ("late", "silent")]
    false = [n for n, v in verdicts.items() if v[-1] == "false alarm"]
    rows.append((f"7. A label-free alarm (10-step mean KL > {ALARM_KL}) warns in time",
                 "fires before avg@8 falls 5 pts in every run that falls; never in a gold run, nor before a run's peak",
                 (f"late or silent on {', '.join(late) or 'none'}; false alarms on {', '.join(false) or 'none'} "
                  "(table below)") if verdicts else "not run", bool(verdicts) and not late and not false))
    return rows, r


def alarms(r):
    """{run: (peak step, step avg@8 fell 5 pts, alarm step, verdict)} for every run. A run that fell needs the
    alarm by the fall; a gold run must never raise it; any other run must not raise it before its peak."""
    out = {}
    for name in ORDER:
        if not r[name]:
            continue
        ev, me = r[name]
        peak, fall = peak_and_fall(ev, 0.05)
        when = alarm(me)
        if "gold" in name:
            verdict = "false alarm" if when else "quiet"
        elif fall:
            verdict = "silent" if not when else "late" if when > fall else "in time"
        else:
            verdict = "false alarm" if when and when <= peak else "quiet" if not when else "after the peak"
        out[name] = (peak, fall, when, verdict)
    return out


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


def spread(r):
    """The testbed's difficulty spread, per seed, from the start model: held-out avg@8 by operand length (the
    step-0 eval of srt-s*), the easiest third (2-3 digits) against the hardest (6-7), the majority's accuracy by
    length over SRT's first 20 steps (label_acc_by_level), and the fixed teacher's majority-share histogram."""
    from tiny import TASKS, tiny_heldout
    levels = [str(x["level"]) for x in tiny_heldout(task=EVAL)[:int(flag(BASE, "--eval_limit"))]]
    digits = [str(d) for d in TASKS[EVAL]["problems"]]
    third = lambda by, ds: sum(by[d] * levels.count(d) for d in ds) / sum(levels.count(d) for d in ds)
    rows = {"start avg@8 by digits " + " / ".join(digits) + " (problems: " +
            " / ".join(str(levels.count(d)) for d in digits) + ")": [],
            "start avg@8, easiest third (2–3 digits) vs hardest (6–7)": [],
            "majority right, SRT steps 1–20, by digits": []}
    for s in SEEDS:
        if not r[f"srt-s{s}"]:
            for v in rows.values():
                v.append("not run")
            continue
        ev, me = r[f"srt-s{s}"]
        by = ev[0].get("avg_by_level")
        if not by:  # a run older than the per-level eval
            for v in rows.values():
                v.append("not logged")
            continue
        acc = {d: statistics.mean(m["label_acc_by_level"][d] for m in me[:20] if d in m.get("label_acc_by_level", {}))
               for d in digits}
        cells = [" / ".join(f"{by.get(d, 0):.2f}" for d in digits),
                 f"{third(by, ['2', '3']):.2f} vs {third(by, ['6', '7']):.2f}", " / ".join(f"{acc[d]:.2f}" for d in digits)]
        for v, c in zip(rows.values(), cells):
            v.append(c)
    votes = os.path.join(OUT, "curriculum", "teacher.json")
    if finished("curriculum") and os.path.exists(votes):
        shares = [round(8 * v["share"]) for v in json.load(open(votes))]
        rows["start model's majority share over the training prompts, 8 samples: 0 / 1 / … / 8 of 8 agree"] = \
            [" / ".join(str(shares.count(k)) for k in range(9))] + ["—"] * (len(SEEDS) - 1)
    out = ["| | " + " | ".join(f"seed {s}" for s in SEEDS) + " |", "|---|" + "---|" * len(SEEDS)]
    return out + [f"| {k} | " + " | ".join(v) + " |" for k, v in rows.items()]


def hard_first(r, windows=((1, 20), (21, 40), (41, 60), (81, 100), (141, 160))):
    """The majority's accuracy by operand length over windows of the collapse runs: which prompts go first."""
    from tiny import TASKS
    digits = [str(d) for d in TASKS[EVAL]["problems"]]
    out = ["| steps | " + " | ".join(f"collapse-s{s}: digits {' / '.join(digits)}" for s in SEEDS) + " |",
           "|---|" + "---|" * len(SEEDS)]
    for lo, hi in windows:
        cells = []
        for s in SEEDS:
            me = r[f"collapse-s{s}"][1] if r[f"collapse-s{s}"] else []
            part = [m["label_acc_by_level"] for m in me if lo <= m["step"] <= hi]
            cells.append(" / ".join(f"{statistics.mean(p[d] for p in part if d in p):.2f}"
                                    if any(d in p for p in part) else "—" for d in digits) if part else "not run")
        out.append(f"| {lo}–{hi} | " + " | ".join(cells) + " |")
    return out


# ------------------------------------------------------------------------------------------------------
# Figures and the results table (docs/miniature.md)


def figures(r):
    """The suite's two figures, drawn as `python plot.py` draws any run (one colour per run; gold runs dashed)."""
    import matplotlib.pyplot as plt
    os.makedirs(FIGS, exist_ok=True)
    dashed = lambda name: {"linestyle": "--"} if "gold" in name else {}
    runs = lambda names: [(n, read_run(os.path.join(OUT, n)), dashed(n)) for n in names if r.get(n)]
    plt.close(draw(runs([f"srt-s{s}" for s in SEEDS] + [f"gold-s{s}" for s in SEEDS] + ["offline-s0"]),
                   os.path.join(FIGS, "srt_vs_gold.png"),
                   f"Claims 1-3, 6: SRT (no labels) vs RL with gold labels (dashed) vs offline labels, lr {LR}"))
    plt.close(draw(runs([f"collapse-s{s}" for s in SEEDS] + ["collapse-gold-s0"] + list(MITIGATIONS)),
                   os.path.join(FIGS, "collapse.png"),
                   f"Claims 4-5: prolonged SRT collapses at lr {COLLAPSE_LR}, gold RL (dashed) does not; mitigations",
                   refs=[("kl", ALARM_KL, f"the alarm replayed on every run: 10-step mean > {ALARM_KL}")]))


def table(rows, r):
    out = ["| claim | threshold | measured | holds |", "|---|---|---|---|"]
    out += [f"| {c} | {t} | {m} | {'yes' if ok else 'no'} |" for c, t, m, ok in rows]
    out += ["", "The difficulty spread (held-out avg@8 on 60 problems at step 0; majority = the pseudo-label of 16 samples):", ""]
    out += spread(r)
    out += ["", "Hard prompts go first: the majority's accuracy (pseudo-label accuracy) by operand length, mean over steps:", ""]
    out += hard_first(r)
    out += ["", f"The alarm (10-step mean KL to the start model > {ALARM_KL}, i.e. `--kl_alarm {ALARM_KL}`) against the "
            "step where held-out avg@8 (mean of two evals) first fell 5 points below its peak:", "",
            "| run | avg@8 peak (step) | fell 5 pts at | alarm at | verdict |", "|---|---|---|---|---|"]
    out += [f"| {n} | {p} | {f or '—'} | {w or '—'} | {v} |" for n, (p, f, w, v) in alarms(r).items()]
    out += ["", "Every run (held-out avg@8 / maj@8 at the start, at the best eval, at the end; KL: max of its 10-step mean):", "",
            "| run | flags | start | best (step) | end | KL max | minutes |", "|---|---|---|---|---|---|---|"]
    for name in ORDER:
        flags = " ".join(RUNS[name][len(BASE):])
        if not r[name]:
            out.append(f"| {name} | `{flags}` | not run | | | | |")
            continue
        ev, me = r[name]
        best = max(ev, key=lambda e: e["avg"])
        kl = max((x for _, x in window(me, "kl")), default=0)
        secs = json.load(open(os.path.join(OUT, name, "done.json")))["seconds"]
        out.append(f"| {name} | `{flags}` | {ev[0]['avg']:.3f} / {ev[0]['maj']:.3f} | {best['avg']:.3f} / "
                   f"{best['maj']:.3f} ({best['step']}) | {ev[-1]['avg']:.3f} / {ev[-1]['maj']:.3f} | {kl:.3f} | {secs / 60:.1f} |")
    out += ["", f"Every run's flags begin with `{' '.join(BASE)}`. " + sitting()]
    said = {n: answers(n) for n in [f"collapse-s{s}" for s in SEEDS] if r[n]}
    if said:
        head = next(iter(said.values()))
        out += ["", "What the collapsed policies answer (one sample each for the first held-out problems):", "",
                "| run | " + " | ".join(f"`{p}` = {a}" for p, a, _, _ in head) + " |", "|---|" + "---|" * len(head)]
        out += [f"| {n} | " + " | ".join(str(x) for _, _, x, _ in said[n]) + " |" for n in said]
    return "\n".join(out)


def sitting():
    """How long the suite took: the runs' own minutes added up, and the wall clock from the first run's start
    to the last run's end (one sitting only if the runs were not made across several)."""
    names = [n for n in RUNS if finished(n)]
    if not names:
        return ""
    done = [os.path.join(OUT, n, "done.json") for n in names]
    lane = sum(json.load(open(d))["seconds"] for d in done) / 60
    start = min(os.path.getmtime(os.path.join(OUT, n, "flags.json")) for n in names)
    wall = (max(os.path.getmtime(d) for d in done) - start) / 60
    return (f"The {len(done)} finished runs took {lane:.0f} run-minutes; from the first start to the last end, "
            f"{wall:.0f} minutes of wall clock (warm-ups not included).")


def answers(name, n=6):
    """(problem, gold, extracted answer, response text): one sample of a run's final policy for each of the
    first n held-out problems (seeded)."""
    import torch
    from model import encode_prompts, load_model, rollout, stop_token_ids
    from rewards import extract_answer
    from tiny import tiny_heldout
    model, tok = load_model(os.path.join(OUT, name, "ckpt"))
    rows = tiny_heldout(task=EVAL)[:n]
    torch.manual_seed(0)
    outs = rollout(model, tok, encode_prompts(tok, [r["problem"] for r in rows], 64), 1, int(flag(BASE, "--max_new_tokens")),
                   stop_ids=stop_token_ids(model, tok))
    return [(r["problem"], r["answer"], extract_answer(o.text), o.text) for r, o in zip(rows, outs)]


def report():
    rows, r = claims()
    text = table(rows, r)
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


# ------------------------------------------------------------------------------------------------------
# Group `rewards`: the label-free signals side by side (docs/rewards.md)

ARMS = {"srt": "majority", "self-certainty": "self_certainty", "neg-entropy": "neg_entropy", "gold": None}


def ranking(metrics, signal, steps=None):
    """The mean over steps (all, or those in `steps`) of a signal's pairwise ranking accuracy against gold."""
    xs = [m["rank_acc"][signal] for m in metrics if (steps is None or m["step"] in steps)
          and (m.get("rank_acc") or {}).get(signal) is not None]
    return statistics.mean(xs) if xs else None


def arm_row(r, arm, signal):
    """One signal's row over the seeds it finished: gains, gain / gold's, ranking, length correlation, collapse."""
    done = [s for s in SEEDS if r.get(f"{arm}-s{s}")]
    if not done:
        return f"| {arm} | not run |" + " |" * 7
    ev = {s: r[f"{arm}-s{s}"][0] for s in done}
    me = {s: r[f"{arm}-s{s}"][1] for s in done}
    rel = [gain(ev[s]) / gain(r[f"gold-s{s}"][0]) for s in done if r.get(f"gold-s{s}") and gain(r[f"gold-s{s}"][0])]
    ranks0 = [ranking(me[s], signal, {1}) for s in done] if signal else []    # step 1 only, then all steps
    ranks = [ranking(me[s], signal) for s in done] if signal else []
    rank0, rank = mean_sd([x for x in ranks0 if x is not None]), mean_sd([x for x in ranks if x is not None])
    corr = mean_sd([statistics.mean(m["len_corr"][signal] for m in me[s] if (m.get("len_corr") or {}).get(signal)
                                    is not None) for s in done if signal])
    falls = [peak_and_fall(ev[s], 0.10)[1] for s in done]
    return (f"| {arm} | {len(done)} | {fmt(*mean_sd([gain(ev[s]) for s in done]))} | "
            f"{fmt(*mean_sd([gain(ev[s], 'maj') for s in done]))} | {fmt(*mean_sd(rel), pct=False)} | "
            f"{fmt(*rank0, pct=False)} | {fmt(*rank, pct=False)} | {fmt(*corr, pct=False)} | "
            f"{', '.join(str(f) if f else 'no' for f in falls)} |")


def collapse_row(r, name):
    """A run at the collapse rate: peak and end avg@8, the fall, length and entropy at the end, its answers."""
    if not r.get(name):
        return f"| {name} | not run |" + " |" * 5
    ev, me = r[name]
    peak, fall = peak_and_fall(ev, 0.10)
    best = next(e["avg"] for e in ev if e["step"] == peak)
    last = me[-10:]
    end = lambda t: "`…" + t[-24:].replace("\n", " ").replace("|", "/").replace("`", "'") + "`"   # a response's end
    said = ", ".join(str(a) if a is not None else "none: " + end(t) for _, _, a, t in answers(name, 4))
    return (f"| {name} | {ev[0]['avg']:.3f} → {best:.3f} (step {peak}) → {ev[-1]['avg']:.3f} | {fall or 'no'} | "
            f"{statistics.mean(m['resp_len'] for m in last):.0f} | {statistics.mean(m['entropy'] or 0 for m in last):.3f} "
            f"| {said} |")


def rewards_report():
    """The comparison table (between the `rewards` markers of docs/rewards.md) and figures/rewards.png."""
    from tiny import tiny_heldout
    r = {n: read(n) for n in REWARD_RUNS + ["collapse-s0", "collapse-gold-s0"]}
    out = [f"At lr {LR}, 80 steps (held-out avg@8 / maj@8 on {flag(BASE, '--eval_limit')} problems; gains are the "
           "best eval's over step 0's, in points; ranking: pairwise accuracy of the signal against gold within "
           "groups, 0.5 = chance, at step 1 and over all steps; length: the signal's within-group correlation "
           "with response length; fell: the step where avg@8 (mean of two evals) was 10 points below its peak):", "",
           "| signal | seeds | avg@8 gain | maj@8 gain | gain / gold's | ranking at step 1 | ranking, all steps | "
           "length corr. | fell 10 pts |", "|---|---|---|---|---|---|---|---|---|"]
    out += [arm_row(r, arm, signal) for arm, signal in ARMS.items()]
    fell = [f"{k}-s{s}" for k in SIGNALS for s in SEEDS if r.get(f"{k}-s{s}")
            and peak_and_fall(r[f"{k}-s{s}"][0], 0.10)[1]]
    out += ["", f"At the collapse rate, lr {COLLAPSE_LR}, seed 0, and the runs above that fell (resp. length and "
            "entropy: means of the last 10 steps; answers: one sample each to the first held-out problems, "
            + ", ".join(f"`{row['problem']}` = {row['answer']}" for row in tiny_heldout(task=EVAL)[:4])
            + "):", "", "| run | avg@8: start → peak → end | fell 10 pts | resp. length | entropy | answers |",
            "|---|---|---|---|---|---|"]
    out += [collapse_row(r, n) for n in [f"collapse-{k}-s0" for k in SIGNALS] + ["collapse-s0", "collapse-gold-s0"]
            + fell]
    secs = sum(json.load(open(os.path.join(OUT, n, "done.json")))["seconds"] for n in REWARD_RUNS if r.get(n))
    out += ["", f"{sum(bool(r.get(n)) for n in REWARD_RUNS)} of the group's {len(REWARD_RUNS)} runs finished, "
            f"{secs / 60:.0f} run-minutes. Every run's flags begin with `{' '.join(BASE)}`."]
    text = "\n".join(out)
    print(text)
    page = os.path.join(ROOT, "docs", "rewards.md")
    doc = open(page).read()
    a, b = "<!-- rewards:start -->", "<!-- rewards:end -->"
    open(page, "w").write(doc[:doc.index(a) + len(a)] + "\n" + text + "\n" + doc[doc.index(b):])
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        return print("matplotlib is not installed: no figure")
    names = [f"{k}-s0" for k in ARMS] + [f"collapse-{k}-s0" for k in SIGNALS]
    runs = [(n, read_run(os.path.join(OUT, n)), {"linestyle": "--"} if "collapse" in n else {}) for n in names if r.get(n)]
    if runs:
        os.makedirs(FIGS, exist_ok=True)
        plt.close(draw(runs, os.path.join(FIGS, "rewards.png"), f"Label-free rewards side by side, seed 0: lr {LR} "
                       f"(solid) and lr {COLLAPSE_LR} (dashed); the reward panel mixes units (0/1 and nats)"))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help=f"run names (default: all): {', '.join(RUNS)}")
    p.add_argument("--jobs", type=int, default=2, help="runs at once; each gets cores // jobs threads")
    p.add_argument("--report", action="store_true", help="only regenerate the figures and the table")
    p.add_argument("--group", choices=list(GROUPS), default="claims",
                   help="claims: the paper's claims (default); rewards: the label-free signals side by side")
    a = p.parse_args()
    unknown = [n for n in a.runs if n not in RUNS]
    if unknown:
        raise SystemExit(f"unknown runs {unknown}; known: {list(RUNS)}")
    if not a.report:
        from tiny import tiny_warmup  # build each seed's start policy once, before runs share it
        names = a.runs or GROUPS[a.group]
        for task, s in sorted({(flag(RUNS[n], "--model", "tiny"), int(flag(RUNS[n], "--seed", 0))) for n in names}):
            tiny_warmup(s, task)
        threads = max(1, (os.cpu_count() or 2) // a.jobs)
        with ThreadPoolExecutor(a.jobs) as pool:
            list(pool.map(lambda n: run(n, threads), names))
    report() if a.group == "claims" else rewards_report()
