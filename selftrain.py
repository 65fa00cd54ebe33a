"""Self-Rewarded Training (SRT): online RL on math problems with no labels.

"Can Large Reasoning Models Self-Train?" (Shafayat, Tajwar, Salakhutdinov, Schneider, Zanette, 2025;
arXiv 2505.21444). Each step, in the order of the paper's Algorithm 1:
    1. sample B prompts
    2. roll out n responses per prompt from the current policy (temperature 1.0)
    3. extract each response's final answer and vote within each prompt's group
    4. label each prompt (its majority answer in SRT, the gold answer in RL) and reward each response
       1 if its answer is equivalent to the label, else 0
    5. advantages within each group (RLOO or GRPO)
    6. one on-policy PPO-clipped update, token-mean loss, optional k3 KL to the start model
`python selftrain.py` runs the paper's recipe on one CUDA GPU; `python selftrain.py --tiny` the offline CPU
testbed (tiny.py). Every Config field is a flag; docs/knobs.md says where each default comes from.
"""
import functools
import math
import os
import random
import time
from dataclasses import dataclass

import runtime  # noqa: F401 (first: it sets the CPU threads' waiting before torch loads OpenMP)
import torch
from tqdm import tqdm

import tiny
from data import load_data, mean_by_level
from mitigations import best_so_far, collapse_alarm, keep_best, offline_labels_and_curriculum, online_filter
from model import autocast, completion_logprobs, half_copy, load_model, pack, refresh_copy, rollout, stop_token_ids
from rewards import agreement, confidence, extract_answer, is_equiv, label_and_reward, majority_vote, vote_classes
from runtime import (DTYPES, catch_stop_signals, check_config, check_machine, checkpoint_to_resume, halt_reason,
                     held_out_eval, load_checkpoint, log_row, mismatch, no_update, oom_hint, open_wandb, parse_flags,
                     precision, print_results, progress, run_folder, save_checkpoint, signal_ranking, skip_reason,
                     step_metrics, truncate_logs)


