"""Self-Rewarded Training (SRT): online RL on math problems with no labels.

"Can Large Reasoning Models Self-Train?" (Shafayat, Tajwar, Salakhutdinov, Schneider, Zanette, 2025;
arXiv 2505.21444). Each step, in the order of the paper's Algorithm 1:
    1. sample B prompts
    2. roll out n responses per prompt from the current policy (temperature 1.0)
    3. label each prompt: the majority answer of its own samples (SRT), or the gold answer (RL)
    4. reward each response 1 if its answer is equivalent to the label, else 0
    5. advantages within each group (RLOO or GRPO)
    6. one on-policy PPO-clipped update, token-mean loss, optional k3 KL to the start model
Run `python selftrain.py` on one CUDA GPU for the paper's recipe, or `python selftrain.py --tiny` for
the offline CPU testbed (a tiny model warmed up on a synthetic addition task, then trained with SRT).
"""
import argparse
import ast
import inspect
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, fields

import torch
from tqdm import tqdm

import eval as evaluation
from model import (completion_logprobs, encode_prompts, load_model, pack, rollout, set_gradient_checkpointing,
                   stop_token_ids)
from rewards import extract_answer, is_equiv, majority_vote


@dataclass
class Config:
    # --- model and data
    model: str = "Qwen/Qwen2.5-Math-1.5B"
    """HF hub id or local folder of the start policy (the paper: Qwen2.5-Math-7B; 1.5B fits one GPU)"""
    tiny: bool = False
    """offline CPU testbed: warm up a tiny model on synthetic addition, then run SRT on it"""
    train_data: str = "DigitalLearningGmbH/MATH-lighteval"
    """training problems: a hub dataset id, a local .jsonl/.json/.parquet file, or 'tiny'"""
    train_config: str = ""
    """hub dataset config name, if the dataset has several"""
    train_split: str = "train"
    """split of the training dataset"""
    problem_field: str = ""
    """column holding the problem text (empty: auto-detect problem/question/prompt)"""
    answer_field: str = ""
    """column holding the gold answer (empty: auto-detect; a 'solution' column gives its last \\boxed{})"""
    eval_data: str = "math500,amc23,aime24,aime25"
    """comma-separated held-out sets: benchmark names (see eval.py), files, or 'tiny'"""
    data_dir: str = ""
    """folder of local <benchmark>.jsonl files used instead of the hub (offline), e.g. ../shared/data"""
    # --- the method (paper §3, Algorithm 1; defaults from paper-notes §1)
    label: str = "majority"
    """'majority' = SRT, the label is the group's own majority answer; 'gold' = RL with the true answer"""
    advantage: str = "rloo"
    """'rloo': R_i - mean of the other samples (the paper's v1 runs); 'grpo': group z-score"""
    prompts_per_step: int = 16
    """B, prompts per RL step (paper: 16)"""
    samples_per_prompt: int = 16
    """n, responses sampled per prompt; they both vote and train (paper: 32, halved to fit one GPU)"""
    max_prompt_tokens: int = 1024
    """longer prompts are filtered out at load time (paper: 1024)"""
    max_new_tokens: int = 3072
    """response length limit; a response that hits it is truncated (paper: 3072)"""
    temperature: float = 1.0
    """sampling temperature for rollouts; log-probs use the same one (paper: 1.0)"""
    top_p: float = 1.0
    """nucleus sampling for rollouts (paper: 1.0, i.e. off)"""
    clip_eps: float = 0.2
    """PPO clip range; inactive with one on-policy update, logged as the clip fraction (paper: 0.2)"""
    kl_coef: float = 0.001
    """beta of the k3 KL to the frozen start model, in the loss; 0 skips the reference model (paper: 1e-3)"""
    lr: float = 1e-6
    """AdamW learning rate, constant (paper: 1e-6)"""
    weight_decay: float = 0.01
    """AdamW weight decay (paper: 0.01)"""
    grad_clip: float = 1.0
    """max global grad norm (paper: 1.0)"""
    steps: int = 400
    """RL steps to run (paper: SRT peaks at ~300-600 steps, then may collapse)"""
    # --- evaluation and checkpoints
    eval_every: int = 50
    """evaluate on the held-out sets every this many steps (0: only at start and end)"""
    eval_samples: int = 4
    """k, samples per held-out problem for avg@k and maj@k (paper: 32)"""
    eval_limit: int = 0
    """evaluate at most this many problems per held-out set (0: all)"""
    save_every: int = 50
    """write a checkpoint every this many steps (and at the end)"""
    out_dir: str = "out"
    """checkpoint, metrics.jsonl and eval results go here"""
    resume: bool = False
    """continue from out_dir/ckpt: model, optimizer, step, RNG states and data order"""
    seed: int = 0
    """seeds data order, sampling and the tiny testbed"""
    # --- engineering (memory and speed; see the README's memory budget)
    device: str = "auto"
    """'cuda', 'cpu' or 'auto'"""
    amp: bool = True
    """bf16 autocast with fp32 master weights (CUDA; it also runs on the CPU, slowly)"""
    grad_checkpointing: bool = True
    """recompute activations in backward to save memory (CUDA only)"""
    gen_chunk: int = 128
    """sequences per generate call: bounds the KV cache (56 KiB per token for Qwen2.5-Math-1.5B; README budget)"""
    micro_batch: int = 8
    """sequences per forward/backward; gradients accumulate over the step"""
    logprob_chunk: int = 1024
    """completion tokens per LM-head chunk when computing log-probs"""
    peak_flops: float = 989e12
    """accelerator peak bf16 FLOP/s for the MFU estimate (H100 SXM dense)"""


