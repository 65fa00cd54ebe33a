"""Run machinery: what a run of hours needs and the method does not (docs/faults.md).

CPU threads that hold up on busy cores, the command line and its checks (bad flags, a missing GPU, model or
dataset refused in one line, in seconds), steps that must not update (NaN/inf, no learning signal),
out-of-memory hints, Ctrl-C/SIGTERM, held-out evals, what each step logs to metrics.jsonl and wandb,
checkpoints with exact resume (save_pretrained folders plus optimizer, step and RNG state, written atomically
and rotated), and where a run's results went.
"""
import os

# CPU threads. torch's OpenMP threads wait for the next parallel region by spinning before they sleep: ~300,000
# rounds in libgomp (Linux), 200 ms in libomp and Intel's OpenMP (macOS, Windows). On cores that another process
# also uses, a spinning thread burns the time slice that the thread it waits for needs, and every step slows
# down: on 2 cores beside one busy process, a --tiny step took 2.1x as long with 2 threads as with 1. A short
# spin keeps the quiet speed (docs/testbed.md, "CPU threads"). OpenMP reads these once, when torch loads it, so
# every entry point (selftrain.py, eval.py, bench.py, the tests) imports this file before torch. A value the
# user set wins; OMP_NUM_THREADS is left alone.
if not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"} & set(os.environ):
    os.environ.update(GOMP_SPINCOUNT="1000", KMP_BLOCKTIME="0")

import argparse  # noqa: E402 (below: the threads' settings must come before torch)
import ast
import inspect
import io
import json
import math
import random
import re
import shutil
import signal
import threading
import tokenize
from contextlib import contextmanager
from dataclasses import asdict, fields

import torch
from tqdm import tqdm

from rewards import confidence


# ------------------------------------------------------------------------------------------------------
# The command line: help from the Config's comments, and bad flags refused in one line that names the flag,
# before any model or data loads.


def field_docs(cls):
    """The comment after each field of a dataclass: its --help line."""
    src = inspect.getsource(cls)
    comments = {t.start[0]: t.string.lstrip("# ") for t in tokenize.generate_tokens(io.StringIO(src).readline)
                if t.type == tokenize.COMMENT}
    return {a.target.id: comments[a.lineno] for a in ast.parse(src).body[0].body
            if isinstance(a, ast.AnnAssign) and a.lineno in comments}


def parse_bool(s):
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{s}'")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help with every flag's default, and booleans shown bare (`--amp`, not `--amp [AMP]`): `--amp` alone
    means true, and `--amp false` parses as ever."""

    def _format_action_invocation(self, action):
        return action.option_strings[0] if action.nargs == "?" else super()._format_action_invocation(action)

    def _get_help_string(self, action):
        d = action.default
        if d is argparse.SUPPRESS or action.help is None:
            return action.help
        shown = str(d).lower() if isinstance(d, bool) else "unset" if d is None else (d if d != "" else "''")
        return f"{action.help} [default: {str(shown).replace('%', '%%')}]"


def parse_flags(cls, argv, description, tiny_defaults):
    """A dataclass's fields as flags (the comment after each field is its help) -> an instance. `--tiny` first
    applies the testbed's defaults, so `--tiny --help` shows those."""
    argv = os.sys.argv[1:] if argv is None else argv
    tiny = "--tiny" in argv
    parser = argparse.ArgumentParser(
        description=description, formatter_class=lambda prog: HelpFormatter(prog, max_help_position=30),
        usage="python selftrain.py [--tiny] [--flag value ...]",
        epilog="Defaults shown are " + ("the testbed's (--tiny)." if tiny else "the one-GPU recipe's; "
                                         "python selftrain.py --tiny --help shows the testbed's."))
    parser.error, docs = one_line_error, field_docs(cls)
    for f in fields(cls):
        kind = (dict(type=parse_bool, nargs="?", const=True) if f.type is bool else
                dict(type=f.type, metavar={int: "N", float: "X", str: "TEXT"}[f.type]))
        parser.add_argument(f"--{f.name}", default=f.default, help=docs[f.name].replace("%", "%%"), **kind)
    if tiny:
        parser.set_defaults(**tiny_defaults)
    return cls(**vars(parser.parse_args(argv)))