@dataclass
class Config:
    # --- model and data
    model: str = "Qwen/Qwen2.5-Math-1.5B"  # start policy: HF hub id, local folder or .gguf (paper: the 7B)
    tiny: bool = False  # the offline CPU testbed: warm up a tiny model on synthetic addition, then SRT
    warmup_target: float = 0.8  # testbed: the warm-up stops at this greedy validation accuracy
    train_data: str = "math12k"  # the paper's MATH-12K (data.py), a hub id, a .jsonl/.json/.parquet file, 'tiny'
    train_config: str = ""  # hub dataset config name, if the dataset has several
    train_split: str = "train"  # split of the training dataset
    problem_field: str = ""  # problem column (empty: auto-detect problem/question/prompt)
    answer_field: str = ""  # gold-answer column (empty: auto-detect; a 'solution' gives its last \boxed{})
    eval_data: str = "math500,amc23,aime24,aime25"  # held-out sets: benchmark names, files, or 'tiny'
    data_dir: str = ""  # folder of <benchmark>.jsonl files, read before the shipped benchmarks/ and the hub
    # --- the method (paper §3, Algorithm 1)
    label: str = "majority"  # label source: the group's majority answer (SRT), 'gold' (RL) or 'offline' (§5)
    reward: str = "majority"  # agreement with the label, or a label-free 'self_certainty'/'neg_entropy' (use grpo)
    advantage: str = "rloo"  # 'rloo' (paper v1), 'grpo' (z-score: GRPO, TTRL, paper v2), 'drgrpo' (no std)
    reward_shape: str = "binary"  # SRT: 'binary' agreement with the label, or 'soft': the answer's vote share
    min_majority_share: float = 0.0  # SRT: prompts whose majority share is below this get no label, no gradient
    prompts_per_step: int = 16  # B, prompts per step (paper: 16)
    samples_per_prompt: int = 16  # n, responses per prompt that train, and vote (paper: 32; 16 fits one GPU)
    votes_per_prompt: int = 0  # responses per prompt that vote, >= n; n of them train (TTRL: 64, 32; 0: = n)
    max_prompt_tokens: int = 1024  # longer prompts are dropped at load time (paper: 1024)
    max_new_tokens: int = 3072  # response length limit; a response that hits it is truncated (paper: 3072)
    temperature: float = 1.0  # rollout sampling temperature; the log-probs divide by the same (paper: 1.0)
    top_p: float = 1.0  # nucleus sampling for rollouts (paper: 1.0, i.e. off)
    clip_eps_low: float = 0.2  # PPO clip: the ratio is clipped below at 1 - this (paper: 0.2)
    clip_eps_high: float = 0.2  # PPO clip: the ratio is clipped above at 1 + this (paper: 0.2; DAPO: 0.28)
    ppo_epochs: int = 1  # passes over each rollout batch (paper: 1, fully on-policy)
    minibatches: int = 1  # optimizer steps per pass, on prompt-major slices (paper: 1; TTRL: 8)
    is_cap: float = 0.0  # truncated importance sampling: weigh each token by min(pi_old/pi_sampler, this) (0 = off)
    kl_coef: float = 0.001  # beta of the KL to the frozen start model; 0 skips the reference model (paper: 1e-3)
    kl_in: str = "loss"  # where the KL goes: 'loss' (TTRL, GRPO) or 'reward' (the paper's RLOO runs)
    kl_estimator: str = "k3"  # 'k3' (verl's low_var_kl, the paper's) or 'k1' = logp - ref
    watch_kl: bool = False  # load the start model and log the KL to it even at kl_coef 0 (a label-free alarm)
    entropy_coef: float = 0.001  # entropy bonus alpha (the paper's released script: verl's default 0.001)
    loss_agg: str = "token-mean"  # 'token-mean' over the whole step, 'seq-mean' (GRPO), 'constant' (Dr. GRPO)
    lr: float = 1e-6  # AdamW learning rate, constant (paper: 1e-6)
    weight_decay: float = 0.01  # AdamW weight decay (paper: 0.01)
    grad_clip: float = 1.0  # max global grad norm (paper: 1.0)
    steps: int = 400  # RL steps (paper: SRT peaks after ~300-600 steps, then may collapse)
    # --- mitigations of reward hacking (paper §5)
    curriculum: float = 1.0  # keep this easiest fraction of prompts, by the start model's majority share (paper: 1/3)
    filter_share: float = 0.0  # online filter: drop prompts with a lower majority share, refill (v2: 0.6; 0 = off)
    teacher_samples: int = 16  # samples per prompt of the start model's one-off vote (--label offline, --curriculum)
    val_data: str = ""  # small labelled hold-out for early stopping, named like eval_data (testbed: 'tiny-val')
    early_stop: int = 0  # stop after this many evals with no gain on val_data; best model in out_dir/best (0 = off)
    collapse_alarm: float = 0.0  # label-free: stop when this share of a step's prompts share one answer (0 = off)
    kl_alarm: float = 0.0  # label-free: stop when the KL to the start model, mean of 10 steps, exceeds this (0 = off)
    ttt: bool = False  # test-time training (TTRL): train on the eval sets' own problems, their answers hidden
    # --- evaluation and checkpoints
    eval_every: int = 100  # evaluate the held-out sets every this many steps, as the paper (0: start and end)
    eval_samples: int = 4  # k, samples per held-out problem for avg@k and maj@k (paper: 32)
    eval_limit: int = 0  # evaluate at most this many problems per held-out set (0: all)
    save_every: int = 50  # write a checkpoint every this many steps (and at the end)
    keep_ckpts: int = 2  # checkpoints kept: out_dir/ckpt is the newest, older ones ckpt-<step> (0: all)
    out_dir: str = "out"  # checkpoints, metrics.jsonl and eval.jsonl go here
    resume: bool = False  # continue exactly from the newest checkpoint in out_dir
    max_nonfinite: int = 3  # stop, with a checkpoint, after this many steps in a row skipped for a NaN/inf (0: never)
    wandb: bool = False  # also log to Weights & Biases (pip install wandb; project $WANDB_PROJECT)
    seed: int = 0  # seeds the data order, sampling and the testbed
    # --- engineering (memory and speed: docs/gpu.md)
    device: str = "auto"  # 'cuda', 'cpu' or 'auto'
    amp: bool = True  # autocast over fp32 master weights (also runs on the CPU, slowly)
    amp_dtype: str = "bf16"  # autocast dtype: 'bf16', or 'fp16' with a loss scaler (Qi et al. 2025: less mismatch)
    sampler: str = "policy"  # generate from 'policy' (fp32 under autocast) or 'half': a copy in amp_dtype
    grad_checkpointing: bool = True  # recompute activations in the backward pass to save memory (CUDA only)
    gen_chunk: int = 128  # sequences per generate call: bounds the KV cache
    micro_batch: int = 8  # sequences per forward/backward; gradients accumulate over the step
    logprob_chunk: int = 1024  # completion tokens per LM-head chunk in the log-probs
    peak_flops: float = 989e12  # accelerator peak bf16 FLOP/s, for MFU (H100 SXM, dense)


