"""Self-Rewarded Training (SRT): online RL on math problems with no labels.

"Can Large Reasoning Models Self-Train?" (Shafayat, Tajwar, Salakhutdinov, Schneider, Zanette, 2025;
arXiv 2505.21444). Each step, in the order of the paper's Algorithm 1:
    1. sample B prompts
    2. roll out n responses per prompt from the current policy (temperature 1.0)
    3. label each prompt: the majority answer of its own samples (SRT), or the gold answer (RL)
    4. reward each response 1 if its answer is equivalent to the label, else 0
    5. advantages within each group (RLOO or GRPO)
    6. one on-policy PPO-clipped update, token-mean loss, optional k3 KL to the start model
These are the defaults; each choice the paper and its peers vary is one flag (README: "Ablation knobs").
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
import re
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields

import torch
from tqdm import tqdm

import eval as evaluation
from model import (completion_logprobs, encode_prompts, load_model, pack, rollout, set_gradient_checkpointing,
                   stop_token_ids)
from rewards import extract_answer, is_equiv, majority_vote, vote_classes


@dataclass
class Config:
    # --- model and data
    model: str = "Qwen/Qwen2.5-Math-1.5B"
    """HF hub id or local folder of the start policy (the paper: Qwen2.5-Math-7B; 1.5B fits one GPU)"""
    tiny: bool = False
    """offline CPU testbed: warm up a tiny model on synthetic addition, then run SRT on it"""
    warmup_target: float = 0.8
    """testbed only: the warm-up stops at this greedy validation accuracy (a weaker start leaves more to learn)"""
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
    """'majority' = SRT, the label is the group's own majority answer; 'gold' = RL with the true answer;
    'offline' = the fixed start model's majority answer, computed once before training (paper §5)"""
    advantage: str = "rloo"
    """'rloo': R_i - mean of the others, no std (paper v1); 'grpo': group z-score (GRPO, TTRL, paper v2);
    'drgrpo': R_i - group mean, no std (Dr. GRPO). grpo vs drgrpo is std scaling on/off"""
    reward_shape: str = "binary"
    """'binary': 1 if the answer agrees with the label (paper-notes §1.1); 'soft': the vote share of the
    response's answer in its group (the SRT code's soft_reward, off in the paper; SRT only)"""
    min_majority_share: float = 0.0
    """SRT only: a prompt whose majority share is below this gets no label, so reward 0, no KL, no gradient
    (the SRT code's self_consistency_threshold: 0.0 in the paper's script, 0.6 in its yaml)"""
    prompts_per_step: int = 16
    """B, prompts per RL step (paper: 16)"""
    samples_per_prompt: int = 16
    """n, responses per prompt that train (paper: 32, halved to fit one GPU; they also vote)"""
    votes_per_prompt: int = 0
    """responses sampled per prompt that vote; a random samples_per_prompt of them train (TTRL: 64 vote,
    32 train). 0: the same as samples_per_prompt, every sample votes and trains (the paper)"""
    max_prompt_tokens: int = 1024
    """longer prompts are filtered out at load time (paper: 1024)"""
    max_new_tokens: int = 3072
    """response length limit; a response that hits it is truncated (paper: 3072)"""
    temperature: float = 1.0
    """sampling temperature for rollouts; log-probs use the same one (paper: 1.0)"""
    top_p: float = 1.0
    """nucleus sampling for rollouts (paper: 1.0, i.e. off)"""
    clip_eps_low: float = 0.2
    """PPO clip: the ratio is clipped below at 1 - this; inactive with one on-policy update (paper: 0.2)"""
    clip_eps_high: float = 0.2
    """PPO clip: the ratio is clipped above at 1 + this (paper: 0.2; DAPO's clip-higher: 0.28)"""
    ppo_epochs: int = 1
    """passes over each rollout batch; with minibatches, updates per batch = ppo_epochs x minibatches
    (paper: 1, fully on-policy)"""
    minibatches: int = 1
    """optimizer steps per pass, each on a prompt-major slice of the batch (paper: 1; TTRL: 8, one prompt each)"""
    kl_coef: float = 0.001
    """beta of the KL to the frozen start model; 0 skips the reference model (paper: 1e-3)"""
    kl_in: str = "loss"
    """where the KL goes: 'loss' (TTRL, GRPO, paper v2 GRPO runs) or 'reward', beta x the response's summed
    per-token KL subtracted from its reward before the advantage (the paper's RLOO runs, paper-notes §1.2)"""
    kl_estimator: str = "k3"
    """'k3' = exp(ref - logp) - (ref - logp) - 1 (paper: verl's low_var_kl); 'k1' = logp - ref"""
    entropy_coef: float = 0.0
    """entropy bonus alpha: the loss subtracts alpha x the policy's per-token entropy (paper-notes §1.2:
    verl's default 0.001 may have applied; v2 App. G.5: a positive bonus speeds up collapse)"""
    loss_agg: str = "token-mean"
    """'token-mean' over the step's tokens (verl, the paper's code); 'seq-mean' per response, then over
    responses (original GRPO); 'constant': token sum / (responses x max_new_tokens) (Dr. GRPO)"""
    lr: float = 1e-6
    """AdamW learning rate, constant (paper: 1e-6)"""
    weight_decay: float = 0.01
    """AdamW weight decay (paper: 0.01)"""
    grad_clip: float = 1.0
    """max global grad norm (paper: 1.0)"""
    steps: int = 400
    """RL steps to run (paper: SRT peaks at ~300-600 steps, then may collapse)"""
    # --- mitigations of reward hacking (paper §5; paper-notes §4)
    curriculum: float = 1.0
    """keep this easiest fraction of the training prompts, ranked label-free by the start model's majority share (paper: 1/3)"""
    filter_share: float = 0.0
    """online filter: drop prompts whose majority share is below this and refill the batch (paper v2 App. I.7: 0.6; 0 = off)"""
    teacher_samples: int = 16
    """samples per prompt of the start model's one-off vote for --label offline and --curriculum (paper: 32)"""
    val_data: str = ""
    """small labelled hold-out for early stopping, named like eval_data (paper: 1% of DAPO; testbed: 'tiny-val')"""
    early_stop: int = 0
    """stop when val_data avg@k has not improved for this many evals; the best model is kept in out_dir/best (0 = off)"""
    collapse_alarm: float = 0.0
    """label-free alarm: stop when this share of a step's prompts have one same majority answer (paper §4.1.1; 0 = off)"""
    ttt: bool = False
    """test-time training (TTRL): train with SRT on the eval sets' own problems, their answers hidden from training"""
    # --- evaluation and checkpoints
    eval_every: int = 50
    """evaluate on the held-out sets every this many steps (0: only at start and end)"""
    eval_samples: int = 4
    """k, samples per held-out problem for avg@k and maj@k (paper: 32)"""
    eval_limit: int = 0
    """evaluate at most this many problems per held-out set (0: all)"""
    save_every: int = 50
    """write a checkpoint every this many steps (and at the end)"""
    keep_ckpts: int = 2
    """checkpoints kept: out_dir/ckpt is the newest, older ones are out_dir/ckpt-<step> (0: keep all)"""
    out_dir: str = "out"
    """checkpoint, metrics.jsonl and eval results go here"""
    resume: bool = False
    """continue from the newest checkpoint in out_dir: model, optimizer, step, RNG states and data order"""
    max_nonfinite: int = 3
    """stop the run, with a checkpoint, after this many consecutive steps skipped for a NaN/inf"""
    wandb: bool = False
    """also log metrics and eval results to Weights & Biases (pip install wandb; project $WANDB_PROJECT)"""
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


