"""Held-out evaluation: avg@k, maj@k, pass@k, answer-parse rate and mean length, plus the data loaders.

    python eval.py --model Qwen/Qwen2.5-Math-1.5B --data math500,amc23 --k 4
    python eval.py --model out/ckpt --data math500 --data_dir ../shared/data --k 8     # offline
    python eval.py --model testbed/warmup-seed0 --data tiny --k 8                     # the testbed

avg@k: mean accuracy of k samples per problem (pass@1 estimated with k samples; the paper's average@32).
maj@k: accuracy of the majority-voted answer among the k samples (the paper's majority@32).
pass@k: a problem counts if any of its k samples is right.
"""
import argparse
import json
import os

import torch
from tqdm import tqdm

from model import TINY_EVAL_SEED, TINY_VALID_SEED, encode_prompts, load_model, rollout, tiny_task
from rewards import extract_answer, is_equiv, majority_vote

# Known benchmarks: short name -> (hub id, config, split). Fields are auto-detected (hub-facts.md).
BENCHMARKS = {
    "math500": ("HuggingFaceH4/MATH-500", None, "test"),
    "aime24": ("HuggingFaceH4/aime_2024", None, "train"),
    "aime25": ("math-ai/aime25", None, "test"),
    "amc23": ("math-ai/amc23", None, "test"),
    "amc83": ("AI-MO/aimo-validation-amc", None, "train"),
    "gsm8k": ("openai/gsm8k", "main", "test"),
}
PROBLEM_FIELDS = ("problem", "question", "prompt", "Problem", "Question", "input")
ANSWER_FIELDS = ("answer", "Answer", "final_answer", "ground_truth", "solution", "Solution")


def tiny_heldout(n=200):
    return tiny_task(n, seed=TINY_EVAL_SEED)


# ------------------------------------------------------------------------------------------------------
# Loading problem/answer rows from a local file or the hub, with errors that name the source, row and field.