def parse_config(argv=None):
    """Every Config field is a flag (runtime.parse_flags); --tiny first applies the testbed's defaults
    (tiny.DEFAULTS)."""
    return parse_flags(Config, argv, __doc__, tiny.DEFAULTS)


# ------------------------------------------------------------------------------------------------------
# The algorithm, one function per step of the paper's loop.


def batch_indices(step, n_rows, batch, seed):
    """Step 1: the prompt indices of one step: a fresh seeded permutation per epoch, walked in order. A function
    of the step alone, so a resumed run sees exactly the prompts an uninterrupted one would."""
    out = []
    for k in range(step * batch, (step + 1) * batch):
        epoch, i = divmod(k, n_rows)
        perm = list(range(n_rows))
        random.Random(seed * 100_003 + epoch).shuffle(perm)
        out.append(perm[i])
    return out


def roll_out(model, tokenizer, prompt_ids, cfg, stop_ids, batch):
    """Step 2: votes_per_prompt (default n) responses for each prompt of the batch from the current policy,
    prompt-major: response j of prompt g is at g * votes + j. model.rollout samples in eval mode with the KV
    cache, from exactly the distribution the update scores (temperature, top-p, no top-k)."""
    votes = cfg.votes_per_prompt or cfg.samples_per_prompt
    with oom_hint("generation", cfg), progress(len(batch) * votes, "rollout") as bar:
        return rollout(model, tokenizer, [prompt_ids[i] for i in batch], votes, cfg.max_new_tokens,
                       cfg.temperature, cfg.top_p, cfg.gen_chunk, stop_ids, precision(cfg), bar)


def vote(outs, votes):
    """Step 3: each response's final answer (its last \\boxed{}) and, within each prompt's group, which answers
    are equivalent -> one (answers, classes) pair per prompt; equal class ids are one vote (rewards.py)."""
    answers = [extract_answer(o.text) for o in outs]
    return [(answers[g:g + votes], vote_classes(answers[g:g + votes])) for g in range(0, len(answers), votes)]


def train_subset(step, n_groups, votes, n, seed):
    """Which n of each group's `votes` voters train (TTRL votes with 64 and trains on 32) -> n_groups lists of
    n indices. A uniformly random subset drawn independently of the answers, so the trained responses are an
    unbiased sample of the group; the first n would be too, but the vote's tie-break favours early samples,
    which would tilt rewards up. Seeded by the step, like batch_indices, so a resumed run draws the same."""
    if n == votes:
        return [list(range(votes))] * n_groups
    rng = random.Random(f"train-subset {seed} {step}")
    return [sorted(rng.sample(range(votes), n)) for _ in range(n_groups)]


