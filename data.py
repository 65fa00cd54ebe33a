"""Problems and answers: the shipped benchmarks, local files and hub datasets, as [{'id', 'problem', 'answer'}],
and all a run reads before its weights load (load_data).

A bad row stops at load time with a message naming the file, the row and the field. The held-out
benchmarks the default evaluation needs ship in benchmarks/ (sources and licences in its README), so
`--eval_data math500` works offline; any other name, file or hub id loads as usual.
"""
import json
import os
import random
import re

import torch

import tiny
from model import encode_prompts, load_tokenizer
from rewards import extract_answer

HERE = os.path.dirname(os.path.abspath(__file__))
SHIPPED = os.path.join(HERE, "benchmarks")  # <name>.jsonl for the benchmarks below that ship with the repo
# Known benchmarks: short name -> (hub id, config, split). Fields are auto-detected.
BENCHMARKS = {
    "math500": ("HuggingFaceH4/MATH-500", None, "test"),
    "aime24": ("HuggingFaceH4/aime_2024", None, "train"),
    "aime25": ("math-ai/aime25", None, "test"),
    "amc23": ("math-ai/amc23", None, "test"),
    "amc83": ("AI-MO/aimo-validation-amc", None, "train"),
    "gsm8k": ("openai/gsm8k", "main", "test"),
}
MATH_HUB = "DigitalLearningGmbH/MATH-lighteval"  # MATH: train 7,500 and test 5,000, answers in `solution`
PROBLEM_FIELDS = ("problem", "question", "prompt", "Problem", "Question", "input")
ANSWER_FIELDS = ("answer", "Answer", "final_answer", "ground_truth", "solution", "Solution")


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


def level_of(rec):
    """{'level': int} where a record gives its difficulty (MATH: 'Level 3'), for label accuracy per level; else {}."""
    digits = re.findall(r"\d+", str(rec.get("level", "")))
    return {"level": int(digits[-1])} if digits else {}


def mean_by_level(rows, values):
    """{level: mean of values[i]} over the rows that give a 'level' (keys as strings, sorted); {} if none does."""
    groups = {}
    for row, v in zip(rows, values):
        if "level" in row:
            groups.setdefault(str(row["level"]), []).append(v)
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}


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
        rows.append({"id": str(rec.get("id", rec.get("unique_id", n))), "problem": problem, "answer": answer,
                     **level_of(rec)})
    if len(rows) < len(records):
        print(f"{source}: dropped {len(records) - len(rows)} duplicate problems")
    return rows


def benchmark_path(name, data_dir=""):
    """The local file a benchmark name resolves to: <data_dir>/<name>.jsonl when given and present, else the
    shipped copy; None when neither exists (then the hub)."""
    for folder in (data_dir, SHIPPED):
        if folder and os.path.exists(os.path.join(folder, f"{name}.jsonl")):
            return os.path.join(folder, f"{name}.jsonl")
    return None


def resolve(name, data_dir=""):
    """Where an eval-set name loads from -> ('tiny', name) for the testbed's sets, ('file', path) for a local
    copy or file, ('hub', (hub id, config, split)). <data_dir>/<name>.jsonl comes first, then the shipped copy,
    then the hub. An unknown name is refused."""
    if name in tiny.TASKS or (name.endswith("-val") and name[:-4] in tiny.TASKS):
        return "tiny", name
    if path := benchmark_path(name, data_dir):
        return "file", path
    if name in BENCHMARKS:
        return "hub", BENCHMARKS[name]
    if name.endswith((".jsonl", ".json", ".parquet")) or os.path.exists(name):
        return "file", name
    if "/" in name:
        return "hub", (name, None, "train")
    raise SystemExit(f"unknown eval set '{name}': use a benchmark name ({', '.join(BENCHMARKS)}), 'tiny', "
                     f"a .jsonl/.json/.parquet file or a hub id (owner/name)"
                     + (f"; {data_dir}/{name}.jsonl does not exist" if data_dir else ""))


def eval_names(spec):
    return [s.strip() for s in spec.split(",") if s.strip()]


def load_eval_sets(spec, data_dir="", limit=0):
    """'math500,aime24' or file paths or 'tiny' -> {name: rows} (resolve says where each name loads from). 'tiny'
    and 'tiny-val' are the testbed's held-out and validation problems ('tiny-spread' and 'tiny-spread-val' for its
    task with easy and hard problems)."""
    sets = {}
    for name in eval_names(spec):
        kind, where = resolve(name, data_dir)
        if kind == "tiny":
            rows = tiny.tiny_validation(name[:-4]) if name.endswith("-val") else tiny.tiny_heldout(task=name)
        else:
            rows = load_rows(where) if kind == "file" else load_rows(*where)
        sets[os.path.basename(name).split(".")[0]] = rows[:limit] if limit else rows
    return sets


