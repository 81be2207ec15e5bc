"""Notebook 01's study as the editing notebooks (05, 10) read it: known facts, their prompt split and knowledge neurons, the neurons an edit touches, and the seeded sample of facts to edit.

Usage::

    study = load_study(results / "01_attribution", view)   # 01's files; the absent ones named in study.missing
    neurons = edit_neurons(study.neurons, study.relation_of, shared_ratio=0.1)
    ids = edit_sample(study.facts, neurons, n_facts=100, seed=0)   # the same facts in 05 and 10
    study.select_prompts[ids[0]]                              # the prompts its neurons were picked on
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..edits import drop_shared_neurons_among_others
from ..knowledge import SPLIT_FILE, drop_split, read_split_file
from ..neurons import as_neurons, fact_rng

Neuron = tuple[int, int]

STUDY_FILES = {"neurons": "knowledge_neurons.parquet", "split": SPLIT_FILE,
               "facts": "study_facts.parquet", "all_facts": "knowledge_neurons_all_facts.parquet"}
FACT_COLUMNS = ["fact_id", "relation", "n_prompts", "strict_known", "typed_known", "typed_share", "mean_p"]


def _neurons_by_fact(path: Path) -> dict[str, list[Neuron]]:
    """The IG knowledge neurons (``method == "IG"`` where the file has a method column) per fact."""
    df = pd.read_parquet(path)
    missing = {"fact_id", "layer", "neuron"} - set(df.columns)
    if missing:
        raise ValueError(f"{path} lacks the columns {sorted(missing)}: it must be notebook 01's knowledge neurons")
    if "method" in df:
        df = df[df["method"] == "IG"]
    return {str(f): sorted(set(as_neurons(g))) for f, g in df.groupby("fact_id", sort=False)}


@dataclass
class Study:
    """Notebook 01's study as the editing notebooks read it (``load_study``)."""

    facts: pd.DataFrame  # FACT_COLUMNS, one row per study fact (known-fact columns NaN without study_facts.parquet)
    neurons: dict[str, list[Neuron]]  # IG knowledge neurons per study fact ([] when none)
    parts: pd.DataFrame | None  # prompt_split.parquet: the study facts' prompts with split select/heldout
    all_facts: dict[str, list[Neuron]]  # 01's all-facts secondary sample (attributed on all prompts)
    missing: list[str] = field(default_factory=list)  # the 01 files that were absent

    @property
    def split(self) -> bool:
        """Whether the neurons were picked on selection prompts (False: on all prompts; fallback)."""
        return self.parts is not None

    @property
    def relation_of(self) -> dict[str, str]:
        return dict(zip(self.facts.fact_id, self.facts.relation))

    @property
    def select_prompts(self) -> dict[str, list[str]] | None:
        """Per split fact, its selection prompts in template order (the first is the one edited);
        None without a split (``edit_and_heldout`` then edits the first prompt)."""
        if self.parts is None:
            return None
        sel = self.parts[self.parts.split == "select"].sort_values(["fact_id", "template_idx"], kind="stable")
        return {str(f): g.prompt.tolist() for f, g in sel.groupby("fact_id", sort=False)}

    def heldout_view(self, view):
        """``view`` without the study facts' selection prompts (``knowledge.drop_split``); ``view`` itself without a split."""
        return view if self.parts is None else drop_split(view, self.parts, "select")

    def select_view(self, view):
        """``view`` with only the selection prompts of split facts; ``view`` itself without a split."""
        return view if self.parts is None else drop_split(view, self.parts, "heldout")