AT_LEAST_0, AT_LEAST_1 = ("an integer >= 0", lambda v: v >= 0), ("an integer >= 1", lambda v: v >= 1)
POSITIVE, NON_NEGATIVE = ("a number > 0", lambda v: v > 0), ("a number >= 0", lambda v: v >= 0)
SHARE, FRACTION = ("a number in [0, 1]", lambda v: 0 <= v <= 1), ("a number in (0, 1]", lambda v: 0 < v <= 1)
# What each numeric flag of selftrain.Config allows; where 0 means "off" or "all", its help says so.
ALLOWED = {
    **dict.fromkeys(("prompts_per_step", "max_prompt_tokens", "max_new_tokens", "ppo_epochs", "minibatches", "steps",
                     "teacher_samples", "eval_samples", "save_every", "gen_chunk", "micro_batch", "logprob_chunk"),
                    AT_LEAST_1),
    "samples_per_prompt": ("an integer >= 2 (one sample is always its own majority: no signal)", lambda v: v >= 2),
    **dict.fromkeys(("votes_per_prompt", "early_stop", "eval_every", "eval_limit", "keep_ckpts", "max_nonfinite",
                     "seed"), AT_LEAST_0),
    **dict.fromkeys(("temperature", "lr", "grad_clip", "peak_flops"), POSITIVE),
    **dict.fromkeys(("kl_coef", "entropy_coef", "weight_decay", "clip_eps_high", "kl_alarm", "is_cap"), NON_NEGATIVE),
    "clip_eps_low": ("a number in [0, 1)", lambda v: 0 <= v < 1),
    **dict.fromkeys(("min_majority_share", "filter_share", "collapse_alarm"), SHARE),
    **dict.fromkeys(("top_p", "curriculum", "warmup_target"), FRACTION),
}


def check_values(values, types, allowed):
    """values: {flag: value}; types: {flag: type}. Refuse a value of the wrong type, NaN/inf, or one outside
    what allowed[flag] permits, in one line: the flag, the value and what is allowed."""
    for name, value in values.items():
        kind = types[name]
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, (int, float) if kind is float else kind):
            raise SystemExit(f"--{name} {value!r}: expected {'true or false' if kind is bool else kind.__name__}")
        what, ok = allowed.get(name, (None, None))
        if ok and not (math.isfinite(value) and ok(value)):
            raise SystemExit(f"--{name} {value}: expected {what}")


def one_line_error(message):
    """argparse.ArgumentParser.error, in one line (argparse prints its whole usage block first)."""
    raise SystemExit(f"error: {message} (--help lists every flag)")