def read_records(source, config=None, split="train"):
    """Raw records (dicts) of a local .jsonl/.json/.parquet file or a hub dataset."""
    if source.endswith((".jsonl", ".json", ".parquet")) and not os.path.exists(source):
        raise SystemExit(f"{source}: no such file")
    if os.path.exists(source):
        if source.endswith(".jsonl"):
            records = []
            with open(source, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            records.append(json.loads(line))
                        except json.JSONDecodeError as e:
                            raise SystemExit(f"{source}: line {n} is not valid JSON ({e})") from None
            return records
        if source.endswith(".json"):
            with open(source, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, list):
                raise SystemExit(f"{source}: expected a JSON list of records")
            return data
        if source.endswith(".parquet"):
            import pyarrow.parquet as pq
            return pq.read_table(source).to_pylist()
        raise SystemExit(f"{source}: unknown file type (use .jsonl, .json or .parquet)")
    import datasets
    try:
        return list(datasets.load_dataset(source, config or None, split=split))
    except ValueError as e:
        if "split" not in str(e).lower():
            raise SystemExit(f"dataset '{source}': {e}") from None
        # Some datasets publish their one split under another name (ftajwar/srt_test_dataset): take it.
        d = datasets.load_dataset(source, config or None)
        if len(d) != 1:
            raise SystemExit(f"dataset '{source}' has no split '{split}'; it has {list(d)}") from None
        print(f"dataset '{source}': no split '{split}', using its only split '{next(iter(d))}'")
        return list(next(iter(d.values())))
    except Exception as e:  # unknown id, no network, missing config, ...
        raise SystemExit(f"could not load dataset '{source}' (config={config}, split={split}): "
                         f"{type(e).__name__}: {e}") from None


def answer_text(value, field):
    """A gold answer as a string: the last \\boxed{} of a solution, the part after GSM8K's '####',
    integers for integral floats (AMC stores 27.0)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if field.lower() == "solution":
        return extract_answer(text)
    if "####" in text:
        return text.split("####")[-1].strip().replace(",", "")
    return text


def load_rows(source, config=None, split="train", problem_field="", answer_field="", need_answer=True):
    """[{'id', 'problem', 'answer'}] from any source. The answer may be None when need_answer is False
    (SRT needs no labels; gold answers, when present, are only logged). Duplicate problems are dropped:
    SRT groups samples by prompt, and the paper deduplicated DAPO for that reason."""
    records = read_records(source, config, split)
    if not records:
        raise SystemExit(f"{source}: no rows (split '{split}')")
    bad = next((n for n, rec in enumerate(records) if not isinstance(rec, dict)), None)
    if bad is not None:
        raise SystemExit(f"{source}: row {bad}: expected a record with fields, got {records[bad]!r:.80}")
    columns = list(records[0].keys())
    pf = problem_field or next((c for c in PROBLEM_FIELDS if c in columns), None)
    af = answer_field or next((c for c in ANSWER_FIELDS if c in columns), None)
    if pf is None or pf not in columns:
        raise SystemExit(f"{source}: no problem field '{problem_field or '/'.join(PROBLEM_FIELDS)}'; "
                         f"columns are {columns} (name one with --problem_field)")
    if need_answer and (af is None or af not in columns):
        raise SystemExit(f"{source}: no answer field '{answer_field or '/'.join(ANSWER_FIELDS)}'; "
                         f"columns are {columns} (name one with --answer_field)")
    rows, seen = [], set()
    for n, rec in enumerate(records):
        problem = rec.get(pf)
        if isinstance(problem, list):  # a chat-format prompt (DAPO-Math-17k): the last user message
            problem = next((m.get("content") for m in reversed(problem)
                            if isinstance(m, dict) and m.get("role") == "user"), None)
        if not isinstance(problem, str) or not problem.strip():
            raise SystemExit(f"{source}: row {n}, field '{pf}': expected non-empty text, got {problem!r:.80}")
        answer = rec.get(af) if af else None
        answer = answer_text(answer, af) if answer is not None else None
        if need_answer and not answer:
            raise SystemExit(f"{source}: row {n}, field '{af}': no answer")
        if problem in seen:
            continue
        seen.add(problem)
        rows.append({"id": str(rec.get("id", rec.get("unique_id", n))), "problem": problem, "answer": answer})
    if len(rows) < len(records):
        print(f"{source}: dropped {len(records) - len(rows)} duplicate problems")
    return rows


def load_eval_sets(spec, data_dir="", limit=0):
    """'math500,aime24' or file paths or 'tiny' -> {name: rows}. With data_dir, a benchmark name reads
    <data_dir>/<name>.jsonl instead of the hub. 'tiny-val' is the testbed's 100 validation problems."""
    sets = {}
    for name in [s.strip() for s in spec.split(",") if s.strip()]:
        if name == "tiny":
            rows = tiny_heldout()
        elif name == "tiny-val":
            rows = tiny_task(100, seed=TINY_VALID_SEED)
        elif data_dir and os.path.exists(os.path.join(data_dir, f"{name}.jsonl")):
            rows = load_rows(os.path.join(data_dir, f"{name}.jsonl"))
        elif name in BENCHMARKS:
            hub_id, config, split = BENCHMARKS[name]
            rows = load_rows(hub_id, config, split)
        elif "/" in name or name.endswith((".jsonl", ".json", ".parquet")) or os.path.exists(name):
            rows = load_rows(name)  # a file or a hub id (owner/name)
        else:
            raise SystemExit(f"unknown eval set '{name}': use a benchmark name ({', '.join(BENCHMARKS)}), 'tiny', "
                             f"a .jsonl/.json/.parquet file or a hub id (owner/name)"
                             + (f"; {data_dir}/{name}.jsonl does not exist" if data_dir else ""))
        sets[os.path.basename(name).split(".")[0]] = rows[:limit] if limit else rows
    return sets


# ------------------------------------------------------------------------------------------------------
# Metrics


def evaluate(model, tokenizer, rows, k=4, max_new_tokens=3072, temperature=1.0, chunk=64, amp=False,
             max_prompt_tokens=1024, top_p=1.0):
    """avg@k, maj@k, pass@k, parse rate and mean response length (tokens) on rows with gold answers.
    Prompts over max_prompt_tokens are skipped and counted, never silently scored."""
    prompt_ids = encode_prompts(tokenizer, [r["problem"] for r in rows], max_prompt_tokens)
    skipped = sum(p is None for p in prompt_ids)
    rows = [r for r, p in zip(rows, prompt_ids) if p is not None]
    prompt_ids = [p for p in prompt_ids if p is not None]
    with tqdm(total=len(prompt_ids) * k, desc="eval", leave=False, disable=None) as bar:
        outs = rollout(model, tokenizer, prompt_ids, k, max_new_tokens, temperature, top_p, chunk, amp=amp,
                       progress=bar)
    avg = maj = pas = parsed = length = 0.0
    for i, row in enumerate(rows):
        group = outs[i * k:(i + 1) * k]
        answers = [extract_answer(o.text) for o in group]
        correct = [a is not None and is_equiv(a, row["answer"]) for a in answers]
        voted, _ = majority_vote(answers)
        avg += sum(correct) / k
        maj += voted is not None and is_equiv(voted, row["answer"])
        pas += any(correct)
        parsed += sum(a is not None for a in answers) / k
        length += sum(len(o.completion_ids) for o in group) / k
    n = max(len(rows), 1)
    return {"avg": avg / n, "maj": maj / n, "pass": pas / n, "parse_rate": parsed / n,
            "mean_len": length / n, "n": len(rows), "skipped_long": skipped}


def evaluate_sets(model, tokenizer, sets, **kw):
    return {name: evaluate(model, tokenizer, rows, **kw) for name, rows in sets.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="hub id or local save_pretrained folder")
    p.add_argument("--data", default="math500,amc23,aime24,aime25",
                   help="comma-separated benchmark names, files, or 'tiny'")
    p.add_argument("--data_dir", default="", help="folder of <benchmark>.jsonl files (offline)")
    p.add_argument("--k", type=int, default=4, help="samples per problem")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--max_new_tokens", type=int, default=3072)
    p.add_argument("--max_prompt_tokens", type=int, default=1024)
    p.add_argument("--limit", type=int, default=0, help="at most this many problems per set (0: all)")
    p.add_argument("--chunk", type=int, default=256, help="sequences per generate call")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    model, tokenizer = load_model(a.model, a.device)
    sets = load_eval_sets(a.data, a.data_dir, a.limit)
    results = evaluate_sets(model, tokenizer, sets, k=a.k, max_new_tokens=a.max_new_tokens,
                            temperature=a.temperature, chunk=a.chunk, amp=a.device.startswith("cuda"),
                            max_prompt_tokens=a.max_prompt_tokens)
    for name, r in results.items():
        print(f"{name:>10}: n={r['n']} avg@{a.k} {r['avg']:.3f} maj@{a.k} {r['maj']:.3f} pass@{a.k} "
              f"{r['pass']:.3f} parsed {r['parse_rate']:.3f} mean_len {r['mean_len']:.0f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
