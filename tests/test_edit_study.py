"""What the editing notebooks (05, 10) read of notebook 01: the study files, the held-out prompts, the
official shared-neuron filter and the seeded sample of facts to edit."""
import dataclasses

import numpy as np
import pandas as pd
import pytest

from kn_utils import knowledge
from kn_utils.experiments import fact_update, study
from kn_utils.neurons import fact_rng

RELATIONS = ["P19", "P36"]


@pytest.fixture(scope="module")
def small(view):
    facts = view.sample_facts(6, seed=0, relations=RELATIONS)
    return dataclasses.replace(view, facts=facts, prompts=view.prompts[view.prompts.fact_id.isin(facts.fact_id)]
                               .reset_index(drop=True))


def write_study(folder, view, split=True, facts_file=True, all_facts=True):
    """01's files for 4 of the view's facts: neurons for 3 of them (+ activation rows to be ignored)."""
    ids = view.facts.fact_id.tolist()[:4]
    parts, _ = knowledge.split_prompts(view.prompts[view.prompts.fact_id.isin(ids)], n_select=2, seed=0)
    kn = pd.DataFrame({"fact_id": [ids[0], ids[0], ids[1], ids[2], ids[0]], "relation": "x",
                       "layer": [3, 1, 3, 2, 0], "neuron": [5, 7, 5, 9, 1],
                       "method": ["IG", "IG", "IG", "IG", "activation"]})
    kn.to_parquet(folder / "knowledge_neurons.parquet")
    if split:
        parts.to_parquet(folder / "prompt_split.parquet")
    if facts_file:
        pd.DataFrame({"fact_id": ids, "relation": "ignored", "n_prompts": 0, "strict_known": False,
                      "typed_known": True, "typed_share": 0.75, "mean_p": 0.1}).to_parquet(folder / "study_facts.parquet")
    if all_facts:
        kn.assign(fact_id=ids[3]).to_parquet(folder / "knowledge_neurons_all_facts.parquet")
    return ids, parts


def test_load_study_reads_the_split_and_the_ig_neurons(tmp_path, small):
    ids, parts = write_study(tmp_path, small)
    s = study.load_study(tmp_path, small)
    assert s.split and s.missing == [] and s.facts.fact_id.tolist() == ids
    assert s.facts.relation.tolist() == small.facts.set_index("fact_id").relation[ids].tolist()  # from the view
    assert s.facts.typed_known.all()
    assert s.neurons == {ids[0]: [(1, 7), (3, 5)], ids[1]: [(3, 5)], ids[2]: [(2, 9)], ids[3]: []}  # IG rows only
    assert s.all_facts == {ids[3]: [(1, 7), (2, 9), (3, 5)]}
    held, sel = s.heldout_view(small), s.select_view(small)
    for f in ids:
        select = parts[(parts.fact_id == f) & (parts.split == "select")].sort_values("template_idx").prompt.tolist()
        assert s.select_prompts[f] == select
        edit, heldout = fact_update.edit_and_heldout(small, f, s.select_prompts)
        # the edited prompt is a selection prompt and never among the held-out prompts
        assert edit == select[0] and edit not in heldout and not set(heldout) & set(select)
        assert heldout == held.bag(f) and sel.bag(f) == select  # drop_split's views, prompt for prompt
    other = small.facts.fact_id.iloc[5]
    assert held.bag(other) == small.bag(other)  # facts outside the study keep every prompt


def test_load_study_falls_back_without_the_optional_files(tmp_path, small):
    ids, _ = write_study(tmp_path, small, split=False, facts_file=False, all_facts=False)
    s = study.load_study(tmp_path, small)
    assert not s.split and s.select_prompts is None and s.all_facts == {}
    assert s.missing == ["prompt_split.parquet", "study_facts.parquet", "knowledge_neurons_all_facts.parquet"]
    assert s.facts.fact_id.tolist() == ids[:3]  # the facts with IG neurons
    assert s.facts.n_prompts.tolist() == [len(small.bag(f)) for f in ids[:3]] and s.facts.typed_known.isna().all()
    assert s.heldout_view(small) is small
    edit, heldout = fact_update.edit_and_heldout(small, ids[0], s.select_prompts)
    assert edit == small.bag(ids[0])[0] and heldout == small.bag(ids[0])[1:]


