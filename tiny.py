"""The offline testbed: a character tokenizer, a tiny Qwen2 and a synthetic task with a verifiable answer.

`python selftrain.py --tiny` warms the tiny model up on 4-digit additions (supervised, with labels, as the
paper's Reasoning Gym runs start from a model that can already do the task) and then trains it with SRT,
offline on a CPU in minutes. Everything here goes through the real code path of model.py: the tokenizer is
Qwen-shaped, the chat template is Qwen's, EOS is <|im_end|>. Tests, CI, bench.py and miniature.py use it.
"""
import json
import os
import random
import time

import torch

from model import INSTRUCTION, Rollout, completion_logprobs, encode_prompts, pack, rollout
from rewards import extract_answer

EVAL_SEED = 1_000_001   # the held-out problems ('tiny'); warm-up and SRT training never see them
VALID_SEED = 1_000_002  # the warm-up's validation problems, also the labelled hold-out 'tiny-val' for early stopping

# The testbed's tasks, by name (--model, --train_data and --eval_data take it): operand lengths -> weights, for the
# problems and for the start model's warm-up. 'tiny': every problem has 4-digit operands (docs/miniature.md).
# 'tiny-spread': 2 to 7 digits, easy and hard problems, as the paper's data has; the warm-up sees 2 to 6, so the
# start model is right on most short problems and wrong on long ones. It needs --max_new_tokens 96 (7 digits: ~80).
TASKS = {"tiny": {"problems": {4: 1}, "warmup": {4: 1}},
         "tiny-spread": {"problems": dict.fromkeys(range(2, 8), 1), "warmup": dict.fromkeys(range(2, 7), 1)}}

# What --tiny sets unless a flag overrides it: 16 prompts x 16 samples, GRPO, lr 2e-5, no KL, no entropy
# bonus (the runs in docs/miniature.md were made with these), fp32 on the CPU. --watch_kl true logs the KL to
# the start model (the first sign of a collapse here) for +28% of the run's time, so it is not on by default.
DEFAULTS = dict(model="tiny", train_data="tiny", eval_data="tiny", prompts_per_step=16, samples_per_prompt=16,
                max_prompt_tokens=64, max_new_tokens=64, lr=2e-5, steps=100, eval_every=50, eval_samples=8,
                save_every=50, out_dir="out-tiny", advantage="grpo", kl_coef=0.0, entropy_coef=0.0, gen_chunk=128,
                micro_batch=128, amp=False, grad_checkpointing=False, device="cpu")


TINY_SPECIALS = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_tokenizer():
    """A character-level tokenizer built locally with `tokenizers`: Qwen's byte-level BPE with its 256
    byte symbols and no merges, so every character is a token. Being Qwen-shaped matters: transformers 5
    rebuilds a saved tokenizer from the model type's class (Qwen2Tokenizer here), and a tokenizer of any
    other shape would silently tokenize differently after a reload. Qwen-style chat template; EOS is
    <|im_end|> and the pad token is separate. The paper's instruction is one added token, so prompts stay
    short while going through exactly the real code path."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(TINY_SPECIALS + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<|pad|>", eos_token="<|im_end|>",
                                  padding_side="left", additional_special_tokens=["<|im_start|>", "<|endoftext|>"])
    tok.add_tokens([INSTRUCTION])
    tok.chat_template = TINY_TEMPLATE
    return tok


def tiny_model(tokenizer, seed=0, hidden=128, layers=4, heads=4):
    """A ~0.7M-parameter Qwen2 built from a config with random weights (no download)."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    return model


def tiny_problem(rng, digits):
    """One addition problem with zero-padded operands and its step-by-step solution: one line per column,
    right to left, `a+b+carry=sum`, then the boxed sum. Fixed-width lines keep it learnable by a tiny
    model; sampling errors in any column change the final answer, which is what majority voting fixes."""
    a, b = rng.randrange(10 ** digits), rng.randrange(10 ** digits)
    sa, sb = f"{a:0{digits}d}", f"{b:0{digits}d}"
    lines, carry = [], 0
    for x, y in zip(reversed(sa), reversed(sb)):
        s = int(x) + int(y) + carry
        lines.append(f"{x}+{y}+{carry}={s:02d}")
        carry = s // 10
    answer = str(a + b)
    return {"problem": f"{sa}+{sb}", "answer": answer,
            "solution": "\n".join(lines) + f"\n\\boxed{{{answer}}}"}


