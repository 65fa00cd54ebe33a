"""Mitigations of reward hacking (paper §5), beside the method: prolonged SRT can learn to agree with itself
instead of being right, since one answer for every prompt maximises the self-consistency reward.

Before training, the fixed start model votes once on every prompt (`teacher_votes`): its majority answers
are the offline labels (--label offline), and its majority shares rank the prompts for the label-free
curriculum (--curriculum, `easiest`). During training, early stopping keeps the model that scores best on a
small labelled hold-out (--early_stop, `keep_best`), and label-free alarms stop a run whose prompts all
get one answer (--collapse_alarm) or whose policy drifts from the start model (--kl_alarm). The online
filter (--filter_share, `online_filter`) changes each step's batch: the loop calls it after its vote.
"""
import json
import os
import shutil

from tqdm import tqdm

from model import rollout
from rewards import extract_answer, majority_vote
from runtime import precision, save_model


def teacher_votes(model, tokenizer, prompt_ids, cfg, stop_ids):
    """The start model's majority answer and majority share for every training prompt, computed once before
    training and cached in out_dir/teacher.json: the fixed teacher's offline labels, and the label-free
    difficulty ranking of the curriculum (a high share means an easy prompt)."""
    path = os.path.join(cfg.out_dir, "teacher.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    k, votes, per_call = cfg.teacher_samples, [], max(1, cfg.gen_chunk // cfg.teacher_samples)
    for s in tqdm(range(0, len(prompt_ids), per_call), desc="teacher votes", leave=False):
        outs = rollout(model, tokenizer, prompt_ids[s:s + per_call], k, cfg.max_new_tokens, cfg.temperature,
                       cfg.top_p, cfg.gen_chunk, stop_ids, precision(cfg))
        for g in range(len(outs) // k):
            label, count = majority_vote([extract_answer(o.text) for o in outs[g * k:(g + 1) * k]])
            votes.append({"label": label, "share": count / k})
    with open(path + ".tmp", "w") as f:
        json.dump(votes, f)
    os.replace(path + ".tmp", path)
    return votes


def easiest(votes, fraction):
    """The label-free curriculum: indices of the `fraction` of prompts with the highest start-model majority
    share, in dataset order (ties keep dataset order). The paper keeps the easiest third of DAPO."""
    ranked = sorted(range(len(votes)), key=lambda i: -votes[i]["share"])
    return sorted(ranked[:max(1, round(fraction * len(votes)))])


def offline_labels_and_curriculum(rows, prompt_ids, model, tokenizer, cfg, stop_ids):
    """--label offline: each row's 'teacher' label is the start model's majority answer, never updated.
    --curriculum F: keep the fraction F of prompts the start model agrees on most. -> (rows, prompt_ids)."""
    votes = teacher_votes(model, tokenizer, prompt_ids, cfg, stop_ids)
    for r, v in zip(rows, votes):
        r["teacher"] = v["label"]
    if cfg.curriculum < 1:
        easy = easiest(votes, cfg.curriculum)
        print(f"curriculum: kept the {len(easy)} easiest of {len(rows)} prompts (start-model majority share "
              f">= {min(votes[i]['share'] for i in easy):.2f})")
        rows, prompt_ids = [rows[i] for i in easy], [prompt_ids[i] for i in easy]
    return rows, prompt_ids


def keep_best(model, tokenizer, results, step, best, val_names, cfg):
    """Early stopping: when the mean avg@k over the labelled hold-out val_names beats best['avg'], record the
    step and keep this model in out_dir/best (model None: only record, as when a resumed run replays
    eval.jsonl). The run stops after --early_stop evaluations without a gain (see main)."""
    if not val_names or not all(n in results for n in val_names):
        return
    avg = sum(results[n]["avg"] for n in val_names) / len(val_names)
    if avg <= best["avg"]:
        return
    best.update(avg=avg, step=step)
    if model is not None:
        best_dir = os.path.join(cfg.out_dir, "best")
        tmp = save_model(model, tokenizer, best_dir)
        shutil.rmtree(best_dir, ignore_errors=True)
        os.replace(tmp, best_dir)


def best_so_far(val_names, start, cfg):
    """The early-stopping record {avg, step} of a run resumed at step `start`, from its eval.jsonl."""
    best, path = {"avg": -1.0, "step": start}, os.path.join(cfg.out_dir, "eval.jsonl")
    if val_names and start > 0 and os.path.exists(path):
        with open(path) as f:
            for e in map(json.loads, f):
                if e["step"] <= start:
                    keep_best(None, None, e, e["step"], best, val_names, cfg)
    return best


KL_WINDOW = 10  # steps in the KL alarm's mean: one step's KL, over 16 prompts, is noisy


def kl_mean(rows):
    """What --kl_alarm compares with its threshold: the mean KL to the start model over the last KL_WINDOW
    metrics rows; None until that many rows have a KL."""
    kls = [r["kl"] for r in rows[-KL_WINDOW:] if r.get("kl") is not None]
    return sum(kls) / KL_WINDOW if len(kls) == KL_WINDOW else None


def collapse_alarm(metrics, cfg):
    """The label-free alarms: a reason to stop, else None. --collapse_alarm: a share of at least this of the
    step's prompts get one same majority answer (the paper's collapse signature, which comes late). --kl_alarm:
    the KL to the start model, averaged over the last KL_WINDOW steps, exceeds this. On the spread testbed a
    threshold chosen on one seed stops other seeds' healthy gold runs too (docs/testbed.md). The mean is read
    from out_dir/metrics.jsonl, where this step is already logged, so a resumed run decides as an unbroken one."""
    if cfg.collapse_alarm and metrics["same_answer"] >= cfg.collapse_alarm:
        return (f"collapse alarm: {metrics['same_answer']:.0%} of prompts share one majority answer "
                f"(reward {metrics['reward']:.2f})")
    if cfg.kl_alarm:
        with open(os.path.join(cfg.out_dir, "metrics.jsonl")) as f:
            kl = kl_mean([json.loads(line) for line in f.readlines()[-KL_WINDOW:]])
        if kl is not None and kl > cfg.kl_alarm:
            return (f"KL alarm: KL to the start model {kl:.3f} over the last {KL_WINDOW} steps "
                    f"> {cfg.kl_alarm:g} (reward {metrics['reward']:.2f})")
    return None


FILTER_ROUNDS = 4  # the online filter rolls out at most this many candidate batches per step


def online_filter(batch, outs, groups, roll, step, n_rows, cfg, batch_indices, vote):
    """The online curriculum (paper v2 App. I.7, DAPO-style): drop prompts whose majority share is below
    filter_share, and refill with fresh prompts until B remain (at most FILTER_ROUNDS rollouts; a short batch
    trains as it is, and if none passes, the most agreed-on prompt of the last round trains alone).
    roll(batch) samples a batch's rollouts; batch_indices and vote are the loop's steps 1 and 3. Refills come
    from their own seeded stream, so a resumed run draws the same ones. -> the kept (batch, outs, groups)."""
    votes, B = len(outs) // len(batch), cfg.prompts_per_step
    kept = []  # (prompt index, its rollouts, its vote)
    for r in range(FILTER_ROUNDS):
        if r:
            batch = batch_indices(step * FILTER_ROUNDS + r, n_rows, B, cfg.seed + 1)
            outs = roll(batch)
            groups = vote(outs, votes)
        shares = [majority_vote(*group)[1] / votes for group in groups]
        kept += [(i, outs[g * votes:(g + 1) * votes], groups[g]) for g, i in enumerate(batch)
                 if shares[g] >= cfg.filter_share]
        if len(kept) >= B:
            break
    if not kept:
        g = max(range(len(batch)), key=lambda g: shares[g])
        kept = [(batch[g], outs[g * votes:(g + 1) * votes], groups[g])]
    kept = kept[:B]
    return [i for i, _, _ in kept], [o for _, group, _ in kept for o in group], [v for _, _, v in kept]