def check_device(device):
    """'auto', 'cpu', 'cuda' or 'cuda:N', and CUDA only where there is one."""
    if not (device in ("auto", "cpu") or re.fullmatch(r"cuda(:\d+)?", device)):
        raise SystemExit(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: this machine has no CUDA device (torch {torch.__version__})")


CHOICES = {"label": ("majority", "gold", "offline"), "advantage": ("rloo", "grpo", "drgrpo"),
           "reward_shape": ("binary", "soft"), "kl_in": ("loss", "reward"), "kl_estimator": ("k1", "k3"),
           "loss_agg": ("token-mean", "seq-mean", "constant"), "amp_dtype": ("bf16", "fp16"),
           "sampler": ("policy", "half"), "reward": ("majority", "self_certainty", "neg_entropy")}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # --amp_dtype
PATH_FLAGS = ("model", "train_data", "eval_data", "val_data", "data_dir", "out_dir")  # where ~ expands


def check_config(cfg):
    """Stop, in one line, before any model or data is loaded, when a flag is out of range (ALLOWED), misspelt
    (CHOICES), names a missing local path, or contradicts another. Expands ~ in the path flags."""
    for flag in PATH_FLAGS:
        setattr(cfg, flag, ",".join(os.path.expanduser(p) for p in getattr(cfg, flag).split(",")))
    check_values(asdict(cfg), {f.name: f.type for f in fields(cfg)}, ALLOWED)
    check_device(cfg.device)
    for name, ok in CHOICES.items():
        if getattr(cfg, name) not in ok:
            raise SystemExit(f"--{name} {getattr(cfg, name)}: expected one of {' | '.join(ok)}")
    if cfg.label != "majority" and (cfg.reward_shape != "binary" or cfg.min_majority_share > 0):
        raise SystemExit("--reward_shape soft and --min_majority_share are SRT knobs: they need --label majority")
    srt_only = [f"--{k} {getattr(cfg, k)}" for k, on in (
        ("label", cfg.label != "majority"), ("reward_shape", cfg.reward_shape != "binary"),
        ("min_majority_share", cfg.min_majority_share > 0), ("filter_share", cfg.filter_share > 0),
        ("curriculum", cfg.curriculum < 1),
        ("votes_per_prompt", cfg.votes_per_prompt > cfg.samples_per_prompt)) if on]
    if cfg.reward != "majority" and srt_only:
        raise SystemExit(f"--reward {cfg.reward} rewards each response's own confidence, with no vote: "
                         f"{', '.join(srt_only)} act on the majority vote (--reward majority)")
    if cfg.votes_per_prompt and cfg.votes_per_prompt < cfg.samples_per_prompt:
        raise SystemExit(f"--votes_per_prompt {cfg.votes_per_prompt} < --samples_per_prompt "
                         f"{cfg.samples_per_prompt}: the trained responses are a subset of the voters")
    if cfg.minibatches > cfg.prompts_per_step * cfg.samples_per_prompt:
        raise SystemExit(f"--minibatches {cfg.minibatches}: expected at most --prompts_per_step x --samples_per_prompt "
                         f"= {cfg.prompts_per_step * cfg.samples_per_prompt} (one rollout per minibatch)")
    if cfg.kl_alarm and not (cfg.kl_coef > 0 or cfg.watch_kl):
        raise SystemExit("--kl_alarm needs the KL to the start model: --kl_coef > 0 or --watch_kl true")
    if cfg.early_stop and not cfg.val_data:
        raise SystemExit(f"--early_stop {cfg.early_stop} needs a labelled hold-out: --val_data")
    for flag in ("model", "train_data"):
        check_path(flag, getattr(cfg, flag))
    check_path("data_dir", cfg.data_dir, local=True)
    if cfg.reward != "majority" and cfg.advantage != "grpo":
        print(f"warning: --reward {cfg.reward} with --advantage {cfg.advantage}: the advantage is in the signal's "
              "units (differences of ~0.01 nats), not 0/1; Intuitor and RENT z-score it (--advantage grpo)")
    if cfg.kl_in == "reward" and cfg.kl_coef > 0 and cfg.advantage == "grpo":
        print("warning: --kl_in reward with --advantage grpo: in a unanimous group the std is only the KL's "
              "spread, so the z-score blows tiny KL differences up to unit advantages (rloo/drgrpo do not)")


def precision(cfg):
    """A run's autocast dtype (model.autocast): --amp_dtype's, or None (fp32) without --amp."""
    return DTYPES[cfg.amp_dtype] if cfg.amp else None


def check_machine(cfg):
    """After the flag checks, before anything loads or downloads: the one-GPU recipe needs a GPU, and every model
    and dataset the run names must be a local path or a hub id that exists, asked in seconds (check_source).
    The run accepted, transformers' own progress bars are silenced for it (quiet_transformers_bars)."""
    import data
    import tiny
    if cfg.device == "auto" and not torch.cuda.is_available() and not cfg.tiny:
        raise SystemExit(f"no CUDA device here, and python selftrain.py is the one-GPU recipe ({cfg.model}): "
                         "python selftrain.py --tiny is the CPU run, offline in minutes; --device cpu trains "
                         "the named model on the CPU anyway (slowly)")
    if cfg.model not in tiny.TASKS:
        check_source("model", cfg.model, "model")
    for flag, name, hub_id in data.hub_datasets(cfg):
        check_source(flag, name, "dataset", hub_id)
    quiet_transformers_bars()


FILE_TYPES = (".gguf", ".jsonl", ".json", ".parquet")


def check_path(flag, path, local=False):
    """A flag that names a local file or folder (or, local, always one) must name one that exists; hub ids
    are checked by check_source."""
    if path and (local or path.endswith(FILE_TYPES) or path.startswith((".", "/"))) and not os.path.exists(path):
        raise SystemExit(f"--{flag} {path}: no such file or folder")


HUB_ID = re.compile(r"(?:[\w.-]+/)?[\w.-]+")  # 'gpt2', 'Qwen/Qwen2.5-Math-1.5B'
HUB_WAIT_S = 8  # the longest a hub look-up may take before the run is refused


def check_source(flag, name, kind="model", hub_id=None):
    """A model or dataset must be a local path that exists or a hub id the hub has (hub_id: the one a short
    name such as math12k loads). Refused in one line, in seconds: a two-part name such as out/ckpt is both a
    folder and a hub id, so the line says both."""
    hub_id = hub_id or name
    if hub_id == name:
        check_path(flag, name)  # a path (./x, /x, x.jsonl) that is missing
        if os.path.exists(name):
            return
        if not HUB_ID.fullmatch(name):
            raise SystemExit(f"--{flag} {name}: no such file or folder")
    why = hub_lookup(hub_id, kind)
    if why:
        what = (f"no {'folder' if kind == 'model' else 'file or folder'} '{name}', and " if hub_id == name
                else f"it loads the hub {kind} {hub_id}, and ")
        raise SystemExit(f"--{flag} {name}: {what}{why}")


def hub_lookup(repo_id, kind):
    """Why the hub cannot give `kind` ('model' or 'dataset') repo_id, or None when it can (or the repo is gated,
    which the loader explains). With HF_HUB_OFFLINE only the local caches count; otherwise one request, given up
    after HUB_WAIT_S, instead of the loaders' minutes of retries against a hub that cannot be reached."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    if constants.HF_HUB_OFFLINE:
        caches = [os.path.join(constants.HF_HUB_CACHE, f"{kind}s--" + repo_id.replace("/", "--"))]
        if kind == "dataset":  # datasets keeps a cache of its own too
            caches.append(os.path.join(os.environ.get("HF_DATASETS_CACHE", os.path.join(constants.HF_HOME, "datasets")),
                                       repo_id.replace("/", "___")))
        if any(os.path.isdir(c) for c in caches):
            return None
        return f"no hub {kind} of that name in the local cache: offline (HF_HUB_OFFLINE is set)"
    answer = {}

    def ask():
        try:
            getattr(HfApi(), f"{kind}_info")(repo_id, timeout=HUB_WAIT_S)
        except GatedRepoError:
            pass
        except RepositoryNotFoundError:
            answer["why"] = f"no hub {kind} of that name (a private one needs `hf auth login`)"
        except Exception as e:  # no network, no DNS, a proxy, a hub error
            answer["why"] = (f"the hub could not be reached to look for one: offline "
                             f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:100]})")

    asker = threading.Thread(target=ask, daemon=True)  # a stuck DNS look-up ignores the request's timeout
    asker.start()
    asker.join(HUB_WAIT_S)
    return f"the hub did not answer in {HUB_WAIT_S} s: offline" if asker.is_alive() else answer.get("why")


def quiet_transformers_bars():
    """Silence transformers' own progress bars ('Loading weights', 'Writing model shards'), which would clutter
    every checkpoint; the hub's download bars are huggingface_hub's and stay."""
    from transformers.utils import logging
    logging.set_tqdm_hook(lambda factory, args, kwargs: logging.EmptyTqdm(*args, **kwargs))


# ------------------------------------------------------------------------------------------------------
# Faults: steps that must not update, out-of-memory hints, stop signals.


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
            "trained_seqs": 0, "skipped": reason, "mismatch": None, "mismatch_kl": None, "mismatch_max": None,
            "is_weight": None, "is_capped": None, "loss_scale": None}


# What to lower when a phase runs out of GPU memory, first knob first (docs/gpu.md: memory budget).
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
# Held-out evals and what each step logs


EVAL_SEED = 12_345  # every held-out eval samples from torch.manual_seed(seed + this)


def held_out_eval(model, tokenizer, sets, step, cfg, device, wb):
    """avg@k and maj@k on the held-out (and validation) sets, logged to eval.jsonl. Sampled from a random
    stream of its own, the same at every eval: evals never shift the training draws (a run with more evals
    trains identically), and every run of a seed scores its start model identically."""
    import eval as evaluation  # here, not at the top: eval.py imports this file for its flag checks
    with oom_hint("generation", cfg), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed + EVAL_SEED)
        results = evaluation.evaluate_sets(model, tokenizer, sets, k=cfg.eval_samples,
                                           max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                           chunk=cfg.gen_chunk, amp=precision(cfg),
                                           max_prompt_tokens=cfg.max_prompt_tokens)
    log_row(cfg, "eval.jsonl", {"step": step, **results}, wb, prefix="eval/")
    tqdm.write(f"eval step {step}: " + " | ".join(
        f"{name} avg@{cfg.eval_samples} {r['avg']:.3f} maj@{cfg.eval_samples} {r['maj']:.3f}"
        for name, r in results.items()))
    return results


def step_metrics(step, cfg, R, outs, groups, train_outs, label_stats, stats, times, n_params, device):
    """What one step logs: rewards and labels, lengths, the update's diagnostics, time and MFU."""
    answers = [a for group_answers, _ in groups for a in group_answers]
    gen_tokens = sum(len(o.completion_ids) for o in outs)
    train_tokens = sum(len(o.prompt_ids) + len(o.completion_ids) for o in train_outs)
    flops = (2 * n_params * sum(len(o.prompt_ids) + len(o.completion_ids) for o in outs)
             + 6 * n_params * train_tokens * cfg.ppo_epochs * cfg.minibatches)
    t0, t1, t2, t3 = times
    cuda = device.type == "cuda"
    return {"step": step + 1, "reward": R.mean().item(), **label_stats,
            "no_answer": sum(a is None for a in answers) / len(answers),
            "truncated": sum(o.truncated for o in outs) / len(outs), "resp_len": gen_tokens / len(outs),
            **stats, "lr": cfg.lr, "rollout_s": t1 - t0, "reward_s": t2 - t1, "update_s": t3 - t2,
            "tok_per_s": gen_tokens / (t1 - t0), "mfu": flops / (t3 - t0) / cfg.peak_flops if cuda else None,
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


SIGNALS = CHOICES["reward"]


def signal_ranking(groups):
    """How well each label-free reward sorts a step's responses, whichever one trains. groups: per prompt, (SRT's
    agreement with the majority [v], the rollouts [v], the gold rewards [v] or None without gold) ->
    rank_acc {signal: pairwise accuracy}: over every (right, wrong) pair of responses within a group, the share
    the signal scores the right one higher, ties half (a within-group AUROC, pooled over pairs; 0.5 = chance);
    len_corr {signal: Pearson r}: the signal against response length, both centred within each group, as the
    advantage sees them (entropy-style signals can pay short or degenerate responses)."""
    rank, corr = {}, {}
    for signal in SIGNALS:
        pairs, wins, xs, ys = 0, 0.0, [], []
        for srt_r, outs, gold in groups:
            s = srt_r if signal == "majority" else [confidence(o, signal) for o in outs]
            lens = [len(o.completion_ids) for o in outs]
            xs += [v - sum(s) / len(s) for v in s]
            ys += [v - sum(lens) / len(lens) for v in lens]
            for right in [v for v, g in zip(s, gold or []) if g == 1]:
                for wrong in [v for v, g in zip(s, gold) if g == 0]:
                    pairs, wins = pairs + 1, wins + (right > wrong) + 0.5 * (right == wrong)
        rank[signal] = wins / pairs if pairs else None
        norm = math.sqrt(sum(x * x for x in xs) * sum(y * y for y in ys))
        corr[signal] = sum(x * y for x, y in zip(xs, ys)) / norm if norm else None
    return {"rank_acc": rank, "len_corr": corr}


def mismatch(learner_logp, sampler_logp, mask):
    """How far the sampler is from the learner on the tokens scored: learner_logp, sampler_logp, mask [b, C] ->
    sums over tokens of |d| and of exp(d) - d - 1 (the k3 estimate of KL(sampler || learner), the tokens being
    the sampler's draws), and the largest |d|, d = learner - sampler; in fp64, as k3 ~ d^2 / 2 is tiny."""
    d = ((learner_logp - sampler_logp) * mask).double()                      # [b, C]
    return {"mismatch_sum": d.abs().sum().item(), "mismatch_kl_sum": (torch.expm1(d) - d).sum().item(),
            "mismatch_max": d.abs().max().item()}


def print_results(cfg, first, last, step):
    """The end of a run: the held-out change from the start model to the last eval, one line per set, then
    where the results are and the commands to run next, each working from what this run wrote."""
    k, out = cfg.eval_samples, cfg.out_dir
    for name in last if first and last else []:
        a, b = first[name], last[name]
        print(f"{name}: avg@{k} {a['avg']:.3f} -> {b['avg']:.3f} ({100 * (b['avg'] - a['avg']):+.1f} pts)"
              f" | maj@{k} {a['maj']:.3f} -> {b['maj']:.3f}")
    ckpt = os.path.join(out, "ckpt")
    best = os.path.join(out, "best")
    print(f"\nresults in {out}/: ckpt/ (the weights at step {step}; --resume continues from it)"
          + (", best/ (the best on --val_data)" if os.path.isdir(best) else "")
          + ", metrics.jsonl (a row per step), eval.jsonl (a row per held-out eval), config.json\nnext:")
    from data import eval_names
    sets = ",".join(eval_names(cfg.eval_data) + eval_names(cfg.val_data))  # held_out_eval's sets, in its order
    flags = dict(model=ckpt, data=sets, k=k, max_new_tokens=cfg.max_new_tokens, max_prompt_tokens=cfg.max_prompt_tokens,
                 temperature=cfg.temperature, limit=cfg.eval_limit, data_dir=cfg.data_dir, chunk=cfg.gen_chunk,
                 device=cfg.device, amp=cfg.amp, seed=cfg.seed + EVAL_SEED)
    commands = [(command("eval.py", flags), f"step {step}'s held-out eval again, the same samples" if last else
                 "evaluate the checkpoint"), (command("plot.py", {}, [out]), f"draw the run: {out}/curves.png")]
    if cfg.label == "majority":
        gold = f"{out.rstrip('/')}-gold"
        with open(os.path.join(out, "config.json")) as f:  # the flags as given: load_data may point --model elsewhere
            given = json.load(f)
        twin = {k: v for k, v in run_flags(given, type(cfg)).items() if k != "reward"}  # gold agreement, not confidence
        commands += [(command("selftrain.py", {**twin, "label": "gold", "out_dir": gold}),
                      "the same run with the true answers (RL), to compare"),
                     (command("plot.py", {}, [out, gold]), "both runs in one figure")]
    for cmd, why in commands:
        print(f"  {cmd}    # {why}")


def run_flags(config, cls):
    """{flag: value} of a run's config.json that differ from the defaults it started from (cls's, or the
    testbed's with --tiny), --tiny first."""
    import tiny
    base = {**asdict(cls()), **(tiny.DEFAULTS if config.get("tiny") else {})}
    changed = {k: v for k, v in config.items() if v != base.get(k) and k != "resume"}
    return dict(sorted(changed.items(), key=lambda kv: kv[0] != "tiny"))


def command(script, flags, args=()):
    """A shell command line: python script args --flag value ... ('' and 0 for --limit are left out; a boolean
    that is true and needs no value, --tiny, stands alone)."""
    import shlex
    words = ["python", script, *args]
    for k, v in flags.items():
        if v == "" or (k == "limit" and v == 0):
            continue
        value = str(v).lower() if isinstance(v, bool) else str(v)
        words += [f"--{k}"] if (k == "tiny" and v is True) else [f"--{k}", value]
    return " ".join(shlex.quote(w) for w in words)


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


def save_checkpoint(model, tokenizer, opt, step, cfg, scaler=None):
    rng = {"python": random.getstate(), "torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    final = os.path.join(cfg.out_dir, "ckpt")
    tmp = save_model(model, tokenizer, final,
                     {"step": step, "optimizer": opt.state_dict(), "rng": rng, "config": asdict(cfg),
                      "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None})
    # The previous newest becomes ckpt-<its step>, and the oldest beyond keep_ckpts are deleted.
    if os.path.exists(final):
        with open(os.path.join(final, "trainer_state.json")) as f:
            os.replace(final, f"{final}-{json.load(f)['step']}")
    os.replace(tmp, final)
    older = [path for _, path in checkpoints(cfg.out_dir) if path != final]
    for path in older[:max(len(older) - cfg.keep_ckpts + 1, 0)] if cfg.keep_ckpts else []:
        shutil.rmtree(path)


def checkpoint_to_resume(cfg):
    """With --resume, the newest complete checkpoint in out_dir as (step, path); without, (0, None). A fresh
    run refuses an out_dir holding an earlier run's checkpoints: its own saves would rotate them away. A
    resumed run cannot go back: --steps below the checkpoint's step is refused."""
    found = checkpoints(cfg.out_dir)
    if cfg.resume and not found:
        raise SystemExit(f"--resume: no checkpoint in {cfg.out_dir}")
    if found and not cfg.resume:
        raise SystemExit(f"{cfg.out_dir} holds checkpoints of an earlier run (newest: step {found[-1][0]}): "
                         f"add --resume to continue it, or choose another --out_dir")
    if found and cfg.steps < found[-1][0]:
        raise SystemExit(f"--steps {cfg.steps}: expected at least {found[-1][0]}, the step of the checkpoint "
                         f"--resume continues in {cfg.out_dir}")
    return found[-1] if found else (0, None)


def load_checkpoint(opt, path, scaler=None):
    """Restore the optimizer, fp16's loss scale, RNG states and step; the weights were loaded from the same folder."""
    state = torch.load(os.path.join(path, "trainer_state.pt"), map_location="cpu", weights_only=False)
    opt.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["step"]


@contextmanager
def run_folder(cfg):
    """Make out_dir and write its config.json for the block that sets a run up; if the block raises (bad data,
    a model that will not load, Ctrl-C), remove what this made, parent folders included: a run refused before
    it trains leaves nothing behind. A folder that was there before (a --resume folder, one the user made) stays."""
    top = os.path.abspath(cfg.out_dir)
    while not os.path.exists(os.path.dirname(top)):
        top = os.path.dirname(top)
    made = None if os.path.exists(top) else top
    os.makedirs(cfg.out_dir, exist_ok=True)
    try:
        with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:
            json.dump(asdict(cfg), f, indent=1)
        yield
    except BaseException:
        if made:
            shutil.rmtree(made, ignore_errors=True)
        raise


def truncate_logs(out_dir, step):
    """On resume, drop the rows of metrics.jsonl and eval.jsonl logged after the checkpoint's step: a hard
    crash after step s but before its checkpoint left them, and the resumed run logs those steps again."""
    for name in ("metrics.jsonl", "eval.jsonl"):
        path = os.path.join(out_dir, name)
        if os.path.exists(path):
            with open(path) as f:
                rows = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
            with open(path + ".tmp", "w") as f:
                f.writelines(rows)
            os.replace(path + ".tmp", path)