def label_batch(groups, outs, batch_rows, picks, cfg):
    """Step 4 for every prompt of the step (rewards.label_and_reward) -> rewards [B, n] of the responses that
    train, labelled [B] (False: no label, so no gradient), and the label diagnostics. Where the data has gold
    answers they are only logged in SRT mode: label_acc (is the majority right?), per difficulty where rows
    have a 'level' (the paper's collapse starts on hard prompts), reward_acc (does the pseudo-reward equal the
    true reward?) and, for every label-free signal, how well it ranks right responses above wrong ones.
    --reward self_certainty / neg_entropy (rewards.confidence) reward each response by its own confidence
    instead: no label, and every prompt trains, answered or not; the majority is still voted, for label_acc."""
    votes = len(outs) // len(groups)
    rewards, labelled, majorities, shares, label_acc, reward_acc, judged, ranked = [], [], [], [], [], [], [], []
    for g, ((answers, classes), row, pick) in enumerate(zip(groups, batch_rows, picks)):
        fixed = row.get("teacher" if cfg.label == "offline" else "answer")  # a label from outside the policy
        label, r, majority, count = label_and_reward(answers, fixed, cfg.label, cfg.reward_shape,
                                                     cfg.min_majority_share, classes)
        group = outs[g * votes:(g + 1) * votes]
        srt_r = agreement(answers, classes, majority)  # the SRT reward (= r in SRT), ranked against the others
        if cfg.reward != "majority":  # a continuous label-free signal: no label
            label, r = majority, [confidence(o, cfg.reward) for o in group]
        rewards.append([r[j] for j in pick])
        labelled.append(label is not None or cfg.reward != "majority")
        majorities.append(majority)
        shares.append(count / len(answers))
        if row.get("answer") is not None:
            label_acc.append(float(label is not None and is_equiv(label, row["answer"])))
            judged.append(row)
            true_r = agreement(answers, classes, row["answer"])
            reward_acc += [sum(x == y for x, y in zip(r, true_r)) / len(answers)] if cfg.reward == "majority" else []
        ranked.append((srt_r, group, true_r if row.get("answer") is not None else None))
    B = len(groups)
    stats = {"maj_share": sum(shares) / B, "unanimous": sum(s == 1 for s in shares) / B,
             # the paper's collapse, one answer for every prompt: the share of prompts whose majority answer
             # is the step's most common one (label-free; 1/B when every prompt has its own answer)
             "same_answer": majority_vote(majorities)[1] / B, "unlabelled": 1 - sum(labelled) / B,
             "label_acc": sum(label_acc) / len(label_acc) if label_acc else None,
             "label_acc_by_level": mean_by_level(judged, label_acc) or None,
             "reward_acc": sum(reward_acc) / len(reward_acc) if reward_acc else None, **signal_ranking(ranked)}
    return torch.tensor(rewards), labelled, stats


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
    """The KL in the reward (--kl_in reward; the paper's RLOO runs). R: [B, n] rewards; trained: [B*n] bool,
    the rollouts of labelled prompts, whose per-token log-probs under the sampling policy and the start model
    are old_logps and ref_logps. -> (R - beta * KL per response [B, n], mean per-token KL). The paper
    subtracts beta * KL_t from each token's reward, but the advantage is per sequence, so only the sum
    R_i - beta * sum_t KL_it counts: the KL acts through a REINFORCE term that every token of a response
    shares, longer responses pay more, and the group baseline keeps only the KL's differences within a
    group. Unlabelled prompts get no KL (the SRT code masks it)."""
    kl_tok = [kl_estimate(o, r, cfg.kl_estimator) for o, r in zip(old_logps, ref_logps)]  # [len] each
    R = R.clone()
    R.view(-1)[trained] -= cfg.kl_coef * torch.stack([x.sum() for x in kl_tok])        # [B, n]
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


def policy_loss(logp, old_logp, ref_logp, entropy, adv, mask, cfg, sampler_logp=None):
    """Step 6's objective per token -> loss [b, C] (aggregate() turns it into the step's scalar) and stats.
    logp, old_logp, entropy: [b, C]; ref_logp: [b, C], or None when the KL is not in the loss; adv: [b].
    PPO clip: -min(r A, clip(r, 1-eps_low, 1+eps_high) A), r = pi/pi_old. With one on-policy update r == 1,
    so the loss value is ~0 by construction while its gradient is the policy gradient -A grad log pi.
    eps_high > eps_low is DAPO's clip-higher: unlikely tokens with A > 0 may grow more before clipping.
    sampler_logp [b, C]: what generate drew each token from. The sampler and the learner compute in other
    precision and shapes (one token at a time with the KV cache against the whole sequence), so pi_old is not
    quite the sampler: --is_cap C weights each token's term by min(pi_old / pi_sampler, C), detached (truncated
    importance sampling, Yao et al. 2025; per token, as TRL, NeMo RL and verl offer it: a sequence-level ratio
    multiplies thousands of per-token ratios and is capped on nearly every long response).
    Then + beta KL (KL in the loss, as TTRL and GRPO) and - alpha H (entropy bonus)."""
    ratio = torch.exp(logp - old_logp)                                      # [b, C]
    a = adv[:, None]                                                        # [b, 1]
    unclipped, clipped = ratio * a, ratio.clamp(1 - cfg.clip_eps_low, 1 + cfg.clip_eps_high) * a  # [b, C]
    pg = -torch.min(unclipped, clipped)                                     # [b, C]
    if cfg.is_cap and sampler_logp is not None:
        is_ratio = torch.exp(old_logp - sampler_logp).detach()              # [b, C]: pi_old / pi_sampler
        pg = pg * is_ratio.clamp(max=cfg.is_cap)
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
        if sampler_logp is not None:  # the mismatch, against the learner before this step's update (pi_old)
            stats.update(mismatch(old_logp, sampler_logp, mask))
            if cfg.is_cap:
                stats.update(is_weight_sum=(is_ratio.clamp(max=cfg.is_cap) * mask).sum().item(),
                             is_capped_sum=((is_ratio > cfg.is_cap).float() * mask).sum().item())
    return loss, stats


