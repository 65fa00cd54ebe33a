r"""Steps 3-4 of SRT: extract each response's final answer, vote, label the prompt, reward each response.

SRT (paper §3) has no labels: a prompt's label is the majority answer of the n responses sampled for it,
and a response earns 1 when its final answer (the last \boxed{}) is equivalent to that label. RL with
ground truth is the same function with the dataset's answer as the label. Training (selftrain.py), the
held-out evaluation (eval.py), TRL's reward-function signature (`srt_reward`) and bench.py all go through
`label_and_reward`. Whether two answers are equivalent (0.5, \frac12, \dfrac{1}{2}) is grader.py's job.
"""
import re

from grader import is_equiv, vote_classes

__all__ = ["extract_answer", "is_equiv", "grade", "vote_classes", "majority_vote", "agreement", "label_and_reward",
           "confidence", "self_rewards", "srt_reward"]

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_BRACE_RE = re.compile(r"\\.|[{}]", re.S)   # "\{" is an escaped brace, not a group


def extract_answer(text):
    r"""Content of the last \boxed{...} / \fbox{...} (or "\boxed 5"), else None.

    Empty or unterminated boxes give None, so they never form a voting class."""
    if not isinstance(text, str):
        return None
    last = None
    for last in _BOX_RE.finditer(text):   # linear; keeps the last match
        pass
    if last is None:
        return None
    start = j = last.end()
    while j < len(text) and text[j].isspace():
        j += 1
    if j < len(text) and text[j] == "{":
        depth = 0
        for m in _BRACE_RE.finditer(text, j):
            if m.group() == "{":
                depth += 1
            elif m.group() == "}":
                depth -= 1
                if depth == 0:
                    return text[j + 1:m.start()].strip() or None
        return None                        # unbalanced: no answer
    if j > start:                          # "\boxed 5": a single token
        m = re.match(r"[^\s$]+", text[j:j + 1000])
        return m.group() if m else None
    return None


def grade(response, gold):
    """1.0 if the last boxed answer of response is equivalent to gold, else 0.0."""
    answer = extract_answer(response)
    return 1.0 if answer is not None and is_equiv(answer, gold) else 0.0


def majority_vote(answers, classes=None):
    r"""Majority answer of a group and its vote count -> (answer or None, count).

    Only parseable answers vote (None does not), and equivalent answers (0.5, \frac12) are one class
    (vote_classes; pass `classes` if you have them). The label is the first-seen string of the winning
    class. Ties go to the class whose first member came earliest, deterministically (the paper's code used
    Counter.most_common, which does the same for exact strings). No answer at all -> (None, 0)."""
    ids = vote_classes(answers) if classes is None else classes
    counts = {}
    for cid in ids:
        if cid is not None:
            counts[cid] = counts.get(cid, 0) + 1
    if not counts:
        return None, 0
    best = min(counts, key=lambda c: (-counts[c], c))  # ids follow first appearance: earliest wins a tie
    return answers[ids.index(best)], counts[best]


def agreement(answers, classes, label):
    """1.0 for each answer equivalent to label, else 0.0 (None never agrees). One comparison per class, not
    per response: equivalent answers share a class, and a comparison can take up to the grader's time cap."""
    first = {}
    for a, c in zip(answers, classes):
        first.setdefault(c, a)
    agrees = {c: c is not None and label is not None and is_equiv(a, label) for c, a in first.items()}
    return [float(agrees[c]) for c in classes]


def label_and_reward(answers, fixed, source="majority", shape="binary", min_share=0.0, classes=None):
    """Steps 3-4 for one prompt. answers: its n extracted answers (None = unparseable); fixed: a label from
    outside the policy (the dataset's gold answer, or the offline teacher's majority answer); source:
    'majority' (SRT), 'gold' or 'offline'. -> (label or None, rewards [n], majority answer, majority count).

    SRT ablations (the SRT code's self_consistency_threshold and soft_reward): a majority share below
    min_share leaves the prompt unlabelled, and shape 'soft' rewards each response with its answer's vote
    share instead of 0/1 agreement."""
    classes = vote_classes(answers) if classes is None else classes
    majority, count = majority_vote(answers, classes)
    label = majority if source == "majority" else fixed      # <- the one line that makes it self-rewarded
    if source == "majority" and answers and count / len(answers) < min_share:
        label = None                                         # not confident enough to be trusted as a label
    if label is not None and shape == "soft":
        return label, [classes.count(c) / len(answers) if c is not None else 0.0 for c in classes], majority, count
    return label, agreement(answers, classes, label), majority, count


def confidence(rollout, signal):
    """A response's label-free reward from its own confidence (--reward; docs/rewards.md), no answer needed: the
    mean over its tokens, EOS in, of a statistic of the distribution each token was sampled from (recorded as it
    was drawn: model.token_confidence). 'self_certainty': KL(uniform || p_t) (Intuitor, Zhao et al. 2025);
    'neg_entropy': -H(p_t) (RENT, Prabhudesai et al. 2025). Both papers z-score them within the group (GRPO)."""
    return rollout.self_certainty if signal == "self_certainty" else -rollout.entropy


def self_rewards(responses):
    """SRT rewards of one prompt's group of response texts: 1.0 iff the response's answer agrees with the
    group's majority answer; responses without an answer get 0.0 (all 0.0 if none has one)."""
    return label_and_reward([extract_answer(r) for r in responses], None, "majority")[1]


# ----------------------------------------------------------------------------------------------------
# The SRT reward in TRL's reward-function signature (docs/trl.md)


def _completion_text(completion):
    """A TRL completion as text: a string, or (conversational datasets) a list of message dicts whose last
    content is a string or a list of text parts."""
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"] if completion else ""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def srt_reward(prompts, completions, **kwargs):
    """SRT for TRL: GRPOTrainer(reward_funcs=srt_reward). TRL passes one row per completion; rows with the
    same prompt form a group, and each completion gets its self_rewards within its group. No labels are
    read. With several processes TRL may split a group across them, so every rank's rows are gathered and
    each rank scores its own rows against the whole groups. Identical prompts in one batch would merge
    their groups: deduplicate the dataset, as the paper did for DAPO."""
    mine = [(p if isinstance(p, str) else repr(p), _completion_text(c)) for p, c in zip(prompts, completions)]
    everyone, offset = [mine], 0
    import torch.distributed as dist   # lazy: only the TRL path needs torch
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        offset = sum(len(rows) for rows in everyone[:dist.get_rank()])
    rows = [row for rank_rows in everyone for row in rank_rows]
    groups = {}
    for i, (key, _) in enumerate(rows):
        groups.setdefault(key, []).append(i)
    rewards = [0.0] * len(rows)
    for idx in groups.values():
        for i, r in zip(idx, self_rewards([rows[i][1] for i in idx])):
            rewards[i] = r
    return rewards[offset:offset + len(mine)]