def load_study(src, view) -> Study:
    """Notebook 01's study from its results folder ``src`` for the per-model ``view`` it was made on:
    ``knowledge_neurons.parquet`` (required; IG rows), ``prompt_split.parquet``, ``study_facts.parquet``
    and ``knowledge_neurons_all_facts.parquet`` (each optional). Without the split every prompt of a
    fact counts as held out from the edit (the neurons were picked on all of them); without
    ``study_facts.parquet`` the study facts are the split's facts, else the facts with neurons, and the
    known-fact columns are NaN; without the all-facts file the wrong -> right variant has 0 facts.
    ``missing`` names the absent files.

        study = load_study(io.resolve("results/smoke/01_attribution"), view)
    """
    src = Path(src)
    if not (src / STUDY_FILES["neurons"]).is_file():
        raise FileNotFoundError(f"{src / STUDY_FILES['neurons']} not found: run notebook 01 first "
                                "(make nb NB=01_attribution PARAMS=...) or point attribution_results at its folder")
    missing = [name for name in STUDY_FILES.values() if not (src / name).is_file()]
    neurons = _neurons_by_fact(src / STUDY_FILES["neurons"])
    parts = read_split_file(src / STUDY_FILES["split"], view)
    if (src / STUDY_FILES["facts"]).is_file():
        facts = pd.read_parquet(src / STUDY_FILES["facts"])
    else:
        ids = list(dict.fromkeys(parts.fact_id)) if parts is not None else list(neurons)
        facts = pd.DataFrame({"fact_id": ids})
    facts = facts.assign(fact_id=facts.fact_id.astype(str))
    stray = sorted(set(facts.fact_id) - set(view.facts.fact_id))
    if stray:
        raise ValueError(f"{len(stray)} study facts are not in this view, e.g. {stray[0]!r}: rerun notebook 01 "
                         "with the same model")
    rel = view.facts.set_index("fact_id").relation
    facts["relation"] = facts.fact_id.map(rel)
    if "n_prompts" not in facts:
        counts = view.prompts.groupby("fact_id").size()
        facts["n_prompts"] = facts.fact_id.map(counts).astype(int)
    for col in FACT_COLUMNS:
        if col not in facts:
            facts[col] = np.nan
    facts = facts[FACT_COLUMNS + [c for c in facts.columns if c not in FACT_COLUMNS]].reset_index(drop=True)
    all_path = src / STUDY_FILES["all_facts"]
    all_facts = _neurons_by_fact(all_path) if all_path.is_file() else {}
    return Study(facts, {f: neurons.get(f, []) for f in facts.fact_id}, parts, all_facts, missing)


def edit_neurons(neurons_by_fact: dict[str, list[Neuron]], relation_of: dict[str, str],
                 shared_ratio: float | None = 0.1) -> dict[str, list[Neuron]]:
    """The neurons each fact's edit touches: its knowledge neurons minus, with ``shared_ratio`` (the
    official 0.1), those shared by more than that share of the other facts of its relation in
    ``neurons_by_fact`` (``edits.drop_shared_neurons_among_others``; facts without neurons count as
    others too, as in the official code); ``None`` keeps them all.

        kept = edit_neurons(study.neurons, study.relation_of, 0.1)
    """
    if shared_ratio is None:
        return {f: as_neurons(v) for f, v in neurons_by_fact.items()}
    if not 0 <= shared_ratio <= 1:
        raise ValueError(f"shared_ratio must be in [0, 1] or None, got {shared_ratio}")
    unknown = sorted(set(neurons_by_fact) - set(relation_of))
    if unknown:
        raise KeyError(f"no relation for facts {unknown[:3]}: relation_of must cover every fact")
    out = {}
    for rel in dict.fromkeys(relation_of[f] for f in neurons_by_fact):
        group = {f: v for f, v in neurons_by_fact.items() if relation_of[f] == rel}
        out.update({f: drop_shared_neurons_among_others(f, group, shared_ratio) for f in group})
    return {f: out[f] for f in neurons_by_fact}


def edit_sample(facts, neurons_by_fact: dict[str, list[Neuron]], n_facts: int | None, seed: int) -> list[str]:
    """A seeded sample of ``n_facts`` (None: all) of the facts (ids, or a table with ``fact_id``) that
    have neurons to edit: the ones with the smallest key ``fact_rng(seed, "edit sample:" + fact_id)``,
    in key order. A fact's key depends on nothing else, so samples are nested (n = 50 is the first 50
    of n = 100) and notebooks 05 and 10 edit the same facts when they draw as many with one seed.

        ids = edit_sample(study.facts, neurons, 100, seed=0)
    """
    if n_facts is not None and (isinstance(n_facts, bool) or not isinstance(n_facts, (int, np.integer))
                                or n_facts < 0):
        raise ValueError(f"n_facts must be an integer >= 0 or None, got {n_facts!r}")
    ids = facts.fact_id.tolist() if hasattr(facts, "columns") else list(facts)
    eligible = [str(f) for f in dict.fromkeys(ids) if len(neurons_by_fact.get(f, []))]
    keyed = sorted(eligible, key=lambda f: (fact_rng(seed, f"edit sample:{f}").random(), f))
    return keyed if n_facts is None else keyed[:n_facts]