# The offline testbed's defaults, applied by --tiny unless a flag overrides them (README: "The tiny
# testbed"). Warm-up, then SRT on fresh problems from the same synthetic task.
TINY = dict(model="tiny", train_data="tiny", eval_data="tiny", prompts_per_step=16, samples_per_prompt=16,
            max_prompt_tokens=64, max_new_tokens=64, lr=2e-5, steps=100, eval_every=50, eval_samples=8,
            save_every=50, out_dir="out-tiny", advantage="grpo", kl_coef=0.0, gen_chunk=128,
            micro_batch=128, amp=False, grad_checkpointing=False, device="cpu")


# ------------------------------------------------------------------------------------------------------
# Command line: every Config field is a flag, its docstring is the help.


def field_docs(cls):
    """Docstrings written under dataclass fields (not kept by Python, so read from the source)."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    return {a.target.id: b.value.value for a, b in zip(body, body[1:])
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)}


def parse_bool(s):
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{s}'")


def parse_config(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    docs = field_docs(Config)
    for f in fields(Config):
        if f.type is bool:
            parser.add_argument(f"--{f.name}", type=parse_bool, nargs="?", const=True, default=f.default,
                                help=docs.get(f.name))
        else:
            parser.add_argument(f"--{f.name}", type=f.type, default=f.default, help=docs.get(f.name))
    if "--tiny" in (argv if argv is not None else os.sys.argv[1:]):
        parser.set_defaults(**TINY)
    return Config(**vars(parser.parse_args(argv)))


# ------------------------------------------------------------------------------------------------------
# Data


def load_train_rows(cfg):
    if cfg.train_data == "tiny":
        from model import tiny_task
        return tiny_task(2000, seed=cfg.seed + 1, exclude={r["problem"] for r in evaluation.tiny_heldout()})
    return evaluation.load_rows(cfg.train_data, cfg.train_config, cfg.train_split, cfg.problem_field,
                                cfg.answer_field, need_answer=cfg.label == "gold")


def batch_indices(step, n_rows, batch, seed):
    """Prompt indices of one step: a fresh seeded permutation per epoch, walked in order. A function of
    the step alone, so a resumed run sees exactly the prompts an uninterrupted one would."""
    out = []
    for k in range(step * batch, (step + 1) * batch):
        epoch, i = divmod(k, n_rows)
        perm = list(range(n_rows))
        random.Random(seed * 100_003 + epoch).shuffle(perm)
        out.append(perm[i])
    return out


# ------------------------------------------------------------------------------------------------------
# The algorithm, one function per step of the paper's loop.


def label_and_reward(answers, gold, mode):
    """Steps 3-4 for one prompt. answers: the n extracted answers (None = unparseable).

    SRT and RL with ground truth differ only in where the label comes from (paper §3):
    the majority vote over the group's own parseable answers, or the dataset's answer.
    Returns (label or None, rewards [n], majority count)."""
    maj, count = majority_vote(answers)
    label = maj if mode == "majority" else gold          # <- the one line that makes it self-rewarded
    rewards = [float(a is not None and label is not None and is_equiv(a, label)) for a in answers]
    return label, rewards, count


def advantages(rewards, kind):
    """Step 5. rewards [B, n] -> advantages [B, n], within each prompt's group.
    rloo: A_i = R_i - mean_{j != i} R_j  = n/(n-1) (R_i - mean R); no std (paper v1 App. B.1).
    grpo: A_i = (R_i - mean R) / (std R + 1e-6)."""
    n = rewards.shape[1]
    centered = rewards - rewards.mean(dim=1, keepdim=True)                 # [B, n]
    if kind == "rloo":
        return centered * n / (n - 1)
    if kind == "grpo":
        return centered / (rewards.std(dim=1, keepdim=True) + 1e-6)
    raise ValueError(f"unknown advantage '{kind}' (rloo | grpo)")


def policy_loss(logp, old_logp, ref_logp, adv, mask, clip_eps, kl_coef):
    """Step 6's objective per token, summed (the caller divides by the step's token count).
    logp, old_logp, ref_logp: [b, C]; adv: [b]; mask: [b, C].
    PPO clip: -min(r A, clip(r, 1-eps, 1+eps) A), r = pi/pi_old. With one on-policy update r == 1, so the
    loss value is ~0 by construction while its gradient is the policy gradient -A grad log pi.
    KL: Schulman's k3 estimator exp(ref - logp) - (ref - logp) - 1, >= 0, unbiased for KL(pi || ref)."""
    ratio = torch.exp(logp - old_logp)                                      # [b, C]
    a = adv[:, None]                                                        # [b, 1]
    pg = -torch.min(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a)  # [b, C]
    loss = pg
    kl = torch.zeros_like(logp)
    if ref_logp is not None:
        d = ref_logp - logp
        kl = torch.exp(d) - d - 1                                           # [b, C]
        loss = loss + kl_coef * kl
    clipped = ((ratio - 1).abs() > clip_eps).float()
    stats = {"pg_sum": (pg * mask).sum().item(), "kl_sum": (kl * mask).sum().item(),
             "clip_sum": (clipped * mask).sum().item()}
    return (loss * mask).sum(), stats


