"""PARAREL: fetch the source files and assemble the paper's evaluation set.

Dai et al. evaluate knowledge neurons on PARAREL facts: every (subject, object) pair of a
relation is one fact (a "bag"), asked once per paraphrased template of that relation.

    from kn_utils.data import fetch_pararel, load_pararel
    fetch_pararel()                          # or: make data / python -m kn_utils.data fetch
    pr = load_pararel()
    pr.bag("P36_0")                          # 14 prompts of one fact, template order
    view, counts = pr.for_model(lm)          # single-token answers (and [Y]-final templates for causal LMs)
    sample = view.sample_facts(50, seed=0)   # 50 facts per relation, reproducible

Source files are never committed: they are copied from a local mirror or downloaded from
upstream pinned to one commit, and checked against data/pararel.SHA256SUMS.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from .io import atomic_write_bytes

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data" / "pararel"
CHECKSUMS = REPO_ROOT / "data" / "pararel.SHA256SUMS"
# plain sentences written for this project: text perplexity under ablations (notebooks 07, 08)
GENERIC_TEXT = REPO_ROOT / "data" / "generic_text.txt"
# resolved against the repo, not the CWD, so notebooks run from notebooks/ find it too
DEFAULT_MIRROR = REPO_ROOT.parent / "shared" / "data" / "pararel"

UPSTREAM_COMMIT = "922dfd9e05ef55f46af078ba4bd334989a45a618"
UPSTREAM_URL = f"https://raw.githubusercontent.com/Hunter-DDM/knowledge-neurons/{UPSTREAM_COMMIT}/"
DOWNLOAD_TIMEOUT_S = 60
MASK = "[MASK]"
MIN_TEMPLATES = 4  # the official preprocessing keeps relations with more than 3 templates

FETCH_HINT = "run `make data` (or `python -m kn_utils.data fetch`)"


class UnknownRelationError(KeyError):
    """A relation id that is not part of the (filtered) evaluation set."""

    def __str__(self) -> str:  # KeyError would repr() the message, quotes and all
        return str(self.args[0])


class ChecksumError(RuntimeError):
    """A source file whose bytes differ from data/pararel.SHA256SUMS."""


class FetchError(RuntimeError):
    """No mirror and no network: the source files cannot be obtained."""


# ----------------------------------------------------------------------------- fetching

def upstream_path(rel: str) -> str:
    """Path inside the upstream repo of a file listed in the checksums (e.g. 'patterns/P36.jsonl')."""
    if rel == "query_pairs.json":
        return "data/PARAREL/query_pairs.json"
    if rel == "relations.jsonl":
        return "data/LAMA/raw_data/relations.jsonl"
    if rel.startswith("patterns/"):
        return "data/PARAREL/raw_data/" + rel
    raise ValueError(f"no upstream location known for {rel!r}")


def read_checksums(path: str | Path = CHECKSUMS) -> dict[str, str]:
    """{relative path: sha256 hex} from a `sha256sum`-style file."""
    sums = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            digest, rel = line.split(maxsplit=1)
            sums[rel.lstrip("*")] = digest.lower()  # '*' marks binary mode in sha256sum output
    return sums


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
        return resp.read()


def fetch_pararel(dest: str | Path = DATA_DIR, mirror: str | Path | None = None, *,
                  force: bool = False, verbose: bool = False) -> Path:
    """Put the PARAREL source files into `dest`, verified against data/pararel.SHA256SUMS.

    Each file comes from `mirror` (else $PARAREL_MIRROR, else ../shared/data/pararel beside the
    repo) when the mirror has it, otherwise from GitHub pinned to commit UPSTREAM_COMMIT.
    Files already in `dest` with the right checksum are left alone unless `force`.
    Returns `dest` as a Path.

        >>> fetch_pararel("/tmp/pararel", mirror="/work/shared/data/pararel")
        PosixPath('/tmp/pararel')
    """
    dest = Path(dest)
    if mirror is None:
        mirror = os.environ.get("PARAREL_MIRROR") or DEFAULT_MIRROR
    mirror = Path(mirror)
    if verbose and not mirror.is_dir():
        print(f"no mirror at {mirror}; downloading from {UPSTREAM_URL}")

    done = {"kept": 0, "copied": 0, "downloaded": 0}
    for rel, digest in read_checksums().items():
        target = dest / rel
        if not force and target.is_file() and _sha256(target.read_bytes()) == digest:
            done["kept"] += 1
            continue
        source = mirror / rel
        if source.is_file():
            data, origin, how = source.read_bytes(), str(source), "copied"
        else:
            url = UPSTREAM_URL + upstream_path(rel)
            try:
                data = _download(url)
            except Exception as e:  # URLError, timeouts, HTTP errors: all mean "no way to get it"
                raise FetchError(
                    f"cannot get PARAREL file {rel!r}: not in mirror {mirror} and download of {url} "
                    f"failed ({e}). Either set PARAREL_MIRROR to a folder holding the source files "
                    f"and run `make data` again, or run it on a machine with network access.") from e
            origin, how = url, "downloaded"
        # verify before writing, so a bad source never replaces anything in dest
        got = _sha256(data)
        if got != digest:
            raise ChecksumError(f"checksum mismatch for {rel} from {origin}: expected {digest}, got {got}")
        atomic_write_bytes(target, data)
        done[how] += 1
        if verbose:
            print(f"{how} {rel} <- {origin}")
    if verbose:
        print(f"PARAREL in {dest}: {done['copied']} copied, {done['downloaded']} downloaded, "
              f"{done['kept']} already present and verified")
    return dest


# ----------------------------------------------------------------------------- the evaluation set

# what may follow [Y] for it to still end the sentence; same set as models.causal_prefix accepts
_Y_AT_END = re.compile(r"\[Y\][\s.,;:!?'\"]*$")


def y_at_end(pattern: str) -> bool:
    """True when [Y] is the last thing in a pattern (trailing spaces/punctuation ignored).

    Causal LMs only see the text before the blank, so they can only answer these templates.

        >>> y_at_end("[X] was born in [Y] ."), y_at_end("[Y] is the capital of [X].")
        (True, False)
    """
    return bool(_Y_AT_END.search(pattern))


class AnswerTokenizer(Protocol):
    """What `Pararel.for_model` needs from a model wrapper."""
    is_causal: bool

    def answer_token_id(self, answer: str) -> int | None: ...


@dataclass(eq=False)  # DataFrames have no single truth value to compare
class Pararel:
    """The PARAREL evaluation set (or a per-model view of it) as flat DataFrames.

    relations: relation, label, type, n_templates, n_facts
    templates: relation, template_idx, pattern, y_at_end
    facts:     fact_id, relation, bag_idx, subject, object            (+ answer_id in a model view)
    prompts:   fact_id, relation, bag_idx, template_idx, prompt, answer, y_at_end  (+ answer_id)
    dropped:   relation, n_templates, n_pairs -- relations with a pattern file left out of the set
    """
    relations: pd.DataFrame
    templates: pd.DataFrame
    facts: pd.DataFrame
    prompts: pd.DataFrame
    dropped: pd.DataFrame
    _bag_rows: dict | None = field(default=None, init=False, repr=False, compare=False)

    def _check_relation(self, rel_id: str) -> None:
        valid = self.relations.relation.tolist()
        if rel_id not in valid:
            raise UnknownRelationError(f"unknown relation {rel_id!r}; valid: {', '.join(sorted(valid, key=_rel_key))}")

    def relation(self, rel_id: str) -> pd.DataFrame:
        """Prompts of one relation, in official order.

            >>> pr.relation("P36").prompt.iloc[0]
            'The capital of Azerbaijan is [MASK] .'
        """
        self._check_relation(rel_id)
        return self.prompts[self.prompts.relation == rel_id].reset_index(drop=True)

    def bag(self, fact_id: str) -> list[str]:
        """The prompts of one fact, in template order.

            >>> len(pr.bag("P36_0"))
            14
        """
        if self._bag_rows is None:  # index once: a mask over 250k rows per call adds up
            self._bag_rows = self.prompts.groupby("fact_id", sort=False).indices
        if fact_id not in self._bag_rows:
            raise KeyError(f"unknown fact_id {fact_id!r} (format: relation_bagidx, e.g. 'P36_0')")
        return self.prompts.prompt.to_numpy()[self._bag_rows[fact_id]].tolist()

    def for_model(self, lm: AnswerTokenizer) -> tuple["Pararel", pd.DataFrame]:
        """The facts `lm` can be scored on, and per-relation counts before/after the filter.

        Keeps facts whose answer is exactly one token for `lm` (its id goes into `answer_id`);
        a causal `lm` also only gets templates whose [Y] ends the sentence. Relations that lose
        every fact stay in the view's `relations` (n_facts 0) and in the counts with zeros.

            >>> view, counts = pr.for_model(lm)
            >>> counts[["relation", "facts_before", "facts_after"]].head(2)
        """
        # one tokenizer call per distinct answer: there are ~1.7k objects but 250k prompts
        ids = {a: lm.answer_token_id(a) for a in self.facts["object"].unique()}
        ids = {a: int(i) for a, i in ids.items() if i is not None}

        facts = self.facts[self.facts["object"].isin(ids.keys())].copy()
        facts["answer_id"] = facts["object"].map(ids).astype("int64")
        prompts = self.prompts[self.prompts.fact_id.isin(facts.fact_id)].copy()
        if lm.is_causal:
            prompts = prompts[prompts.y_at_end]
        prompts["answer_id"] = prompts.answer.map(ids).astype("int64")
        facts = facts[facts.fact_id.isin(prompts.fact_id)]  # no usable template -> no fact
        templates = self.templates.merge(prompts[["relation", "template_idx"]].drop_duplicates(),
                                         on=["relation", "template_idx"])

        def per_relation(f, t, p, suffix):
            return pd.DataFrame({
                f"facts_{suffix}": f.groupby("relation").size(),
                f"templates_{suffix}": t.groupby("relation").size(),
                f"prompts_{suffix}": p.groupby("relation").size(),
            })
        counts = (self.relations[["relation"]]
                  .join(per_relation(self.facts, self.templates, self.prompts, "before"), on="relation")
                  .join(per_relation(facts, templates, prompts, "after"), on="relation")
                  .fillna(0).reset_index(drop=True))
        cols = [c for c in counts if c != "relation"]
        counts[cols] = counts[cols].astype("int64")
        counts = counts[["relation", "facts_before", "facts_after", "templates_before",
                         "templates_after", "prompts_before", "prompts_after"]]

        relations = self.relations.copy()
        relations["n_templates"] = counts.templates_after.to_numpy()
        relations["n_facts"] = counts.facts_after.to_numpy()
        view = Pararel(relations=relations, templates=templates.reset_index(drop=True),
                       facts=facts.reset_index(drop=True), prompts=prompts.reset_index(drop=True),
                       dropped=self.dropped)
        return view, counts

    def sample_facts(self, n_per_relation: int | None, seed: int,
                     relations: list[str] | None = None) -> pd.DataFrame:
        """Up to `n_per_relation` random facts of each relation (all of them if fewer or None), official order kept.

        Each relation draws from its own generator seeded by (seed, relation id), so a relation's
        sample does not change when other relations are added to or left out of the request.

            >>> pr.sample_facts(2, seed=0, relations=["P36"]).fact_id.tolist()
        """
        if n_per_relation is None:
            n_per_relation = len(self.facts)
        if n_per_relation < 0:
            raise ValueError(f"n_per_relation must be >= 0, got {n_per_relation}")
        relations = self.relations.relation.tolist() if relations is None else list(relations)
        parts = []
        for rel in relations:
            self._check_relation(rel)
            rows = self.facts[self.facts.relation == rel]
            rng = np.random.default_rng([seed, *rel.encode()])
            n = min(n_per_relation, len(rows))
            parts.append(rows.iloc[np.sort(rng.choice(len(rows), size=n, replace=False))])
        if not parts:
            return self.facts.iloc[:0].reset_index(drop=True)
        return pd.concat(parts).reset_index(drop=True)


def generic_text(path: str | Path = GENERIC_TEXT) -> list[str]:
    """The built-in plain-text sample (one sentence per line, see data/README.md)."""
    lines = [l.strip() for l in Path(path).read_text(encoding="utf-8").splitlines()]
    return [l for l in lines if l]


def filled_sentences(pararel: Pararel, relations: list[str], n: int, seed: int) -> list[str]:
    """``n`` PARAREL prompts of ``relations`` with the blank filled by the answer: plain sentences,
    one per fact (a random template), for text perplexity on prompts that no experiment attributed.

        filled_sentences(view, ["P37"], 2, seed=0)   # e.g. ['The official language of X is Y.', ...]
    """
    from .models import MASK

    prompts = pararel.prompts[pararel.prompts.relation.isin(relations)]
    if prompts.empty:
        raise ValueError(f"no prompts for relations {relations}: pick relations present in this view")
    rng = np.random.default_rng([seed, 7])
    one = prompts.groupby("fact_id", sort=False).sample(1, random_state=rng)
    one = one.iloc[rng.permutation(len(one))[:n]]
    return [p.replace(MASK, a).replace(" .", ".") for p, a in zip(one.prompt, one.answer)]


def _rel_key(rel: str) -> tuple[int, str]:
    # P101 after P36, as a person reads them
    digits = rel[1:]
    return (int(digits), rel) if digits.isdigit() else (sys.maxsize, rel)


def _need(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"PARAREL file {path} not found; {FETCH_HINT} first")
    return path


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in _need(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def load_pararel(data_dir: str | Path = DATA_DIR) -> Pararel:
    """Assemble the paper's evaluation set from the fetched source files.

    A relation is kept when query_pairs.json has pairs for it and it has more than 3 templates;
    each pair is one fact, bag index = its position in query_pairs.json, and every template gives
    one prompt with [X] -> subject and [Y] -> "[MASK]" (plain replacement, nothing normalised).

        >>> pr = load_pararel()
        >>> len(pr.relations), len(pr.facts), len(pr.templates), len(pr.prompts)
        (34, 27738, 318, 253448)
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"PARAREL data directory {data_dir} not found; {FETCH_HINT} first")
    with open(_need(data_dir / "query_pairs.json"), encoding="utf-8") as f:
        pairs: dict[str, list[list[str]]] = json.load(f)
    meta = {r["relation"]: r for r in _read_jsonl(data_dir / "relations.jsonl")}

    rel_rows, tpl_rows, fact_rows, prompt_rows, dropped = [], [], [], [], []
    for rel, rel_pairs in pairs.items():  # dict order == file order == official relation order
        patterns = [p["pattern"] for p in _read_jsonl(data_dir / "patterns" / f"{rel}.jsonl")]
        if not rel_pairs or len(patterns) < MIN_TEMPLATES:
            dropped.append((rel, len(patterns), len(rel_pairs)))
            continue
        ends = [y_at_end(p) for p in patterns]
        m = meta.get(rel, {})
        rel_rows.append((rel, m.get("label"), m.get("type"), len(patterns), len(rel_pairs)))
        tpl_rows += [(rel, t, p, e) for t, (p, e) in enumerate(zip(patterns, ends))]
        for b, (subj, obj) in enumerate(rel_pairs):
            fid = f"{rel}_{b}"
            fact_rows.append((fid, rel, b, subj, obj))
            # [Y] first: a subject that happened to contain "[Y]" must stay literal
            prompt_rows += [(fid, rel, b, t, p.replace("[Y]", MASK).replace("[X]", subj), obj, e)
                            for t, (p, e) in enumerate(zip(patterns, ends))]

    # relations with templates but no pairs never reach the loop above; report them too
    for path in sorted((data_dir / "patterns").glob("*.jsonl"), key=lambda p: _rel_key(p.stem)):
        if path.stem not in pairs:
            dropped.append((path.stem, len(_read_jsonl(path)), 0))

    return Pararel(
        relations=pd.DataFrame(rel_rows, columns=["relation", "label", "type", "n_templates", "n_facts"]),
        templates=pd.DataFrame(tpl_rows, columns=["relation", "template_idx", "pattern", "y_at_end"]),
        facts=pd.DataFrame(fact_rows, columns=["fact_id", "relation", "bag_idx", "subject", "object"]),
        prompts=pd.DataFrame(prompt_rows, columns=["fact_id", "relation", "bag_idx", "template_idx",
                                                   "prompt", "answer", "y_at_end"]),
        dropped=pd.DataFrame(dropped, columns=["relation", "n_templates", "n_pairs"]),
    )


# ----------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kn_utils.data", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    fp = sub.add_parser("fetch", help="copy/download the PARAREL source files and verify them")
    fp.add_argument("--dest", default=str(DATA_DIR), help="where to put the files (default: %(default)s)")
    fp.add_argument("--mirror", default=None,
                    help=f"local folder with the files (default: $PARAREL_MIRROR, else {DEFAULT_MIRROR})")
    fp.add_argument("--force", action="store_true", help="re-copy files even when already verified")
    args = ap.parse_args(argv)
    try:
        fetch_pararel(args.dest, args.mirror, force=args.force, verbose=True)
    except (FetchError, ChecksumError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