def tiny_task(n, seed, digits=4, exclude=()):
    """n distinct problems from a seeded RNG, none of whose texts are in `exclude` (held-out split). digits: the
    operands' length, or {length: weight} for a mix of lengths, i.e. of difficulties (each row's 'level')."""
    mix = digits if isinstance(digits, dict) else {digits: 1}
    lengths, weights = list(mix), list(mix.values())
    rng, rows, seen = random.Random(seed), [], set(exclude)
    while len(rows) < n:
        # one length draws nothing from rng, so the 4-digit 'tiny' problems are those they always were
        d = rng.choices(lengths, weights)[0] if len(mix) > 1 else lengths[0]
        row = tiny_problem(rng, d)
        if row["problem"] not in seen:
            seen.add(row["problem"])
            rows.append({"id": f"add{d}-{seed}-{len(rows)}", "level": d, **row})
    return rows




def answer_room(mix):
    """New tokens a solution needs: ~9 per column line, the boxed sum and EOS (4 digits: 64)."""
    return 10 * max(mix) + 24


def tiny_warmup(seed=0, task="tiny", target=0.8, max_steps=2000, batch=64, lr=1e-3, cache_dir=None, log=print):
    """Build the testbed's start policy: supervised warm-up of a tiny model on the addition task (labels
    are allowed here, as in the paper's Reasoning Gym runs), until greedy accuracy on a validation split
    reaches `target`. Cached as a save_pretrained folder; returns its path.

    Why it is robust: the step-by-step, fixed-width solution format makes every output token a local
    computation, so each seed learns in a few hundred steps instead of waiting on a lucky plateau escape."""
    name = (f"warmup-seed{seed}" + ("" if task == "tiny" else f"-{task}")
            + ("" if target == 0.8 else f"-target{target:g}"))
    path = os.path.join(cache_dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), "testbed"), name)
    if os.path.exists(os.path.join(path, "warmup.json")):
        return path
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed)
    digits = TASKS[task]["warmup"]
    valid = tiny_task(100, VALID_SEED, digits)
    exclude = {r["problem"] for r in valid + tiny_heldout(task=task) + tiny_validation(task)}
    train = tiny_task(50_000, seed + 2_000_000, digits, exclude)
    valid_ids = encode_prompts(tok, [r["problem"] for r in valid], 64)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    rng, t0, acc, step = random.Random(seed), time.time(), 0.0, 0
    while acc < target and step < max_steps:
        step += 1
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, step / 100)  # linear warm-up, then constant
        rows = rng.sample(train, batch)
        seqs = [Rollout(p, tok(r["solution"], add_special_tokens=False).input_ids + [tok.eos_token_id], "", False)
                for p, r in zip(encode_prompts(tok, [r["problem"] for r in rows], 64), rows)]
        ids, attn, comp, mask = pack(seqs, tok.pad_token_id, "cpu")
        logp, _ = completion_logprobs(model, ids, attn, comp, mask)       # [b, C]
        loss = -(logp * mask).sum() / mask.sum()                           # next-token cross-entropy
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 10 == 0 and step >= 200:  # accuracy jumps within ~50 steps: check often to stop near target
            outs = rollout(model, tok, valid_ids, 1, answer_room(digits), temperature=0)
            acc = sum(extract_answer(o.text) == r["answer"] for o, r in zip(outs, valid)) / len(valid)
            log(f"warm-up step {step}: loss {loss.item():.3f} greedy valid acc {acc:.2f} ({time.time() - t0:.0f}s)")
    if acc < target:
        raise RuntimeError(f"tiny warm-up (seed {seed}) reached only {acc:.2f} < {target} in {step} steps")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    with open(os.path.join(path, "warmup.json"), "w") as f:
        json.dump({"seed": seed, "steps": step, "greedy_valid_acc": acc, "seconds": time.time() - t0}, f)
    return path


def tiny_heldout(n=200, task="tiny"):
    """The testbed's held-out problems (eval set 'tiny', 'tiny-spread')."""
    return tiny_task(n, EVAL_SEED, TASKS[task]["problems"])


def tiny_validation(task="tiny"):
    """100 labelled problems (eval set 'tiny-val', 'tiny-spread-val'), the small labelled set for early stopping;
    for 'tiny' they are also the warm-up's validation problems."""
    return tiny_task(100, VALID_SEED, TASKS[task]["problems"])


def tiny_train(n, seed, task="tiny"):
    """SRT's training problems: fresh ones, none of them held out or in the validation set."""
    exclude = {r["problem"] for r in tiny_heldout(task=task) + tiny_validation(task)}
    return tiny_task(n, seed, TASKS[task]["problems"], exclude)