def update(model, ref_model, opt, rollouts, adv, cfg, device, amp, pad_id):
    """Step 6: one on-policy update over the step's rollouts, in micro-batches sorted by length, with
    gradient accumulation and one token normaliser for the whole step (token-mean, as verl)."""
    model.train()
    n_tokens = sum(len(r.completion_ids) for r in rollouts)                # the one normaliser
    # A sequence with A = 0 and no KL term contributes no gradient: skip its forward and backward.
    idx = [i for i in range(len(rollouts)) if adv[i] != 0 or ref_model is not None]
    idx.sort(key=lambda i: len(rollouts[i].prompt_ids) + len(rollouts[i].completion_ids))
    sums = {"pg_sum": 0.0, "kl_sum": 0.0, "clip_sum": 0.0, "entropy_sum": 0.0, "trained_tokens": 0}
    opt.zero_grad(set_to_none=True)
    for s in range(0, len(idx), cfg.micro_batch):
        mb = idx[s:s + cfg.micro_batch]
        ids, attn, comp, mask = pack([rollouts[i] for i in mb], pad_id, device)
        mb_adv = adv[mb].to(device)                                          # [b]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logp, entropy = completion_logprobs(model, ids, attn, comp, mask, cfg.temperature,
                                                cfg.logprob_chunk)         # [b, C] each
            ref_logp = None
            if ref_model is not None:
                with torch.no_grad():
                    ref_logp, _ = completion_logprobs(ref_model, ids, attn, comp, mask, cfg.temperature,
                                                      cfg.logprob_chunk)
        # One update per rollout batch: pi_old is the current policy, so no extra forward is needed.
        loss_sum, st = policy_loss(logp, logp.detach(), ref_logp, mb_adv, mask, cfg.clip_eps, cfg.kl_coef)
        (loss_sum / n_tokens).backward()
        for k, v in st.items():
            sums[k] += v
        sums["entropy_sum"] += (entropy * mask).sum().item()
        sums["trained_tokens"] += int(mask.sum())
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
    if not math.isfinite(grad_norm):  # never let one bad batch poison the weights
        tqdm.write(f"warning: non-finite grad norm ({grad_norm}); update skipped")
    elif sums["trained_tokens"] > 0:
        opt.step()
    t = max(sums["trained_tokens"], 1)
    return {"grad_norm": grad_norm, "pg_term": sums["pg_sum"] / max(n_tokens, 1),
            "kl": sums["kl_sum"] / t if ref_model is not None else None,
            "entropy": sums["entropy_sum"] / t, "clip_frac": sums["clip_sum"] / t,
            "trained_seqs": len(idx)}


