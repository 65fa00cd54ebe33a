"""The policy: load a Hugging Face causal LM, sample from it, and score its completions.

Three jobs, one section each:
  1. loading      -- any HF causal LM by name or path (a hub id, a save_pretrained folder, a .gguf file);
  2. rollout      -- batched sampling with `generate` and the KV cache, n samples per prompt, chunked;
  3. log-probs    -- per-token log-probs of completions that never build a full-vocab fp32
                     log-softmax for the whole batch.
The offline testbed's tokenizer and model are built in tiny.py and go through exactly this code.
"""
import copy
import functools
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# The user message of the paper's released code (examples/data_preprocess/dapo.py): problem + this suffix,
# through the model's chat template.
INSTRUCTION = " Let's think step by step and output the final answer within \\boxed{}."

# ----------------------------------------------------------------------------------------------------
# 1. Loading


def load_model(name_or_path, device="cpu", gradient_checkpointing=False):
    """Load any HF causal LM and its tokenizer (a hub id, a save_pretrained folder, or a .gguf file).
    Weights are fp32 (master weights for AdamW); bf16 comes from autocast, except in the LM head, which
    stays fp32 for the sampler and the update alike (fp32_head)."""
    from transformers import AutoModelForCausalLM

    tokenizer, (path, kw) = load_tokenizer(name_or_path), _source(name_or_path)
    try:  # transformers 5 loads in the checkpoint's dtype (bf16 for Qwen); ask for fp32 explicitly.
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kw)
    except (OSError, ValueError) as e:
        raise _load_error(name_or_path, e) from None
    if "gguf_file" in kw:  # dequantised to fp32 at load: drop the quantizer's record, which blocks saving
        model.hf_quantizer = None
        model.config.__dict__.pop("quantization_config", None)
    model.to(device)
    fp32_head(model)
    if gradient_checkpointing:
        set_gradient_checkpointing(model)
    return model, tokenizer


def _source(name_or_path):
    """(folder or hub id, from_pretrained kwargs): a .gguf file loads from its folder (gguf and accelerate)."""
    if name_or_path.endswith(".gguf"):
        folder, file = os.path.split(name_or_path)
        return folder, {"gguf_file": file}
    return name_or_path, {}


def _load_error(name_or_path, e):
    return SystemExit(f"could not load model '{name_or_path}' (a hub id, a local folder with config.json and "
                      f"weights, or a .gguf file): {e}")


def load_tokenizer(name_or_path):
    """The tokenizer alone (data can be read and checked before the weights load). It pads on the left, so
    every prompt ends where its completion starts."""
    from transformers import AutoTokenizer

    path, kw = _source(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kw)
    except (OSError, ValueError) as e:
        raise _load_error(name_or_path, e) from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        # Safe even when pad == EOS: completion masks come from the first stop token, never from pad.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _fp32_linear(linear, x):
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(x.float(), linear.weight.float(), None if linear.bias is None else linear.bias.float())


def fp32_head(model):
    """Compute the LM head in fp32 even under bf16 autocast, in `generate` and in completion_logprobs alike.
    bf16 logits are rounded by up to ~0.06 at magnitude 16, so the log-probs the sampler drew from and those
    the update scores drift apart (SmolLM2-135M on CPU: 0.027 per token on average, up to 0.19). The head's
    module keeps its weights, so checkpoints are unchanged; only its forward is replaced."""
    head = model.get_output_embeddings()
    head.forward = functools.partial(_fp32_linear, head)


def half_copy(model, dtype):
    """--sampler half: a copy of the policy in dtype (bf16, fp16) for generate, which runs it without autocast;
    its LM head keeps an fp32 weight of its own (untied from the embeddings), as the policy's head computes in
    fp32. refresh_copy fills it from the policy after each update."""
    sampler = copy.deepcopy(model).to(dtype).eval().requires_grad_(False)
    sampler.get_output_embeddings().weight = torch.nn.Parameter(
        model.get_output_embeddings().weight.detach().clone(), requires_grad=False)
    fp32_head(sampler)
    return sampler