def check_config(cfg):
    """Stop before any model is loaded when the ablation knobs are misspelt or contradict each other."""
    choices = {"label": ("majority", "gold", "offline"), "advantage": ("rloo", "grpo", "drgrpo"),
               "reward_shape": ("binary", "soft"),
               "kl_in": ("loss", "reward"), "kl_estimator": ("k1", "k3"),
               "loss_agg": ("token-mean", "seq-mean", "constant")}
    for name, ok in choices.items():
        if getattr(cfg, name) not in ok:
            raise SystemExit(f"--{name} {getattr(cfg, name)}: expected one of {' | '.join(ok)}")
    if cfg.label != "majority" and (cfg.reward_shape != "binary" or cfg.min_majority_share > 0):
        raise SystemExit("--reward_shape soft and --min_majority_share are SRT knobs: they need --label majority")
    if cfg.votes_per_prompt and cfg.votes_per_prompt < cfg.samples_per_prompt:
        raise SystemExit(f"--votes_per_prompt {cfg.votes_per_prompt} < --samples_per_prompt "
                         f"{cfg.samples_per_prompt}: the trained responses are a subset of the voters")
    if cfg.ppo_epochs < 1 or cfg.minibatches < 1:
        raise SystemExit("--ppo_epochs and --minibatches must be >= 1")
    if cfg.kl_in == "reward" and cfg.kl_coef > 0 and cfg.advantage == "grpo":
        print("warning: --kl_in reward with --advantage grpo: in a unanimous group the std is only the KL's "
              "spread, so the z-score blows tiny KL differences up to unit advantages (rloo/drgrpo do not)")


# ------------------------------------------------------------------------------------------------------
# Data


def load_train_rows(cfg):
    if cfg.ttt:  # test-time training: the held-out problems themselves (answers only logged in SRT mode)
        return [r for rows in evaluation.load_eval_sets(cfg.eval_data, cfg.data_dir, cfg.eval_limit).values()
                for r in rows]
    if cfg.train_data == "tiny":
        from model import tiny_task
        held_out = evaluation.tiny_heldout() + evaluation.load_eval_sets("tiny-val")["tiny-val"]
        return tiny_task(2000, seed=cfg.seed + 1, exclude={r["problem"] for r in held_out})
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