# ------------------------------------------------------------------------------------------------------
# Checkpoints: save_pretrained folders plus optimizer, step and RNG state, written atomically.


def save_checkpoint(model, tokenizer, opt, step, cfg):
    final, tmp = os.path.join(cfg.out_dir, "ckpt"), os.path.join(cfg.out_dir, "ckpt.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    rng = {"python": random.getstate(), "torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    torch.save({"step": step, "optimizer": opt.state_dict(), "rng": rng, "config": asdict(cfg)},
               os.path.join(tmp, "trainer_state.pt"))
    # Swap in the new one only when it is complete, so a crash mid-write never loses the last checkpoint.
    old = final + ".old"
    if os.path.exists(final):
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(opt, cfg):
    """Restore the optimizer, RNG states and step; the weights were loaded from the same folder."""
    state = torch.load(os.path.join(cfg.out_dir, "ckpt", "trainer_state.pt"), map_location="cpu", weights_only=False)
    opt.load_state_dict(state["optimizer"])
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["step"]


# ------------------------------------------------------------------------------------------------------
# The training loop


def main(cfg):
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    amp = cfg.amp  # bf16 autocast with fp32 master weights (also runs on the CPU, slowly)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    os.makedirs(cfg.out_dir, exist_ok=True)
    with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:
        json.dump(asdict(cfg), f, indent=1)

    # The start policy; for the testbed, warm it up first (supervised, with labels, as the paper's
    # Reasoning Gym runs do) and cache it. After this point no label is used in SRT mode.
    if cfg.model == "tiny":
        from model import tiny_warmup
        cfg.model = tiny_warmup(seed=cfg.seed)
    ckpt = os.path.join(cfg.out_dir, "ckpt")
    if cfg.resume and not os.path.exists(os.path.join(ckpt, "trainer_state.pt")):
        raise SystemExit(f"--resume: no checkpoint at {ckpt}")
    model, tokenizer = load_model(ckpt if cfg.resume else cfg.model, device,
                                  cfg.grad_checkpointing and device.type == "cuda")
    stop_ids = stop_token_ids(model, tokenizer)
    ref_model = None
    if cfg.kl_coef > 0:  # a frozen copy of the *start* model for the KL term, bf16 under autocast
        ref_model = load_model(cfg.model, device)[0].eval().requires_grad_(False)
        if amp:
            ref_model.to(torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    rows = load_train_rows(cfg)
    prompt_ids = encode_prompts(tokenizer, [r["problem"] for r in rows], cfg.max_prompt_tokens)
    keep = [i for i, p in enumerate(prompt_ids) if p is not None]
    if len(keep) < len(rows):
        print(f"filtered {len(rows) - len(keep)} of {len(rows)} training prompts longer than "
              f"{cfg.max_prompt_tokens} tokens")
    rows, prompt_ids = [rows[i] for i in keep], [prompt_ids[i] for i in keep]
    if not rows:
        raise SystemExit(f"no training prompts left from '{cfg.train_data}'")
    eval_sets = evaluation.load_eval_sets(cfg.eval_data, cfg.data_dir, cfg.eval_limit)

    start = load_checkpoint(opt, cfg) if cfg.resume else 0
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params / 1e6:.1f}M parameters on {device} | {len(rows)} training prompts | label={cfg.label} "
          f"| {cfg.prompts_per_step} prompts x {cfg.samples_per_prompt} samples per step | steps {start}->{cfg.steps}")

    def run_eval(step):
        results = evaluation.evaluate_sets(model, tokenizer, eval_sets, k=cfg.eval_samples,
                                           max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                           chunk=cfg.gen_chunk, amp=amp, max_prompt_tokens=cfg.max_prompt_tokens)
        with open(os.path.join(cfg.out_dir, "eval.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, **results}) + "\n")
        tqdm.write(f"eval step {step}: " + " | ".join(
            f"{name} avg@{cfg.eval_samples} {r['avg']:.3f} maj@{cfg.eval_samples} {r['maj']:.3f}"
            for name, r in results.items()))
        return results

    first_eval = run_eval(start) if start == 0 else None
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="SRT" if cfg.label == "majority" else "RL")
    for step in bar:
        t0 = time.time()
        # 1. sample B prompts
        batch = batch_indices(step, len(rows), cfg.prompts_per_step, cfg.seed)
        # 2. roll out n responses per prompt from the current policy
        outs = rollout(model, tokenizer, [prompt_ids[i] for i in batch], cfg.samples_per_prompt,
                       cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.gen_chunk, stop_ids, amp)
        t1 = time.time()
        # 3-4. label each prompt and reward each response
        n = cfg.samples_per_prompt
        answers = [extract_answer(o.text) for o in outs]                  # B*n, prompt-major
        rewards, labelled, m = [], [], {"maj_share": 0.0, "unanimous": 0, "label_acc": [], "reward_acc": []}
        for g, i in enumerate(batch):
            group = answers[g * n:(g + 1) * n]
            label, r, count = label_and_reward(group, rows[i].get("answer"), cfg.label)
            rewards.append(r)
            labelled.append(label is not None)
            m["maj_share"] += count / n
            m["unanimous"] += count == n
            gold = rows[i].get("answer")
            if gold is not None:  # hidden from training in SRT mode; used for logging only
                m["label_acc"].append(float(label is not None and is_equiv(label, gold)))
                true_r = [float(a is not None and is_equiv(a, gold)) for a in group]
                m["reward_acc"].append(sum(x == y for x, y in zip(r, true_r)) / n)
        R = torch.tensor(rewards)                                            # [B, n]
        # 5. advantages; a prompt with no parseable answer has no label and is left out of the loss
        adv = advantages(R, cfg.advantage)                                  # [B, n]
        keep_groups = torch.tensor(labelled).repeat_interleave(n)           # [B*n]
        train_outs = [o for o, k in zip(outs, keep_groups) if k]
        t2 = time.time()
        # 6. one on-policy update
        stats = update(model, ref_model, opt, train_outs, adv.flatten()[keep_groups], cfg, device, amp,
                       tokenizer.pad_token_id) \
            if train_outs else {"grad_norm": 0.0, "pg_term": 0.0, "kl": None, "entropy": None,
                                "clip_frac": 0.0, "trained_seqs": 0}
        opt.zero_grad(set_to_none=True)  # free the gradients (5.75 GiB for 1.5B) before the next rollout's KV cache
        t3 = time.time()

        # metrics
        B = len(batch)
        gen_tokens = sum(len(o.completion_ids) for o in outs)
        train_tokens = sum(len(o.prompt_ids) + len(o.completion_ids) for o in train_outs)
        flops = 2 * n_params * sum(len(o.prompt_ids) + len(o.completion_ids) for o in outs) + 6 * n_params * train_tokens
        metrics = {
            "step": step + 1, "pseudo_reward" if cfg.label == "majority" else "reward": R.mean().item(),
            "maj_share": m["maj_share"] / B, "unanimous": m["unanimous"] / B,
            "no_answer": sum(a is None for a in answers) / len(answers),
            "unlabelled": 1 - sum(labelled) / B,
            "truncated": sum(o.truncated for o in outs) / len(outs), "resp_len": gen_tokens / len(outs),
            "label_acc": sum(m["label_acc"]) / len(m["label_acc"]) if m["label_acc"] else None,
            "reward_acc": sum(m["reward_acc"]) / len(m["reward_acc"]) if m["reward_acc"] else None,
            **stats, "lr": cfg.lr, "rollout_s": t1 - t0, "reward_s": t2 - t1, "update_s": t3 - t2,
            "tok_per_s": gen_tokens / (t1 - t0),
            "mfu": flops / (t3 - t0) / cfg.peak_flops if device.type == "cuda" else None,
        }
        with open(os.path.join(cfg.out_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(metrics) + "\n")
        bar.set_postfix({k: f"{metrics[k]:.3g}" for k in ("pseudo_reward", "reward", "maj_share", "label_acc",
                                                          "entropy", "kl", "grad_norm") if metrics.get(k) is not None})

        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            run_eval(step + 1)
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            save_checkpoint(model, tokenizer, opt, step + 1, cfg)

    last_eval = run_eval(cfg.steps) if start < cfg.steps else None
    if first_eval and last_eval:
        for name in last_eval:
            a, b = first_eval[name], last_eval[name]
            print(f"{name}: avg@{cfg.eval_samples} {a['avg']:.3f} -> {b['avg']:.3f} ({100 * (b['avg'] - a['avg']):+.1f} pts)"
                  f" | maj@{cfg.eval_samples} {a['maj']:.3f} -> {b['maj']:.3f}")
    return last_eval


if __name__ == "__main__":
    main(parse_config())