@torch.no_grad()
def refresh_copy(sampler, model):
    sampler.load_state_dict(model.state_dict())  # each tensor cast to the copy's dtype (the head's stays fp32)


def set_gradient_checkpointing(model):
    """Recompute activations in the backward pass (CUDA memory). transformers >= 5.23 renamed the call.
    It is only active in train mode, and generation runs in eval mode, so the KV cache stays on."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable()
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def stop_token_ids(model, tokenizer):
    """Every token that ends a response: the tokenizer's EOS, the model config's EOS ids, and the chat
    turn end `<|im_end|>` when it exists (Qwen2.5-Math's generation_config stops on both)."""
    ids = {tokenizer.eos_token_id}
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos])
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(i for i in ids if i is not None)


def format_prompt(tokenizer, problem):
    """The paper's user message through the model's chat template (plain text when it has none)."""
    message = problem + INSTRUCTION
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                             add_generation_prompt=True)
    return message


def encode_prompts(tokenizer, problems, max_prompt_tokens):
    """Token ids of each formatted prompt; None where it is longer than max_prompt_tokens."""
    texts = [format_prompt(tokenizer, p) for p in problems]
    ids = tokenizer(texts, add_special_tokens=False).input_ids
    return [x if len(x) <= max_prompt_tokens else None for x in ids]


# ----------------------------------------------------------------------------------------------------
# 2. Rollout: n samples for each prompt, with generate's KV cache, in bounded chunks.


@dataclass
class Rollout:
    """One sampled response. `completion_ids` ends at (and includes) the first stop token, so EOS is in
    the loss; when no stop token came within max_new_tokens the response is `truncated`."""
    prompt_ids: list
    completion_ids: list
    text: str
    truncated: bool
    sampler_logp: list = None  # log-prob of each completion token under what generate drew it from (sampled only)
    entropy: float = None  # mean over the response's tokens (EOS in) of H(p_t), p_t the tempered sampling distribution
    self_certainty: float = None  # the same mean of KL(uniform || p_t) (Intuitor's self-certainty): token_confidence


def left_pad(seqs, pad_id):
    """[list[int]] -> input_ids [b, L] left-padded, attention_mask [b, L]."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, L - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, L - len(s):] = 1
    return ids, mask


def completion_lengths(completions, stop_ids):
    """[b, C] generated ids -> [b] length up to and including the first stop token, and [b] truncated.
    Built from the first stop token, never from `!= pad`: Qwen's pad token *is* one of its EOS tokens."""
    is_stop = torch.isin(completions, torch.tensor(stop_ids, device=completions.device))  # [b, C]
    has_stop = is_stop.any(dim=1)                                                          # [b]
    first = is_stop.int().argmax(dim=1)                                                    # [b]
    lengths = torch.where(has_stop, first + 1, torch.full_like(first, completions.shape[1]))
    return lengths, ~has_stop


def token_confidence(scores, vocab):
    """Per-token confidence of a sampling distribution: scores [b, V] tempered logits -> entropy H(p) [b] and
    self-certainty KL(U || p) = -log V' - mean_j log p_j [b], p = softmax over the first `vocab` = V' ids only: Qwen
    pads its embedding rows past the tokenizer's, and KL(U || p) would count those never-drawn ids. Computed
    before top-p, where KL(U || p) is finite (it is infinite on a truncated distribution)."""
    logp = torch.log_softmax(scores[:, :vocab].float(), dim=-1)             # [b, V']
    return -(logp.exp() * logp).sum(-1), -math.log(logp.shape[1]) - logp.mean(-1)