def hub_sets(spec, data_dir=""):
    """[(name, hub id)] of the eval sets in spec that load from the hub."""
    return [(name, where[0]) for name in eval_names(spec) for kind, where in [resolve(name, data_dir)] if kind == "hub"]


def hub_datasets(cfg):
    """The hub datasets a run would load, as (flag, name given, hub id), so that they are looked up before
    anything loads (runtime.check_source)."""
    out = [(flag, name, hub_id) for flag in ("eval_data", "val_data")
           for name, hub_id in hub_sets(getattr(cfg, flag), cfg.data_dir)]
    if cfg.ttt or cfg.train_data in tiny.TASKS or os.path.exists(cfg.train_data):
        return out
    return out + [("train_data", cfg.train_data, MATH_HUB if cfg.train_data == "math12k" else cfg.train_data)]


def math12k(need_answer=False):
    """The paper's training set, MATH-12K: MATH's 7,500 train and 5,000 test problems minus the 500 of MATH-500
    (matched by problem text, whitespace aside), deduplicated: 12,000 problems from the lighteval splits."""
    key = lambda problem: " ".join(problem.split())
    held_out = {key(r["problem"]) for r in load_rows(os.path.join(SHIPPED, "math500.jsonl"))}
    rows, seen = [], set()
    for split in ("train", "test"):
        for r in load_rows(MATH_HUB, None, split, need_answer=need_answer):
            k = key(r["problem"])
            if k not in held_out and k not in seen:
                seen.add(k)
                rows.append({**r, "id": f"{split}/{r['id']}"})
    print(f"math12k: {len(rows)} problems (MATH train + test, minus MATH-500, deduplicated)")
    return rows


def load_train_rows(cfg):
    """The training problems of a run. SRT reads no answer; where the data has one, it is only logged."""
    if cfg.ttt:  # test-time training (TTRL): the held-out problems themselves, their answers only logged
        return [r for rows in load_eval_sets(cfg.eval_data, cfg.data_dir, cfg.eval_limit).values() for r in rows]
    if cfg.train_data in tiny.TASKS:
        return tiny.tiny_train(2000, cfg.seed + 1, cfg.train_data)
    if cfg.train_data == "math12k":
        return math12k(need_answer=cfg.label == "gold")
    return load_rows(cfg.train_data, cfg.train_config, cfg.train_split, cfg.problem_field, cfg.answer_field,
                     need_answer=cfg.label == "gold")


def load_data(cfg, ckpt):
    """All a run reads before the weights load, so that a bad row costs seconds, not a model load: the
    tokenizer, the training rows and their prompt ids (over-long prompts dropped), and the held-out and
    validation sets -> (tokenizer, rows, prompt_ids, eval sets, names of the validation sets). For the
    testbed, the start model is first warmed up (supervised, with labels, as the paper's Reasoning Gym runs
    start from a model that can do the task) and cached; after this, SRT uses no label."""
    if cfg.model in tiny.TASKS:
        cfg.model = tiny.tiny_warmup(seed=cfg.seed, task=cfg.model, target=cfg.warmup_target)
    random.seed(cfg.seed)  # after the warm-up, so a run that had to build it equals one that found it cached
    torch.manual_seed(cfg.seed)
    tokenizer, rows = load_tokenizer(ckpt or cfg.model), load_train_rows(cfg)
    prompt_ids = encode_prompts(tokenizer, [r["problem"] for r in rows], cfg.max_prompt_tokens)
    keep = [i for i, p in enumerate(prompt_ids) if p is not None]
    if len(keep) < len(rows):
        print(f"filtered {len(rows) - len(keep)} of {len(rows)} training prompts longer than "
              f"{cfg.max_prompt_tokens} tokens")
    if not keep:
        raise SystemExit(f"no training prompts left from '{cfg.train_data}'")
    eval_sets = load_eval_sets(cfg.eval_data, cfg.data_dir, cfg.eval_limit)
    val_sets = load_eval_sets(cfg.val_data, cfg.data_dir, cfg.eval_limit) if cfg.val_data else {}
    return tokenizer, [rows[i] for i in keep], [prompt_ids[i] for i in keep], {**eval_sets, **val_sets}, list(val_sets)
