"""Shared by several test files: two paraphrased prompts a tiny model of either kind can read,
and the relative difference used to compare attributions (max |a − b| over max |b|)."""


def prompts_for(lm):
    if lm.is_causal:
        return ["The capital of France is [MASK].", "Albert Einstein was born in the city of [MASK] ."], ["Paris", "Paris"]
    return ["[MASK] is the capital of France.", "The capital of France is [MASK] ."], ["Paris", "Paris"]


def rel_diff(a, b):
    return float((a - b).abs().max() / b.abs().max())
