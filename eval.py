"""Held-out evaluation: avg@k, maj@k, pass@k, answer-parse rate and mean length.

    python eval.py --model Qwen/Qwen2.5-Math-1.5B --data math500,amc23 --k 4
    python eval.py --model out/ckpt --data math500 --k 8                  # the shipped copy: offline
    python eval.py --model testbed/warmup-seed0 --data tiny --k 8         # the testbed

avg@k: mean accuracy of k samples per problem (pass@1 estimated with k samples; the paper's average@32).
maj@k: accuracy of the majority-voted answer among the k samples (the paper's majority@32).
pass@k: a problem counts if any of its k samples is right.
"""
import argparse
import json
import os

import runtime  # noqa: F401 (first: it sets the CPU threads' waiting before torch loads OpenMP)
import torch
from tqdm import tqdm

from data import hub_sets, load_eval_sets, mean_by_level
from model import encode_prompts, load_model, rollout
from rewards import extract_answer, is_equiv, label_and_reward
from runtime import (AT_LEAST_0, AT_LEAST_1, HelpFormatter, check_device, check_path, check_source, check_values,
                     one_line_error, parse_bool, quiet_transformers_bars)

# What each numeric flag allows (runtime.check_values refuses the rest in one line).
ALLOWED_HERE = {"k": AT_LEAST_1, "max_new_tokens": AT_LEAST_1, "max_prompt_tokens": AT_LEAST_1, "chunk": AT_LEAST_1,
                "limit": AT_LEAST_0, "seed": AT_LEAST_0, "temperature": ("a number >= 0 (0: greedy)", lambda v: v >= 0)}


def evaluate(model, tokenizer, rows, k=4, max_new_tokens=3072, temperature=1.0, chunk=64, amp=False,
             max_prompt_tokens=1024, top_p=1.0):
    """avg@k, maj@k, pass@k, parse rate and mean response length (tokens) on rows with gold answers, and
    avg@k per difficulty where rows give a 'level' (MATH's 1-5). Prompts over max_prompt_tokens are skipped
    and counted, never silently scored."""
    prompt_ids = encode_prompts(tokenizer, [r["problem"] for r in rows], max_prompt_tokens)
    skipped = sum(p is None for p in prompt_ids)
    rows = [r for r, p in zip(rows, prompt_ids) if p is not None]
    prompt_ids = [p for p in prompt_ids if p is not None]
    with tqdm(total=len(prompt_ids) * k, desc="eval", leave=False, disable=None) as bar:
        outs = rollout(model, tokenizer, prompt_ids, k, max_new_tokens, temperature, top_p, chunk, amp=amp,
                       progress=bar)
    maj = pas = parsed = length = 0.0
    avgs = []  # avg@k of each row
    for i, row in enumerate(rows):
        group = outs[i * k:(i + 1) * k]
        answers = [extract_answer(o.text) for o in group]
        _, correct, voted, _ = label_and_reward(answers, row["answer"], "gold")  # the gold reward of training
        avgs.append(sum(correct) / k)
        maj += voted is not None and is_equiv(voted, row["answer"])
        pas += any(correct)
        parsed += sum(a is not None for a in answers) / k
        length += sum(len(o.completion_ids) for o in group) / k
    n = max(len(rows), 1)
    by_level = mean_by_level(rows, avgs)
    return {"avg": sum(avgs) / n, "maj": maj / n, "pass": pas / n, "parse_rate": parsed / n,
            "mean_len": length / n, "n": len(rows), "skipped_long": skipped,
            **({"avg_by_level": by_level} if by_level else {})}


def evaluate_sets(model, tokenizer, sets, **kw):
    return {name: evaluate(model, tokenizer, rows, **kw) for name, rows in sets.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                usage="python eval.py --model MODEL [--flag value ...]")
    p.error = one_line_error
    p.add_argument("--model", required=True, help="hub id, local save_pretrained folder or .gguf file")
    p.add_argument("--data", default="math500,amc23,aime24,aime25",
                   help="comma-separated benchmark names, files, or 'tiny'")
    p.add_argument("--data_dir", default="", help="folder of <benchmark>.jsonl files read before the shipped ones")
    p.add_argument("--k", type=int, default=4, help="samples per problem")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--max_new_tokens", type=int, default=3072, help="response length limit")
    p.add_argument("--max_prompt_tokens", type=int, default=1024, help="longer prompts are skipped and counted")
    p.add_argument("--limit", type=int, default=0, help="at most this many problems per set (0: all)")
    p.add_argument("--chunk", type=int, default=256, help="sequences per generate call (the draws depend on it)")
    p.add_argument("--device", default="auto", help="'cuda', 'cpu' or 'auto'")
    p.add_argument("--amp", type=parse_bool, nargs="?", const=True, default=None,
                   help="bf16 autocast (unset: on with CUDA)")
    p.add_argument("--seed", type=int, default=0, help="seeds the sampling")
    a = p.parse_args(argv)
    a.model, a.data_dir = os.path.expanduser(a.model), os.path.expanduser(a.data_dir)
    types = {k: float if k == "temperature" else int for k in ALLOWED_HERE}
    check_values({k: getattr(a, k) for k in ALLOWED_HERE}, types, ALLOWED_HERE)
    check_device(a.device)
    check_path("data_dir", a.data_dir, local=True)
    check_source("model", a.model)  # a local path, or a hub id looked up in seconds
    for name, hub_id in hub_sets(a.data, a.data_dir):
        check_source("data", name, "dataset", hub_id)
    quiet_transformers_bars()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    sets = load_eval_sets(a.data, a.data_dir, a.limit)  # the data first: a bad row costs no model load
    model, tokenizer = load_model(a.model, device)
    torch.manual_seed(a.seed)  # after loading, so the samples depend on the seed alone (as selftrain's evals)
    results = evaluate_sets(model, tokenizer, sets, k=a.k, max_new_tokens=a.max_new_tokens,
                            temperature=a.temperature, chunk=a.chunk,
                            amp=device.startswith("cuda") if a.amp is None else a.amp,
                            max_prompt_tokens=a.max_prompt_tokens)
    for name, r in results.items():
        print(f"{name:>10}: n={r['n']} avg@{a.k} {r['avg']:.3f} maj@{a.k} {r['maj']:.3f} pass@{a.k} "
              f"{r['pass']:.3f} parsed {r['parse_rate']:.3f} mean_len {r['mean_len']:.0f}")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