def teacher_votes(model, tokenizer, prompt_ids, cfg, stop_ids, amp):
    """The start model's majority answer and majority share for every training prompt, computed once before
    training and cached in out_dir (paper §5): the fixed teacher's offline labels, and the label-free
    difficulty ranking of the curriculum (a high share means an easy prompt)."""
    path = os.path.join(cfg.out_dir, "teacher.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    k, votes, per_call = cfg.teacher_samples, [], max(1, cfg.gen_chunk // cfg.teacher_samples)
    for s in tqdm(range(0, len(prompt_ids), per_call), desc="teacher votes", leave=False):
        outs = rollout(model, tokenizer, prompt_ids[s:s + per_call], k, cfg.max_new_tokens, cfg.temperature,
                       cfg.top_p, cfg.gen_chunk, stop_ids, amp)
        for g in range(len(outs) // k):
            label, count = majority_vote([extract_answer(o.text) for o in outs[g * k:(g + 1) * k]])
            votes.append({"label": label, "share": count / k})
    with open(path + ".tmp", "w") as f:
        json.dump(votes, f)
    os.replace(path + ".tmp", path)
    return votes


def easiest(votes, fraction):
    """The label-free curriculum (paper §5): indices of the `fraction` of prompts with the highest start-model
    majority share, in dataset order (ties keep dataset order)."""
    ranked = sorted(range(len(votes)), key=lambda i: -votes[i]["share"])
    return sorted(ranked[:max(1, round(fraction * len(votes)))])


FILTER_ROUNDS = 4  # the online filter rolls out at most this many candidate batches per step


def online_filter(batch, outs, roll, step, n_rows, cfg):
    """The online curriculum (paper v2 App. I.7, DAPO-style): drop prompts whose majority share is below
    filter_share, and refill with fresh prompts until B remain (at most FILTER_ROUNDS rollouts; a short batch
    trains as it is, and if none passes, the most agreed-on prompt of the last round trains alone).
    Refills come from their own seeded stream, so a resumed run draws the same ones."""
    n, B = len(outs) // len(batch), cfg.prompts_per_step
    kept, kept_outs = [], []
    for r in range(FILTER_ROUNDS):
        if r:
            batch = batch_indices(step * FILTER_ROUNDS + r, n_rows, B, cfg.seed + 1)
            outs = roll(batch)
        shares = [majority_vote([extract_answer(o.text) for o in outs[g * n:(g + 1) * n]])[1] / n
                  for g in range(len(batch))]
        for g, i in enumerate(batch):
            if shares[g] >= cfg.filter_share:
                kept.append(i)
                kept_outs += outs[g * n:(g + 1) * n]
        if len(kept) >= B:
            break
    if not kept:
        g = max(range(len(batch)), key=lambda g: shares[g])
        kept, kept_outs = [batch[g]], outs[g * n:(g + 1) * n]
    return kept[:B], kept_outs[:B * n]


def train_subset(step, n_groups, n, k, seed):
    """Which k of each group's n voters train (TTRL votes with 64 and trains on 32) -> n_groups lists of k
    indices. A uniformly random subset drawn independently of the answers, so the trained responses are an
    unbiased sample of the group; the first k would be too, but the vote's tie-break favours early samples,
    which would tilt rewards up. Seeded by the step, like batch_indices, so a resumed run draws the same."""
    if k == n:
        return [list(range(n))] * n_groups
    rng = random.Random(f"train-subset {seed} {step}")
    return [sorted(rng.sample(range(n), k)) for _ in range(n_groups)]


# ------------------------------------------------------------------------------------------------------
# The algorithm, one function per step of the paper's loop.


def label_and_reward(answers, fixed, mode, shape="binary", min_share=0.0):
    """Steps 3-4 for one prompt. answers: the n extracted answers (None = unparseable); fixed: the prompt's
    label from outside the policy (the dataset's gold answer, or the offline teacher's majority answer).

    SRT and RL with ground truth differ only in where the label comes from (paper §3):
    the majority vote over the group's own parseable answers, or a fixed answer.
    SRT ablations (paper-notes §1.1): a majority share below min_share leaves the prompt unlabelled, and
    the 'soft' shape rewards each response with its answer's vote share instead of 0/1 agreement.
    Returns (label or None, rewards [n], majority answer, majority count)."""
    classes = vote_classes(answers)                      # equivalent answers share a class, as in the vote
    maj, count = majority_vote(answers, classes)
    label = maj if mode == "majority" else fixed         # <- the one line that makes it self-rewarded
    if mode == "majority" and count / len(answers) < min_share:
        label = None                                     # not confident enough to be trusted as a label
    if label is not None and shape == "soft":
        return label, [classes.count(c) / len(answers) if c is not None else 0.0 for c in classes], maj, count
    first = {}
    for a, c in zip(answers, classes):
        first.setdefault(c, a)
    # one comparison per distinct answer, not per response: each costs up to the grader's time cap
    agrees = {c: c is not None and label is not None and is_equiv(a, label) for c, a in first.items()}
    return label, [float(agrees[c]) for c in classes], maj, count


def kl_estimate(logp, ref_logp, estimator):
    """Per-token estimate of KL(pi || ref) from tokens sampled from pi: logp, ref_logp [b, C] -> [b, C].
    k1 = logp - ref: unbiased but noisy and often negative. In the loss its expected gradient is zero
    (E_pi[grad log pi] = 0), so k1 only does something in the reward.
    k3 = exp(ref - logp) - (ref - logp) - 1 (Schulman): unbiased, >= 0, low variance (verl's low_var_kl)."""
    d = ref_logp - logp
    if estimator == "k1":
        return -d
    if estimator == "k3":
        return torch.exp(d) - d - 1
    raise ValueError(f"unknown kl_estimator '{estimator}' (k1 | k3)")


def reward_minus_kl(R, trained, old_logps, ref_logps, cfg):
    """The KL in the reward (--kl_in reward; the paper's RLOO runs, paper-notes §1.2). R: [B, k] rewards;
    trained: [B*k] bool, the rollouts of labelled prompts, whose per-token log-probs under the sampling
    policy and the start model are old_logps and ref_logps. -> (R - beta * KL per response [B, k], mean
    per-token KL). The paper subtracts beta * KL_t from each token's reward, but the advantage is per
    sequence, so only the sum R_i - beta * sum_t KL_it counts: the KL acts through a REINFORCE term that
    every token of a response shares, longer responses pay more, and the group baseline keeps only the
    KL's differences within a group. Unlabelled prompts get no KL (the SRT code masks it)."""
    kl_tok = [kl_estimate(o, r, cfg.kl_estimator) for o, r in zip(old_logps, ref_logps)]  # [len] each
    R = R.clone()
    R.view(-1)[trained] -= cfg.kl_coef * torch.stack([x.sum() for x in kl_tok])        # [B, k]
    return R, torch.cat(kl_tok).mean().item()


def advantages(rewards, kind):
    """Step 5. rewards [B, n] -> advantages [B, n], within each prompt's group.
    rloo: A_i = R_i - mean_{j != i} R_j  = n/(n-1) (R_i - mean R); no std (paper v1 App. B.1).
    grpo: A_i = (R_i - mean R) / (std R + 1e-6).
    drgrpo: A_i = R_i - mean R (Dr. GRPO: no std, which up-weights groups of near-unanimous answers in
    grpo). So rloo = drgrpo x n/(n-1): rloo vs grpo is, up to that constant, std scaling off vs on."""
    n = rewards.shape[1]
    centered = rewards - rewards.mean(dim=1, keepdim=True)                 # [B, n]
    if kind == "rloo":
        return centered * n / (n - 1)
    if kind == "grpo":
        return centered / (rewards.std(dim=1, keepdim=True) + 1e-6)
    if kind == "drgrpo":
        return centered
    raise ValueError(f"unknown advantage '{kind}' (rloo | grpo | drgrpo)")


def policy_loss(logp, old_logp, ref_logp, entropy, adv, mask, cfg):
    """Step 6's objective per token -> loss [b, C] (aggregate() turns it into the step's scalar) and stats.
    logp, old_logp, entropy: [b, C]; ref_logp: [b, C], or None when the KL is not in the loss; adv: [b].
    PPO clip: -min(r A, clip(r, 1-eps_low, 1+eps_high) A), r = pi/pi_old. With one on-policy update r == 1,
    so the loss value is ~0 by construction while its gradient is the policy gradient -A grad log pi.
    eps_high > eps_low is DAPO's clip-higher: unlikely tokens with A > 0 may grow more before clipping.
    Then + beta KL (KL in the loss, as TTRL and GRPO) and - alpha H (entropy bonus)."""
    ratio = torch.exp(logp - old_logp)                                      # [b, C]
    a = adv[:, None]                                                        # [b, 1]
    unclipped, clipped = ratio * a, ratio.clamp(1 - cfg.clip_eps_low, 1 + cfg.clip_eps_high) * a  # [b, C]
    pg = -torch.min(unclipped, clipped)                                     # [b, C]
    loss = pg
    kl = torch.zeros_like(logp)
    if ref_logp is not None:
        kl = kl_estimate(logp, ref_logp, cfg.kl_estimator)                  # [b, C]
        loss = loss + cfg.kl_coef * kl
    if cfg.entropy_coef:
        loss = loss - cfg.entropy_coef * entropy                           # entropy carries a gradient here
    with torch.no_grad():
        log_ratio = logp - old_logp
        stats = {"pg_sum": (pg * mask).sum().item(), "kl_sum": (kl * mask).sum().item(),
                 "clip_sum": ((clipped < unclipped).float() * mask).sum().item(),  # tokens the clip zeroed
                 "approx_kl_sum": (((ratio - 1) - log_ratio) * mask).sum().item()}  # k3 of pi_old vs pi
    return loss, stats


def aggregate(loss, mask, kind, n_tokens, n_seqs, max_new_tokens):
    """This micro-batch's share of one update's scalar loss. loss, mask: [b, C]; n_tokens and n_seqs
    count the whole update's responses, so micro-batching never changes the objective.
    token-mean (verl, the paper's code): every token weighs the same, so long responses weigh more;
    seq-mean (original GRPO): a mean per response, then over responses, so a short response's tokens
    weigh more (Dr. GRPO's length bias); constant (Dr. GRPO): the token sum / (n_seqs x max_new_tokens)."""
    if kind == "token-mean":
        return (loss * mask).sum() / n_tokens
    if kind == "seq-mean":
        return ((loss * mask).sum(1) / mask.sum(1)).sum() / n_seqs
    if kind == "constant":
        return (loss * mask).sum() / (n_seqs * max_new_tokens)
    raise ValueError(f"unknown loss_agg '{kind}' (token-mean | seq-mean | constant)")


@torch.no_grad()
def sequence_logprobs(model, rollouts, cfg, device, amp, pad_id):
    """Per-token log-probs of each rollout's completion, no gradient -> [len(completion_ids)] per rollout.
    Used before the first update: the sampling policy's (pi_old, for several updates or the KL in the
    reward) and the reference model's (the KL in the reward)."""
    out = []
    for s in range(0, len(rollouts), cfg.micro_batch):
        mb = rollouts[s:s + cfg.micro_batch]
        ids, attn, comp, mask = pack(mb, pad_id, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logp, _ = completion_logprobs(model, ids, attn, comp, mask, cfg.temperature, cfg.logprob_chunk)
        out += [lp[:len(r.completion_ids)].float().cpu() for lp, r in zip(logp, mb)]
    return out


def update(model, ref_model, opt, rollouts, adv, cfg, device, amp, pad_id, old_logps=None):
    """Step 6: ppo_epochs x minibatches optimizer steps over the step's rollouts (the paper: 1 x 1, one
    on-policy update). Each optimizer step covers a prompt-major slice of the rollouts, in micro-batches
    sorted by length, with gradient accumulation and one normaliser for the whole slice (loss_agg).
    ref_model: given when the KL is in the loss. old_logps: the sampling policy's per-token log-probs,
    needed for every update after the first; None for one update, where pi_old is the current policy
    and no extra forward is needed."""
    model.train()
    n_updates = cfg.ppo_epochs * cfg.minibatches
    assert old_logps is not None or n_updates == 1, "several updates need the sampling policy's log-probs"
    N = len(rollouts)
    sums = {"pg_sum": 0.0, "kl_sum": 0.0, "clip_sum": 0.0, "approx_kl_sum": 0.0, "entropy_sum": 0.0,
            "trained_tokens": 0, "norm_tokens": 0}
    grad_norms, trained, skipped = [], set(), None
    for _ in range(cfg.ppo_epochs):
        for k in range(cfg.minibatches):
            part = range(k * N // cfg.minibatches, (k + 1) * N // cfg.minibatches)  # prompt-major slice
            n_tokens = sum(len(rollouts[i].completion_ids) for i in part)          # the one normaliser
            # A sequence with A = 0, no KL and no entropy term contributes no gradient: skip it.
            idx = [i for i in part if adv[i] != 0 or ref_model is not None or cfg.entropy_coef]
            idx.sort(key=lambda i: len(rollouts[i].prompt_ids) + len(rollouts[i].completion_ids))
            opt.zero_grad(set_to_none=True)
            mb_tokens, bad = 0, None
            for s in tqdm(range(0, len(idx), cfg.micro_batch), desc="update", leave=False, disable=None):
                mb = idx[s:s + cfg.micro_batch]
                ids, attn, comp, mask = pack([rollouts[i] for i in mb], pad_id, device)
                mb_adv = adv[mb].to(device)                                          # [b]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    logp, entropy = completion_logprobs(model, ids, attn, comp, mask, cfg.temperature,
                                                        cfg.logprob_chunk, entropy_grad=bool(cfg.entropy_coef))
                    ref_logp = None
                    if ref_model is not None:
                        with torch.no_grad():
                            ref_logp, _ = completion_logprobs(ref_model, ids, attn, comp, mask, cfg.temperature,
                                                              cfg.logprob_chunk)
                # One update: pi_old is the current policy, so no extra forward is needed.
                old_logp = logp.detach() if old_logps is None else torch.nn.utils.rnn.pad_sequence(
                    [old_logps[i] for i in mb], batch_first=True).to(device)        # [b, C]
                loss, st = policy_loss(logp, old_logp, ref_logp, entropy, mb_adv, mask, cfg)
                loss = aggregate(loss, mask, cfg.loss_agg, n_tokens, len(part), cfg.max_new_tokens)
                if not math.isfinite(loss.item()):
                    bad = "non-finite loss"
                loss.backward()
                for key, v in st.items():
                    sums[key] += v
                sums["entropy_sum"] += (entropy.detach() * mask).sum().item()
                mb_tokens += int(mask.sum())
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
            if bad is None and not math.isfinite(grad_norm):
                bad = "non-finite grad norm"
            if bad:  # never let one bad batch poison the weights (or AdamW's moments): no opt.step
                tqdm.write(f"warning: {bad} (grad norm {grad_norm}); update skipped")
                skipped = bad
            elif mb_tokens > 0:
                opt.step()
            grad_norms.append(grad_norm)
            sums["trained_tokens"] += mb_tokens
            sums["norm_tokens"] += n_tokens
            trained.update(idx)
    t = max(sums["trained_tokens"], 1)
    return {"grad_norm": sum(grad_norms) / len(grad_norms),
            "pg_term": sums["pg_sum"] / max(sums["norm_tokens"], 1),
            "kl": sums["kl_sum"] / t if ref_model is not None else None,
            "entropy": sums["entropy_sum"] / t, "clip_frac": sums["clip_sum"] / t,
            "approx_kl": sums["approx_kl_sum"] / t, "trained_seqs": len(trained), "skipped": skipped}


# ------------------------------------------------------------------------------------------------------
# Faults: steps that must not update, out-of-memory hints, stop signals (README: "Faults and resume").


def skip_reason(R, labelled):
    """Why this step should take no update, or None. R: rewards [B, n]; labelled: [B] bools.
    Non-finite rewards would poison the weights. A batch where every group's rewards are equal (all agree
    with the majority: unanimous) or that has no label (no sample answered) has zero advantage everywhere:
    an update would only apply the KL pull and weight decay, so it is skipped."""
    if not torch.isfinite(R).all():
        return "non-finite rewards"
    flat = (R == R[:, :1]).all(dim=1)                                      # [B]
    if flat.all():
        return f"no learning signal: every group's rewards are equal ({sum(not x for x in labelled)} with no answer)"
    return None


def no_update(reason):
    tqdm.write(f"no update: {reason}")
    return {"grad_norm": 0.0, "pg_term": 0.0, "kl": None, "entropy": None, "clip_frac": 0.0, "approx_kl": 0.0,
            "trained_seqs": 0, "skipped": reason}


# What to lower when a phase runs out of GPU memory, first knob first (README: memory budget).
OOM_KNOBS = {"generation": ("gen_chunk", "max_new_tokens"),
             "update": ("micro_batch", "logprob_chunk", "max_new_tokens")}


@contextmanager
def oom_hint(phase, cfg):
    """Turn a CUDA out-of-memory error into the flag to lower, instead of a raw trace."""
    try:
        yield
    except torch.OutOfMemoryError:
        knobs = ", then ".join(f"--{k} (now {getattr(cfg, k)})" for k in OOM_KNOBS[phase])
        raise SystemExit(f"out of GPU memory in {phase}: lower {knobs}. "
                         f"--resume continues from the last checkpoint in {cfg.out_dir}") from None


def progress(total, desc):
    """A transient bar for one phase: cleared when done, off when stderr is not a terminal."""
    return tqdm(total=total, desc=desc, leave=False, disable=None)


def catch_stop_signals():
    """Ctrl-C or SIGTERM (a preempted cloud machine) asks the loop to stop at the end of the current step,
    save a checkpoint and exit, so --resume continues exactly. A second signal quits at once (the last
    checkpoint stands). Returns the list of signals received and a function restoring the old handlers."""
    got, sigs = [], (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        return got, lambda: None

    def handler(signum, frame):
        if got:
            raise KeyboardInterrupt
        got.append(signal.Signals(signum).name)
        tqdm.write(f"{got[0]}: stopping after this step with a checkpoint (send it again to quit now)")

    old = [signal.signal(s, handler) for s in sigs]
    return got, lambda: [signal.signal(s, h) for s, h in zip(sigs, old)]


def halt_reason(stop, nonfinite_streak, cfg):
    if stop:
        return f"stopped by {stop[0]}"
    if nonfinite_streak >= cfg.max_nonfinite > 0:
        return (f"{nonfinite_streak} consecutive steps had a NaN/inf (loss, rewards or grad norm; the weights "
                f"were never updated with it): try a lower --lr, or --amp false to rule out bf16")
    return None


# ------------------------------------------------------------------------------------------------------
# Logging: metrics.jsonl always, Weights & Biases when asked for.


def open_wandb(cfg):
    """--wandb: a W&B run, imported only when asked for (wandb is optional)."""
    if not cfg.wandb:
        return None
    try:
        import wandb
    except ImportError:
        raise SystemExit("--wandb needs the wandb package: pip install wandb") from None
    return wandb.init(project=os.environ.get("WANDB_PROJECT", "selftrain"),
                      name=os.path.basename(os.path.abspath(cfg.out_dir)), config=asdict(cfg))


def log_row(cfg, file, row, wb, prefix=""):
    """Append row to out_dir/<file>; with --wandb log the same numbers (a nested dict {set: {avg}} as set/avg)."""
    with open(os.path.join(cfg.out_dir, file), "a") as f:
        f.write(json.dumps(row) + "\n")
    if wb is not None:
        flat = {}
        for k, v in row.items():
            flat.update({f"{prefix}{k}/{kk}": vv for kk, vv in v.items()} if isinstance(v, dict) else {prefix + k: v})
        wb.log({k: v for k, v in flat.items() if v is not None and k != prefix + "step"}, step=row["step"])


# ------------------------------------------------------------------------------------------------------
# Checkpoints: save_pretrained folders plus optimizer, step and RNG state, written atomically.
# out_dir/ckpt is always the newest; the ones before it are renamed out_dir/ckpt-<step>. The lr is constant
# (paper), so there is no scheduler state, and numpy draws no random numbers here, so none is stored.


def checkpoints(out_dir):
    """Complete checkpoints in out_dir as (step, path), oldest first. trainer_state.json is written last
    and a folder is only renamed into place once complete, so ckpt.tmp (a crashed save) never counts."""
    found = []
    for name in sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []:
        state = os.path.join(out_dir, name, "trainer_state.json")
        if re.fullmatch(r"ckpt(-\d+)?", name) and os.path.exists(state):
            with open(state) as f:
                found.append((json.load(f)["step"], os.path.join(out_dir, name)))
    return sorted(found)


def save_model(model, tokenizer, path, trainer_state=None):
    """Write a save_pretrained folder (plus the trainer state, its .json last, marking it complete) to
    path.tmp and return it; the caller renames it into place, so a crash mid-write never loses the last one."""
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if trainer_state is not None:
        torch.save(trainer_state, os.path.join(tmp, "trainer_state.pt"))
        with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
            json.dump({"step": trainer_state["step"]}, f)
    return tmp


def save_checkpoint(model, tokenizer, opt, step, cfg):
    rng = {"python": random.getstate(), "torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    final = os.path.join(cfg.out_dir, "ckpt")
    tmp = save_model(model, tokenizer, final,
                     {"step": step, "optimizer": opt.state_dict(), "rng": rng, "config": asdict(cfg)})
    # The previous newest becomes ckpt-<its step>, and the oldest beyond keep_ckpts are deleted.
    if os.path.exists(final):
        with open(os.path.join(final, "trainer_state.json")) as f:
            os.replace(final, f"{final}-{json.load(f)['step']}")
    os.replace(tmp, final)
    older = [path for _, path in checkpoints(cfg.out_dir) if path != final]
    for path in older[:max(len(older) - cfg.keep_ckpts + 1, 0)] if cfg.keep_ckpts else []:
        shutil.rmtree(path)


def checkpoint_to_resume(cfg):
    """With --resume, the newest complete checkpoint in out_dir; without, None. A fresh run refuses an
    out_dir holding an earlier run's checkpoints: its own saves would rotate them away."""
    found = checkpoints(cfg.out_dir)
    if cfg.resume and not found:
        raise SystemExit(f"--resume: no checkpoint in {cfg.out_dir}")
    if found and not cfg.resume:
        raise SystemExit(f"{cfg.out_dir} holds checkpoints of an earlier run (newest: step {found[-1][0]}): "
                         f"add --resume to continue it, or choose another --out_dir")
    return found[-1][1] if found else None


def load_checkpoint(opt, path):
    """Restore the optimizer, RNG states and step; the weights were loaded from the same folder."""
    state = torch.load(os.path.join(path, "trainer_state.pt"), map_location="cpu", weights_only=False)
    opt.load_state_dict(state["optimizer"])
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["step"]


# ------------------------------------------------------------------------------------------------------
# The training loop


def main(cfg):
    check_config(cfg)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    amp = cfg.amp  # bf16 autocast with fp32 master weights (also runs on the CPU, slowly)
    ckpt = checkpoint_to_resume(cfg)  # None for a fresh run
    os.makedirs(cfg.out_dir, exist_ok=True)
    with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:
        json.dump(asdict(cfg), f, indent=1)

    # The start policy; for the testbed, warm it up first (supervised, with labels, as the paper's
    # Reasoning Gym runs do) and cache it. After this point no label is used in SRT mode.
    if cfg.model == "tiny":
        from model import tiny_warmup
        cfg.model = tiny_warmup(seed=cfg.seed, target=cfg.warmup_target)
    random.seed(cfg.seed)  # seeded after the warm-up, so a run that had to build it equals one that found it cached
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_model(ckpt or cfg.model, device,
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
    # Mitigations that need the start model's own votes, taken once before training (paper §5).
    if cfg.label == "offline" or cfg.curriculum < 1:
        votes = teacher_votes(model, tokenizer, prompt_ids, cfg, stop_ids, amp)
        for r, v in zip(rows, votes):
            r["teacher"] = v["label"]                  # offline labels: a fixed teacher, never updated
        if cfg.curriculum < 1:
            easy = easiest(votes, cfg.curriculum)
            print(f"curriculum: kept the {len(easy)} easiest of {len(rows)} prompts (start-model majority share "
                  f">= {min(votes[i]['share'] for i in easy):.2f})")
            rows, prompt_ids = [rows[i] for i in easy], [prompt_ids[i] for i in easy]
    eval_sets = evaluation.load_eval_sets(cfg.eval_data, cfg.data_dir, cfg.eval_limit)
    val_sets = evaluation.load_eval_sets(cfg.val_data, cfg.data_dir, cfg.eval_limit) if cfg.val_data else {}
    if cfg.early_stop and not val_sets:
        raise SystemExit("--early_stop needs a labelled hold-out: --val_data")

    start = load_checkpoint(opt, ckpt) if ckpt else 0
    wb = open_wandb(cfg)
    stop, restore_signals = catch_stop_signals()  # Ctrl-C / SIGTERM: finish the step, save, exit
    nonfinite_streak = 0
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params / 1e6:.1f}M parameters on {device} | {len(rows)} training prompts | label={cfg.label} "
          f"| {cfg.prompts_per_step} prompts x {cfg.samples_per_prompt} samples per step | steps {start}->{cfg.steps}")

    evals = {}  # step -> held-out results of this process

    def run_eval(step):
        # Its own random stream, the same at every eval: evals never shift the training draws (a run with
        # more evals trains identically), and every run of a seed samples its step-0 eval identically.
        with oom_hint("generation", cfg), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.seed + 12_345)
            results = evaluation.evaluate_sets(model, tokenizer, {**eval_sets, **val_sets}, k=cfg.eval_samples,
                                               max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                               chunk=cfg.gen_chunk, amp=amp, max_prompt_tokens=cfg.max_prompt_tokens)
        log_row(cfg, "eval.jsonl", {"step": step, **results}, wb, prefix="eval/")
        evals[step] = results
        tqdm.write(f"eval step {step}: " + " | ".join(
            f"{name} avg@{cfg.eval_samples} {r['avg']:.3f} maj@{cfg.eval_samples} {r['maj']:.3f}"
            for name, r in results.items()))
        return results

    # Early stopping (paper §5): keep the model that scores best on the small labelled hold-out, and stop
    # after `early_stop` evaluations without a gain. Resumed runs recover the best score from eval.jsonl.
    best = {"avg": -1.0, "step": start}

    def val_improved(step, results):
        avg = sum(results[n]["avg"] for n in val_sets) / len(val_sets)
        if avg <= best["avg"]:
            return False
        best.update(avg=avg, step=step)
        return True

    if val_sets and start > 0 and os.path.exists(os.path.join(cfg.out_dir, "eval.jsonl")):
        with open(os.path.join(cfg.out_dir, "eval.jsonl")) as f:
            for line in f:
                e = json.loads(line)
                if e["step"] <= start and all(n in e for n in val_sets):
                    val_improved(e["step"], e)

    def track_val(step, results):
        if val_sets and val_improved(step, results):
            best_dir = os.path.join(cfg.out_dir, "best")
            tmp = save_model(model, tokenizer, best_dir)
            shutil.rmtree(best_dir, ignore_errors=True)
            os.replace(tmp, best_dir)

    first_eval = run_eval(start) if start == 0 else None
    if first_eval:
        track_val(0, first_eval)
    n, k = cfg.votes_per_prompt or cfg.samples_per_prompt, cfg.samples_per_prompt

    def roll(idx):  # n responses for each prompt of idx, prompt-major
        with oom_hint("generation", cfg), progress(len(idx) * n, "rollout") as gen_bar:
            return rollout(model, tokenizer, [prompt_ids[i] for i in idx], n, cfg.max_new_tokens,
                           cfg.temperature, cfg.top_p, cfg.gen_chunk, stop_ids, amp, gen_bar)

    step = start
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="SRT" if cfg.label == "majority" else "RL")
    for step in bar:
        t0 = time.time()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        # 1. sample B prompts
        batch = batch_indices(step, len(rows), cfg.prompts_per_step, cfg.seed)
        # 2. roll out n responses per prompt from the current policy (n voters, k of them train)
        outs = roll(batch)
        if cfg.filter_share:
            batch, outs = online_filter(batch, outs, roll, step, len(rows), cfg)
        t1 = time.time()
        # 3-4. label each prompt and reward each response
        answers = [extract_answer(o.text) for o in outs]                  # B*n, prompt-major
        picks = train_subset(step, len(batch), n, k, cfg.seed)            # B lists of k indices
        rewards, labelled, majs, m = [], [], [], {"maj_share": 0.0, "unanimous": 0, "label_acc": [], "reward_acc": []}
        for g, i in enumerate(batch):
            group = answers[g * n:(g + 1) * n]
            fixed = rows[i].get("teacher" if cfg.label == "offline" else "answer")
            label, r, maj, count = label_and_reward(group, fixed, cfg.label, cfg.reward_shape, cfg.min_majority_share)
            majs.append(maj)
            rewards.append([r[j] for j in picks[g]])
            labelled.append(label is not None)
            m["maj_share"] += count / n
            m["unanimous"] += count == n
            gold = rows[i].get("answer")
            if gold is not None:  # hidden from training in SRT mode; used for logging only
                m["label_acc"].append(float(label is not None and is_equiv(label, gold)))
                true_r = label_and_reward(group, gold, "gold")[1]
                m["reward_acc"].append(sum(x == y for x, y in zip(r, true_r)) / n)
        R = torch.tensor(rewards)                                            # [B, k]
        # A prompt with no label (no parseable answer, or below min_majority_share) is left out of the loss.
        keep_groups = torch.tensor(labelled).repeat_interleave(k)           # [B*k]
        train_outs = [outs[g * n + j] for g in range(len(batch)) for j in picks[g] if labelled[g]]
        # Log-probs of the sampling policy before any update: every update after the first needs them for
        # its ratio, and so does the KL in the reward. The default (one update, KL in the loss) needs none.
        n_updates = cfg.ppo_epochs * cfg.minibatches
        kl_in_reward = ref_model is not None and cfg.kl_in == "reward" and bool(train_outs)
        old_logps = sequence_logprobs(model, train_outs, cfg, device, amp, tokenizer.pad_token_id) \
            if train_outs and (n_updates > 1 or kl_in_reward) else None
        R_adv, kl_reward = R, None
        if kl_in_reward:  # the paper's RLOO runs: the return loses beta x the response's KL
            ref_logps = sequence_logprobs(ref_model, train_outs, cfg, device, amp, tokenizer.pad_token_id)
            R_adv, kl_reward = reward_minus_kl(R, keep_groups, old_logps, ref_logps, cfg)
        # 5. advantages
        adv = advantages(R_adv, cfg.advantage)                              # [B, k]
        t2 = time.time()
        # 6. the update (one on-policy step by default), unless the batch has no signal or a NaN/inf
        skip = skip_reason(R, labelled)
        with oom_hint("update", cfg):
            stats = no_update(skip) if skip else update(
                model, ref_model if cfg.kl_in == "loss" else None, opt, train_outs, adv.flatten()[keep_groups],
                cfg, device, amp, tokenizer.pad_token_id, old_logps if n_updates > 1 else None)
        if kl_reward is not None:
            stats["kl"] = kl_reward
        nonfinite_streak = nonfinite_streak + 1 if (stats["skipped"] or "").startswith("non-finite") else 0
        opt.zero_grad(set_to_none=True)  # free the gradients (5.75 GiB for 1.5B) before the next rollout's KV cache
        t3 = time.time()

        # metrics
        B = len(batch)
        gen_tokens = sum(len(o.completion_ids) for o in outs)
        train_tokens = sum(len(o.prompt_ids) + len(o.completion_ids) for o in train_outs)
        flops = (2 * n_params * sum(len(o.prompt_ids) + len(o.completion_ids) for o in outs)
                 + 6 * n_params * train_tokens * n_updates)
        metrics = {
            "step": step + 1, "pseudo_reward" if cfg.label == "majority" else "reward": R.mean().item(),
            "maj_share": m["maj_share"] / B, "unanimous": m["unanimous"] / B,
            # the paper's collapse: one answer for every prompt. Share of prompts whose majority answer is
            # the step's most common one (label-free; 1/B when every prompt has its own answer)
            "same_answer": majority_vote(majs)[1] / B,
            "no_answer": sum(a is None for a in answers) / len(answers),
            "unlabelled": 1 - sum(labelled) / B,
            "truncated": sum(o.truncated for o in outs) / len(outs), "resp_len": gen_tokens / len(outs),
            "label_acc": sum(m["label_acc"]) / len(m["label_acc"]) if m["label_acc"] else None,
            "reward_acc": sum(m["reward_acc"]) / len(m["reward_acc"]) if m["reward_acc"] else None,
            **stats, "lr": cfg.lr, "rollout_s": t1 - t0, "reward_s": t2 - t1, "update_s": t3 - t2,
            "tok_per_s": gen_tokens / (t1 - t0),
            "mfu": flops / (t3 - t0) / cfg.peak_flops if device.type == "cuda" else None,
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        }
        log_row(cfg, "metrics.jsonl", metrics, wb)
        bar.set_postfix({k: f"{metrics[k]:.3g}" for k in ("pseudo_reward", "reward", "maj_share", "label_acc",
                                                          "entropy", "kl", "grad_norm") if metrics.get(k) is not None})

        reason = None  # a mitigation's reason to end the run early (paper §5)
        if cfg.collapse_alarm and metrics["same_answer"] >= cfg.collapse_alarm:
            reason = (f"collapse alarm: {metrics['same_answer']:.0%} of prompts share one majority answer "
                      f"(pseudo-reward {R.mean().item():.2f})")
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps and not reason:
            track_val(step + 1, run_eval(step + 1))
            if cfg.early_stop and step + 1 - best["step"] >= cfg.early_stop * cfg.eval_every:
                reason = f"early stop: no gain on {cfg.val_data} since step {best['step']} (avg@k {best['avg']:.3f})"
        halt = halt_reason(stop, nonfinite_streak, cfg)
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps or halt or reason:
            save_checkpoint(model, tokenizer, opt, step + 1, cfg)
        if halt:
            restore_signals()
            raise SystemExit(f"{halt}. Checkpoint of step {step + 1} saved in {cfg.out_dir}/ckpt; --resume continues.")
        if reason:
            tqdm.write(f"step {step + 1}: {reason}; stopping")
            step += 1
            break
    else:
        step = cfg.steps

    restore_signals()
    last_eval = (evals.get(step) or run_eval(step)) if start < step else None
    if wb is not None:
        wb.finish()
    if first_eval and last_eval:
        for name in last_eval:
            a, b = first_eval[name], last_eval[name]
            print(f"{name}: avg@{cfg.eval_samples} {a['avg']:.3f} -> {b['avg']:.3f} ({100 * (b['avg'] - a['avg']):+.1f} pts)"
                  f" | maj@{cfg.eval_samples} {a['maj']:.3f} -> {b['maj']:.3f}")
    return last_eval


if __name__ == "__main__":
    main(parse_config())
