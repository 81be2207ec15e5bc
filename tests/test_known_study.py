"""Notebooks 00 and 01 under the known-fact protocol: the screen's table from precomputed ranks, the
relations left out, the study table, and the IG path diagnostics (live and frozen post-FFN norm)."""
import numpy as np
import pandas as pd
import pytest

import kn_utils as kn
from kn_utils.experiments import attribution as exp_attr
from kn_utils.experiments import data_and_model as exp00
from kn_utils.knowledge import prompt_ranks, relation_objects, screen, screen_ranks


@pytest.fixture(scope="module")
def gemma():
    return kn.load_model("tiny-gemma")


def _counts(view):
    c = view.facts.groupby("relation").size().rename("facts_after").reset_index()
    return view.relations[["relation"]].merge(c, on="relation", how="left").fillna({"facts_after": 0})


def test_screen_from_ranks_equals_screen(llama, view):
    sample = view.sample_facts(3, seed=0, relations=["P36", "P19"])
    prompts = view.prompts[view.prompts.fact_id.isin(sample.fact_id)]
    ranks = prompt_ranks(llama, prompts, relation_objects(view.facts))
    pd.testing.assert_frame_equal(screen_ranks(ranks, sample), screen(llama, view, sample))


def test_knowledge_screen_leaves_out_relations_with_too_few_templates(llama, view):
    counts = _counts(view)
    n_t = view.relations.set_index("relation").n_templates
    few = [r for r in view.relations.relation if n_t[r] < 3 and counts.set_index("relation").facts_after[r] > 0]
    rels, left_out = exp00.probe_relations(view, counts, None, min_templates=3)
    assert set(left_out) == set(few) and not set(rels) & set(left_out)
    assert all(n_t[r] >= 3 for r in rels)
    # asked-for relations are screened as asked
    assert exp00.probe_relations(view, counts, ["P36"], min_templates=99) == (["P36"], [])
    sc = exp00.knowledge_screen(llama, view, counts, ["P36", "P19"], 2, seed=0)
    assert list(sc.table.fact_id) == list(sc.sample.fact_id)
    assert set(sc.relations.relation) == {"P36", "P19"}
    assert len(sc.ranks) == len(view.prompts[view.prompts.fact_id.isin(sc.sample.fact_id)])


def test_study_table_counts_each_fact_split(view):
    ids = view.facts[view.facts.relation.isin(["P36", "P19"])].fact_id
    counts = view.prompts[view.prompts.fact_id.isin(ids)].groupby("fact_id").size()
    rich = counts[counts >= 5].index[:6].tolist()
    facts = view.facts.set_index("fact_id").loc[rich]
    table = pd.DataFrame({"fact_id": rich, "relation": facts.relation.to_numpy(), "n_prompts": counts[rich].to_numpy(),
                          "strict_known": [True, False] * 3, "typed_known": True, "typed_usable": True,
                          "strict_share": 0.5, "typed_share": 1.0, "mean_p": 0.1, "chance": 0.01})
    sf = exp_attr.study_facts(view, table, 6, seed=0, criterion="typed", n_select=3, min_heldout=1)
    st = exp_attr.study_table(sf, table)
    assert list(st.fact_id) == sf.fact_ids
    assert (st.n_select == 3).all() and (st.n_select + st.n_heldout == st.n_prompts).all()
    assert st.set_index("fact_id").strict_known.to_dict() == table.set_index("fact_id").strict_known.loc[sf.fact_ids].to_dict()


def test_path_diagnostics_show_the_post_ffn_norm_step(gemma, llama):
    assert exp_attr.variants(llama) == {"live": False}
    assert exp_attr.variants(gemma) == {"live": False, "frozen norm": True}
    assert exp_attr.warn_live_norm(gemma, False) and "freeze_norm" in exp_attr.warn_live_norm(gemma, False)
    assert exp_attr.warn_live_norm(gemma, True) is None and exp_attr.warn_live_norm(llama, False) is None
    view = kn.load_pararel().for_model(gemma)[0]
    probe = view.prompts.head(2)
    alphas = [0.0, 0.01, 0.5, 1.0]
    paths = exp_attr.path_diagnostics(gemma, probe, [0, gemma.n_layers - 1], alphas)
    assert len(paths) == 2 * 2 * 2 * len(alphas)
    p = paths.pivot_table(index=["prompt", "layer"], columns=["variant", "alpha"], values="p")
    live, frozen = p["live"], p["frozen norm"]
    # alpha = 0 zeroes the layer's FFN output either way; alpha = 1 is the clean run either way
    np.testing.assert_allclose(live[0.0], frozen[0.0], rtol=1e-5)
    np.testing.assert_allclose(live[1.0], frozen[1.0], rtol=1e-5)
    # the live norm undoes any alpha > 0: at alpha = 0.01 the path is already (nearly) at its clean end,
    # while the frozen path is still (nearly) at its start
    span = (live[1.0] - live[0.0]).abs()
    assert ((live[0.01] - live[1.0]).abs() / span).median() < 0.2
    assert ((frozen[0.01] - frozen[0.0]).abs() / span).median() < 0.2
    assert (paths.groupby(["variant", "prompt", "layer"]).p_rel.last() == 1).all()
    gaps = exp_attr.steps_diagnostics(gemma, probe, [2, 8], "left")
    table = exp_attr.diagnostics_table(paths, gaps)
    assert list(table.variant) == ["frozen norm", "live"] or list(table.variant) == ["live", "frozen norm"]
    assert {"p_rel_at_alpha_0.01", "gap_median_m2", "gap_median_m8"} <= set(table.columns)
    t = table.set_index("variant")
    # the frozen path is smooth: its gap shrinks with m; the live one is dominated by the alpha = 0 term
    assert t.loc["frozen norm", "gap_median_m8"] < t.loc["frozen norm", "gap_median_m2"]
    assert t.loc["live", "gap_median_m8"] > t.loc["frozen norm", "gap_median_m8"]
    assert np.isfinite(t.to_numpy(dtype=float)).all()