def test_load_study_bad_input(tmp_path, small):
    with pytest.raises(FileNotFoundError, match="run notebook 01 first"):
        study.load_study(tmp_path, small)
    ids, parts = write_study(tmp_path, small)
    parts.assign(split="train").to_parquet(tmp_path / "prompt_split.parquet")
    with pytest.raises(ValueError, match="only 'select' and 'heldout'"):
        study.load_study(tmp_path, small)
    parts.assign(prompt="Someone was born in [MASK].").to_parquet(tmp_path / "prompt_split.parquet")
    with pytest.raises(ValueError, match="not this view's"):
        study.load_study(tmp_path, small)
    parts.drop(columns="split").to_parquet(tmp_path / "prompt_split.parquet")
    with pytest.raises(ValueError, match="lacks the columns"):
        study.load_study(tmp_path, small)
    parts.to_parquet(tmp_path / "prompt_split.parquet")
    pd.DataFrame({"fact_id": ["P19_nope"]}).to_parquet(tmp_path / "study_facts.parquet")
    with pytest.raises(ValueError, match="not in this view"):
        study.load_study(tmp_path, small)
    pd.DataFrame({"fact_id": ["a"], "layer": [1]}).to_parquet(tmp_path / "knowledge_neurons.parquet")
    with pytest.raises(ValueError, match="lacks the columns"):
        study.load_study(tmp_path, small)


def test_edit_neurons_applies_the_shared_filter_within_each_relation():
    neurons = {"a": [(1, 1), (2, 2)], "b": [(1, 1), (3, 3)], "c": [(1, 1)], "d": [], "e": [(1, 1), (4, 4)]}
    rel = {"a": "R1", "b": "R1", "c": "R1", "d": "R1", "e": "R2"}
    # in R1, (1, 1) is shared by 2 of a's 3 other facts: above 0.1 * 3, dropped; e is alone in R2
    assert study.edit_neurons(neurons, rel, 0.1) == {"a": [(2, 2)], "b": [(3, 3)], "c": [], "d": [],
                                                     "e": [(1, 1), (4, 4)]}
    # with ratio 0.7 a neuron shared by 2 of 3 others (0.67) stays
    assert study.edit_neurons(neurons, rel, 0.7)["a"] == [(1, 1), (2, 2)]
    assert study.edit_neurons(neurons, rel, None) == neurons
    with pytest.raises(KeyError, match="relation_of must cover"):
        study.edit_neurons(neurons, {"a": "R1"}, 0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        study.edit_neurons(neurons, rel, 1.5)


def test_edit_sample_is_seeded_nested_and_only_takes_facts_with_neurons():
    neurons = {f"f{i}": ([(1, i)] if i % 3 else []) for i in range(30)}
    facts = pd.DataFrame({"fact_id": list(neurons)})
    eligible = [f for f, v in neurons.items() if v]
    keyed = sorted(eligible, key=lambda f: fact_rng(0, f"edit sample:{f}").random())  # the rule, by hand
    assert study.edit_sample(facts, neurons, 5, seed=0) == keyed[:5]
    assert study.edit_sample(facts, neurons, None, seed=0) == keyed
    assert study.edit_sample(facts, neurons, 12, seed=0)[:5] == keyed[:5]  # nested
    assert study.edit_sample(list(reversed(list(neurons))), neurons, 5, seed=0) == keyed[:5]  # order-free
    assert study.edit_sample(facts, neurons, 5, seed=1) != keyed[:5]
    assert study.edit_sample(facts, neurons, 100, seed=0) == keyed  # fewer qualify: all of them
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="n_facts must be"):
            study.edit_sample(facts, neurons, bad, seed=0)
    assert np.all([neurons[f] for f in study.edit_sample(facts, neurons, None, 0)])