def recording_sampler(temperature, top_p, vocab):
    """generate's sampling with the log-prob of every drawn token recorded -> (generate kwargs, records: a dict
    of per-step [b] tensors). generate applies its own temperature and top-p warpers after any processor it is
    given, so it gets temperature 1, top-p 1, top-k 0, and the same warpers run here in generate's order with
    the recorder between them: it sees softmax(logits / temperature) before top-p, which is what the update
    scores (at top-p < 1 the nucleus renormalises, so the mismatch measures numerics only). Only one [b, V] row
    is kept: the drawn token is known once generate has appended it, when it calls its stopping criteria. The
    entropy and self-certainty of the same distribution over the real vocabulary (token_confidence) are kept too,
    [b] per step: the label-free rewards of --reward cost no second forward pass."""
    from transformers import LogitsProcessorList, StoppingCriteriaList, TemperatureLogitsWarper, TopPLogitsWarper

    records, row = {"logp": [], "entropy": [], "self_certainty": []}, {}

    def stash(input_ids, scores):                                           # scores [b, V], tempered
        row["logp"] = torch.log_softmax(scores.float(), dim=-1)
        row["entropy"], row["self_certainty"] = token_confidence(scores, vocab)  # [b], [b]
        return scores

    def gather(input_ids, scores, **kwargs):                                # input_ids [b, L]: the draw appended
        records["logp"].append(row.pop("logp").gather(1, input_ids[:, -1:]).squeeze(1))  # [b]
        records["entropy"].append(row.pop("entropy"))
        records["self_certainty"].append(row.pop("self_certainty"))
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    warpers = ([TemperatureLogitsWarper(temperature)] if temperature != 1 else []) + [stash] + \
        ([TopPLogitsWarper(top_p)] if top_p < 1 else [])
    return dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, logits_processor=LogitsProcessorList(warpers),
                stopping_criteria=StoppingCriteriaList([gather])), records


@torch.no_grad()
def rollout(model, tokenizer, prompt_ids, n, max_new_tokens, temperature=1.0, top_p=1.0,
            chunk=64, stop_ids=None, amp=False, progress=None):
    """Sample n responses for each prompt (prompt-major order: response j of prompt i is at i*n + j).

    Runs in eval mode (gradient checkpointing would silently turn the KV cache off in train mode) and under
    no_grad, not inference_mode, which turns off autocast's cache of bf16 weight copies: every weight would be
    cast again at every decode step (tiny testbed, 10 tokens: 1,202 casts against 842). At most `chunk`
    sequences are generated at once, so the KV cache is bounded.
    Samples from exactly what the update scores, softmax(logits / temperature) within top_p: transformers
    fills every knob that generate is not given from model.generation_config (a repetition penalty, min_p,
    no_repeat_ngram_size, min_new_tokens...), so generate runs with a blank one in its place (generate_raw).
    Each sampled token's log-prob under that distribution is kept on its Rollout (sampler_logp; recording_sampler)."""
    stop_ids = stop_ids or stop_token_ids(model, tokenizer)
    first = next(model.parameters())
    device = first.device
    amp = amp if first.dtype == torch.float32 else False  # a half copy (--sampler half) runs as it is, no autocast
    was_training = model.training
    model.eval()
    flat = [p for p in prompt_ids for _ in range(n)]
    out = []
    for start in range(0, len(flat), chunk):
        seqs = flat[start:start + chunk]
        ids, mask = left_pad(seqs, tokenizer.pad_token_id)
        # temperature 0 = greedy decoding, for evaluation
        sampling, records = (recording_sampler(temperature, top_p, len(tokenizer)) if temperature > 0
                             else (dict(do_sample=False), None))
        with autocast(device, amp):
            gen = generate_raw(model, input_ids=ids.to(device), attention_mask=mask.to(device),
                               max_new_tokens=max_new_tokens, eos_token_id=stop_ids,
                               pad_token_id=tokenizer.pad_token_id, use_cache=True, **sampling)
        completions = gen[:, ids.shape[1]:]                                   # [chunk, <=max_new_tokens]
        lengths, truncated = completion_lengths(completions, stop_ids)
        stats = {k: torch.stack(v, 1).cpu() for k, v in records.items()} if records else {}  # [chunk, <=max_new]
        for i, p in enumerate(seqs):
            c = completions[i, :lengths[i]].tolist()
            out.append(Rollout(p, c, tokenizer.decode(c, skip_special_tokens=True), bool(truncated[i])))
            if stats:  # sampled: each token's log-prob, and the response's mean entropy and self-certainty
                tok = {k: v[i, :lengths[i]] for k, v in stats.items()}             # [len] each
                out[-1].sampler_logp = tok["logp"].tolist()
                out[-1].entropy = tok["entropy"].mean().item()
                out[-1].self_certainty = tok["self_certainty"].mean().item()
        if progress is not None:
            progress.update(len(seqs))
    model.train(was_training)
    return out