def aggregate(loss, mask, kind, n_tokens, n_seqs, max_new_tokens):
    """This micro-batch's share of one update's scalar loss. loss, mask: [b, C]; n_tokens and n_seqs
    count the whole update's responses, so micro-batching never changes the objective.
    token-mean (the paper's; verl averages it per micro-batch): every token weighs the same, long responses more;
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
        with autocast(device, amp):
            logp, _ = completion_logprobs(model, ids, attn, comp, mask, cfg.temperature, cfg.logprob_chunk)
        out += [lp[:len(r.completion_ids)].float().cpu() for lp, r in zip(logp, mb)]
    return out


def before_update(model, ref_model, train_outs, R, labelled, cfg, device, pad_id):
    """What must be measured under the sampling policy before the update changes it -> (old_logps, rewards for
    the advantage [B, n], mean per-token KL or None). Every update after the first needs pi_old's log-probs
    for its ratio; the KL in the reward (the paper's RLOO runs) needs them and the start model's. The default
    (one update, KL in the loss) needs neither, and no extra forward is run."""
    n_updates = cfg.ppo_epochs * cfg.minibatches
    kl_in_reward = ref_model is not None and cfg.kl_in == "reward" and bool(train_outs)
    if not train_outs or (n_updates == 1 and not kl_in_reward):
        return None, R, None
    old_logps = sequence_logprobs(model, train_outs, cfg, device, precision(cfg), pad_id)
    if not kl_in_reward:
        return old_logps, R, None
    ref_logps = sequence_logprobs(ref_model, train_outs, cfg, device, precision(cfg), pad_id)
    trained = torch.tensor(labelled).repeat_interleave(R.shape[1])                     # [B*n]
    return (old_logps, *reward_minus_kl(R, trained, old_logps, ref_logps, cfg))


def backward_microbatches(model, ref_model, rollouts, idx, adv, old_logps, norm, sums, cfg, device, amp, pad_id,
                          scaler):
    """Forward and backward over the rollouts idx in micro-batches, accumulating one optimizer step's gradient;
    norm = (tokens, responses) of the whole update, so the objective does not depend on micro_batch. Adds the
    diagnostics to sums. -> (tokens trained, 'non-finite loss' or None)."""
    tokens, bad = 0, None
    for s in tqdm(range(0, len(idx), cfg.micro_batch), desc="update", leave=False, disable=None):
        mb = idx[s:s + cfg.micro_batch]
        ids, attn, comp, mask = pack([rollouts[i] for i in mb], pad_id, device)
        with autocast(device, amp):
            logp, entropy = completion_logprobs(model, ids, attn, comp, mask, cfg.temperature,
                                                cfg.logprob_chunk, entropy_grad=bool(cfg.entropy_coef))
            ref_logp = None
            if ref_model is not None:
                with torch.no_grad():
                    ref_logp, _ = completion_logprobs(ref_model, ids, attn, comp, mask, cfg.temperature,
                                                      cfg.logprob_chunk)
        # One update: pi_old is the current policy, so no extra forward is needed.
        old_logp = logp.detach() if old_logps is None else torch.nn.utils.rnn.pad_sequence(
            [old_logps[i] for i in mb], batch_first=True).to(device)            # [b, C]
        sampler_logp = None if any(rollouts[i].sampler_logp is None for i in mb) else torch.nn.utils.rnn.pad_sequence(
            [torch.tensor(rollouts[i].sampler_logp) for i in mb], batch_first=True).to(device)  # [b, C]
        loss, st = policy_loss(logp, old_logp, ref_logp, entropy, adv[mb].to(device), mask, cfg, sampler_logp)
        loss = aggregate(loss, mask, cfg.loss_agg, *norm, cfg.max_new_tokens)
        if not math.isfinite(loss.item()):
            bad = "non-finite loss"
        scaler.scale(loss).backward()  # fp16: the loss scaled up, so small gradients do not flush to 0
        for key, v in st.items():
            sums[key] = max(sums.get(key, 0.0), v) if key.endswith("_max") else sums.get(key, 0.0) + v
        sums["entropy_sum"] += (entropy.detach() * mask).sum().item()
        tokens += int(mask.sum())
    return tokens, bad


def update(model, ref_model, opt, rollouts, adv, cfg, device, amp, pad_id, old_logps=None, scaler=None):
    """Step 6: ppo_epochs x minibatches optimizer steps over the step's rollouts (the paper: 1 x 1, one
    on-policy update). Each optimizer step covers a prompt-major slice of the rollouts, in micro-batches
    sorted by length, with one normaliser for the whole slice (loss_agg). adv: [len(rollouts)].
    ref_model: given when the KL is in the loss. old_logps: the sampling policy's per-token log-probs, needed
    for every update after the first; None for one update, where pi_old is the current policy.
    A NaN/inf loss or grad norm skips the optimizer step, so neither the weights nor AdamW's moments see it.
    scaler: fp16's loss scaler (a no-op otherwise): gradients are unscaled before the clip, and an overflow skips
    the step and halves the scale; while the scale is >= 1 that is the scaler settling, not a fault."""
    model.train()
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    assert old_logps is not None or cfg.ppo_epochs * cfg.minibatches == 1, \
        "several updates need the sampling policy's log-probs"
    N = len(rollouts)
    sums = {"pg_sum": 0.0, "kl_sum": 0.0, "clip_sum": 0.0, "approx_kl_sum": 0.0, "entropy_sum": 0.0,
            "trained_tokens": 0, "norm_tokens": 0}
    grad_norms, trained, skipped = [], set(), None
    for _ in range(cfg.ppo_epochs):
        for k in range(cfg.minibatches):
            part = range(k * N // cfg.minibatches, (k + 1) * N // cfg.minibatches)  # prompt-major slice
            n_tokens = sum(len(rollouts[i].completion_ids) for i in part)          # the one normaliser
            # A sequence with A = 0, no KL and no entropy term contributes no gradient: skip it.
            idx = [i for i in part if adv[i] != 0 or (ref_model is not None and cfg.kl_coef) or cfg.entropy_coef]
            idx.sort(key=lambda i: len(rollouts[i].prompt_ids) + len(rollouts[i].completion_ids))
            opt.zero_grad(set_to_none=True)
            tokens, bad = backward_microbatches(model, ref_model, rollouts, idx, adv, old_logps,
                                                (n_tokens, len(part)), sums, cfg, device, amp, pad_id, scaler)
            scaler.unscale_(opt)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
            if bad is None and not math.isfinite(grad_norm):
                settling = scaler.is_enabled() and scaler.get_scale() >= 1
                bad = f"fp16 overflow at loss scale {scaler.get_scale():g}" if settling else "non-finite grad norm"
            if bad:
                tqdm.write(f"warning: {bad} (grad norm {grad_norm}); update skipped")
                skipped = bad
            elif tokens > 0:
                scaler.step(opt)
            scaler.update()
            grad_norms.append(grad_norm)
            sums["trained_tokens"] += tokens
            sums["norm_tokens"] += n_tokens
            trained.update(idx)
    t = max(sums["trained_tokens"], 1)
    per_token = lambda key: sums[key] / t if key in sums else None  # noqa: E731
    return {"grad_norm": sum(grad_norms) / len(grad_norms),
            "pg_term": sums["pg_sum"] / max(sums["norm_tokens"], 1),
            "kl": sums["kl_sum"] / t if ref_model is not None else None,
            "entropy": sums["entropy_sum"] / t, "clip_frac": sums["clip_sum"] / t,
            "approx_kl": sums["approx_kl_sum"] / t, "trained_seqs": len(trained), "skipped": skipped,
            # sampler against learner, per scored token: mean |log p difference|, k3 KL, the largest difference
            "mismatch": per_token("mismatch_sum"), "mismatch_kl": per_token("mismatch_kl_sum"),
            "mismatch_max": sums.get("mismatch_max"),
            "is_weight": per_token("is_weight_sum"), "is_capped": per_token("is_capped_sum"),
            "loss_scale": scaler.get_scale() if scaler.is_enabled() else None}


# ------------------------------------------------------------------------------------------------------
# Setting up a run (the data, warm-up and seeds first: data.load_data)


def load_policy(cfg, ckpt, device):
    """The policy (from the checkpoint when resuming), the frozen start model for the KL, and the sampler."""
    model = load_model(ckpt or cfg.model, device, cfg.grad_checkpointing and device.type == "cuda")[0]
    ref_model = None
    if cfg.kl_coef > 0 or cfg.watch_kl:  # a frozen copy of the *start* model for the KL. Kept fp32 under the same
        # autocast as the policy: a bf16 copy computes differently, and the KL would start above 0.
        ref_model = load_model(cfg.model, device)[0].eval().requires_grad_(False)
    # --sampler half: generate from a copy in amp_dtype (fp32 LM head), without autocast's casts at each decode step
    sampler = model if cfg.sampler == "policy" else half_copy(model, DTYPES[cfg.amp_dtype])
    return model, ref_model, sampler


# ------------------------------------------------------------------------------------------------------
# The training loop


def main(cfg):
    check_config(cfg)   # every flag, one line each, before anything loads
    check_machine(cfg)  # a GPU for the GPU recipe; the model and data exist, locally or on the hub
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # the KV cache grows: less fragmenting
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    start, ckpt = checkpoint_to_resume(cfg)  # (0, None) for a fresh run
    if ckpt and start == cfg.steps:
        print(f"{cfg.out_dir} is at step {start} = --steps already: nothing to do")
        return None
    with run_folder(cfg):  # out_dir with config.json, removed again if the run is refused before it trains
        tokenizer, rows, prompt_ids, eval_sets, val = load_data(cfg, ckpt)
        model, ref_model, sampler = load_policy(cfg, ckpt, device)  # sampler: what every generate call uses
        stop_ids, pad_id = stop_token_ids(model, tokenizer), tokenizer.pad_token_id
        if cfg.label == "offline" or cfg.curriculum < 1:  # the start model votes once on every prompt (paper §5)
            rows, prompt_ids = offline_labels_and_curriculum(rows, prompt_ids, sampler, tokenizer, cfg, stop_ids)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                fused=device.type == "cuda")
        scaler = torch.amp.GradScaler(device.type, enabled=precision(cfg) == torch.float16)  # fp16's loss scale
        if ckpt:
            load_checkpoint(opt, ckpt, scaler)
    truncate_logs(cfg.out_dir, start)  # rows a crash left past the checkpoint would be logged twice
    wb, (stop, restore_signals) = open_wandb(cfg), catch_stop_signals()  # Ctrl-C/SIGTERM: finish the step, save
    n_params, n = sum(p.numel() for p in model.parameters()), cfg.samples_per_prompt
    votes = cfg.votes_per_prompt or n  # responses per prompt that vote; n of them train
    print(f"{n_params / 1e6:.1f}M parameters on {device} | {len(rows)} training prompts | label={cfg.label} "
          f"| {cfg.prompts_per_step} prompts x {n} samples per step | steps {start}->{cfg.steps}")
    best, evals, nonfinite_streak = best_so_far(val, start, cfg), {}, 0
    if start == 0:
        evals[0] = held_out_eval(sampler, tokenizer, eval_sets, 0, cfg, device, wb)
        keep_best(model, tokenizer, evals[0], 0, best, val, cfg)
    roll = functools.partial(roll_out, sampler, tokenizer, prompt_ids, cfg, stop_ids)  # roll(batch) -> rollouts
    name = cfg.reward if cfg.reward != "majority" else "SRT" if cfg.label == "majority" else "RL"
    step, bar = start, tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=name)
    for step in bar:
        t0 = time.time()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        # 1. sample B prompts
        batch = batch_indices(step, len(rows), cfg.prompts_per_step, cfg.seed)
        # 2. roll out `votes` (default n) responses per prompt from the current policy
        outs = roll(batch)
        # 3. extract each final answer and vote within each prompt's group
        groups = vote(outs, votes)
        if cfg.filter_share:  # the online filter (paper v2 App. I.7): keep agreed-on prompts, refill
            batch, outs, groups = online_filter(batch, outs, groups, roll, step, len(rows), cfg, batch_indices, vote)
        t1 = time.time()
        # 4. label each prompt and reward each response; n of each group's voters train
        picks = train_subset(step, len(batch), votes, n, cfg.seed)                   # B lists of n indices
        R, labelled, label_stats = label_batch(groups, outs, [rows[i] for i in batch], picks, cfg)  # R [B, n]
        train_outs = [outs[g * votes + j] for g in range(len(batch)) for j in picks[g] if labelled[g]]
        # 5. advantages within each group (--kl_in reward first takes beta x KL off R); unlabelled prompts drop out
        old_logps, R_adv, kl_reward = before_update(model, ref_model, train_outs, R, labelled, cfg, device, pad_id)
        adv = advantages(R_adv, cfg.advantage).flatten()[torch.tensor(labelled).repeat_interleave(n)]  # [B'*n]
        t2 = time.time()
        # 6. the update (one on-policy step by default), unless the batch has no signal or a NaN/inf
        skip = skip_reason(R, labelled)
        with oom_hint("update", cfg):
            stats = no_update(skip) if skip else update(
                model, ref_model if cfg.kl_in == "loss" else None, opt, train_outs, adv, cfg, device, precision(cfg),
                pad_id, old_logps if cfg.ppo_epochs * cfg.minibatches > 1 else None, scaler)
        if sampler is not model:
            refresh_copy(sampler, model)  # the half sampler gets the updated weights
        stats["kl"] = kl_reward if kl_reward is not None else stats["kl"]
        nonfinite_streak = nonfinite_streak + 1 if (stats["skipped"] or "").startswith("non-finite") else 0
        opt.zero_grad(set_to_none=True)  # free the gradients (5.75 GiB at 1.5B) before the next rollout's KV cache
        metrics = step_metrics(step, cfg, R, outs, groups, train_outs, label_stats, stats,
                               (t0, t1, t2, time.time()), n_params, device)
        log_row(cfg, "metrics.jsonl", metrics, wb)
        bar.set_postfix({k: f"{metrics[k]:.3g}" for k in ("reward", "maj_share", "label_acc", "entropy", "kl",
                                                          "grad_norm") if metrics.get(k) is not None})
        # evals, and the mitigations that end a run (paper §5): a label-free alarm, early stopping
        reason = collapse_alarm(metrics, cfg)
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps and not reason:
            evals[step + 1] = held_out_eval(sampler, tokenizer, eval_sets, step + 1, cfg, device, wb)
            keep_best(model, tokenizer, evals[step + 1], step + 1, best, val, cfg)
            if cfg.early_stop and step + 1 - best["step"] >= cfg.early_stop * cfg.eval_every:
                reason = f"early stop: no gain on {cfg.val_data} since step {best['step']} (avg@k {best['avg']:.3f})"
        halt = halt_reason(stop, nonfinite_streak, cfg)
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps or halt or reason:
            save_checkpoint(model, tokenizer, opt, step + 1, cfg, scaler)
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
    if start < step:
        evals[step] = evals.get(step) or held_out_eval(sampler, tokenizer, eval_sets, step, cfg, device, wb)
    if wb is not None:
        wb.finish()
    print_results(cfg, evals.get(0), evals.get(step) if start < step else None, step)  # and the next commands
    return evals.get(step) if start < step else None


if __name__ == "__main__":
    main(parse_config())