def autocast(device, amp):
    """Mixed precision for a forward: amp False (fp32), True (bf16) or a torch dtype (bf16, fp16)."""
    return torch.autocast(device.type, dtype=amp if isinstance(amp, torch.dtype) else torch.bfloat16,
                          enabled=bool(amp))


def generate_raw(model, **kwargs):
    """model.generate(**kwargs) with a blank generation_config in place of the model's, so that nothing but
    kwargs shapes the sampling distribution."""
    from transformers import GenerationConfig

    saved, model.generation_config = model.generation_config, GenerationConfig()
    try:
        return model.generate(**kwargs)
    finally:
        model.generation_config = saved


# ----------------------------------------------------------------------------------------------------
# 3. Per-token log-probs of completions, memory-bounded.


def pack(rollouts, pad_id, device):
    """Rollouts -> input_ids [b, P+C] (prompts left-padded, completions right-padded), attention_mask
    [b, P+C], completion ids [b, C] and completion mask [b, C] (1 up to and including the stop token)."""
    P = max(len(r.prompt_ids) for r in rollouts)
    C = max(len(r.completion_ids) for r in rollouts)
    ids = torch.full((len(rollouts), P + C), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, r in enumerate(rollouts):
        p, c = r.prompt_ids, r.completion_ids
        ids[i, P - len(p):P + len(c)] = torch.tensor(p + c, dtype=torch.long)
        attn[i, P - len(p):P + len(c)] = 1
    return ids.to(device), attn.to(device), ids[:, P:].to(device), attn[:, P:].to(device)


def _chunk_logprobs(hidden, lm_head, targets, temperature, entropy_grad=False):
    """hidden [T, d], targets [T] -> log-prob [T] and entropy [T] of the temperature-scaled policy.
    Only this chunk's logits [T, V] ever exist in fp32. The entropy is a constant unless entropy_grad
    (an entropy bonus in the loss)."""
    logits = lm_head(hidden).float() / temperature      # [T, V]: divide by the sampling temperature first
    logz = torch.logsumexp(logits, dim=-1)              # [T]
    logp = logits.gather(-1, targets[:, None]).squeeze(-1) - logz
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy = logz - (logits.softmax(-1) * logits).sum(-1)
    return logp, entropy


def completion_logprobs(model, ids, attn, comp_ids, comp_mask, temperature=1.0, chunk_tokens=1024,
                        entropy_grad=False):
    """log pi(y_t | x, y_<t) for every completion token -> logp [b, C], entropy [b, C] (0 on padding;
    differentiable only with entropy_grad).

    The transformer body runs once; the LM head runs only at completion positions, a chunk of tokens at
    a time under activation checkpointing, so the backward pass recomputes each chunk's logits instead
    of keeping [b, C, V] alive. Position ids follow the attention mask, exactly as `generate` does with
    left padding, so these log-probs equal the sampler's."""
    pos = (attn.cumsum(-1) - 1).clamp(min=0)                               # [b, P+C]
    hidden = model.base_model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).last_hidden_state
    C = comp_ids.shape[1]
    hidden = hidden[:, -C - 1:-1]                                          # [b, C, d]: predicts token t
    sel = comp_mask.bool()                                                 # [b, C]
    h, targets = hidden[sel], comp_ids[sel]                                # [T, d], [T]
    lm_head = model.get_output_embeddings()
    logps, ents = [], []
    for s in range(0, len(targets), chunk_tokens):
        lp, en = checkpoint(_chunk_logprobs, h[s:s + chunk_tokens], lm_head, targets[s:s + chunk_tokens],
                            temperature, entropy_grad, use_reentrant=False)
        logps.append(lp)
        ents.append(en)
    logp = torch.zeros(comp_ids.shape, dtype=torch.float32, device=ids.device)
    entropy = torch.zeros_like(logp)
    logp = logp.masked_scatter(sel, torch.cat(logps))
    entropy = entropy.masked_scatter(sel, torch.cat(ents))
    return logp, entropy
