"""Query / retrieval / train / val splits following the papers' protocol, made honest.

- query and retrieval are disjoint; retrieval is everything else (or `sizes["retrieval"]` of it);
- train is drawn from retrieval, as in the papers (Open-I 500 / 2,318 / 1,000 ...);
- val is carved from retrieval too, disjoint from train: the papers select models on the test
  queries, we select on val, which is never a query (val items stay in the retrieval database);
- when patient ids exist, all images of a patient land in the same part (query, val, train,
  retrieval-only), so no patient is both a query and a database hit or both trained on and
  validated on.

Sizes are met exactly when patient groups allow it; a part may come out smaller when no remaining
group fits (groups are never split). The same samples + sizes + seed always give the same splits.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from trainer.data.manifest import Sample
from trainer.errors import DataError

DEFAULT_FRACTIONS = {"query": 0.1, "val": 0.1, "train": 0.8}
PARTS = ("query", "retrieval", "train", "val")


@dataclass
class Splits:
    query: list[Sample]
    retrieval: list[Sample]
    train: list[Sample]
    val: list[Sample]
    seed: int = 0

    def ids(self) -> dict[str, list[str]]:
        return {part: [s.id for s in getattr(self, part)] for part in PARTS}

    def counts(self) -> dict[str, int]:
        return {part: len(getattr(self, part)) for part in PARTS}


def _groups(samples: Sequence[Sample]) -> list[list[Sample]]:
    """Samples grouped by patient (first-seen order); samples without a patient id stand alone."""
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        key = f"p:{s.patient_id}" if s.patient_id is not None else f"s:{s.id}"
        groups.setdefault(key, []).append(s)
    return list(groups.values())


def _take(groups: list[list[Sample]], size: int) -> tuple[list[list[Sample]], list[list[Sample]]]:
    """Take whole groups in order while they fit into `size`; return (taken, rest)."""
    taken, rest, n = [], [], 0
    for g in groups:
        if n + len(g) <= size and n < size:
            taken.append(g)
            n += len(g)
        else:
            rest.append(g)
    return taken, rest


def _flat(groups: list[list[Sample]]) -> list[Sample]:
    return [s for g in groups for s in g]


def _resolve_sizes(n: int, sizes: dict[str, int] | None, fractions: dict[str, float] | None) -> dict[str, int]:
    if sizes is not None:
        unknown = set(sizes) - set(PARTS)
        if unknown:
            raise DataError("splits", f"unknown split name(s): {', '.join(sorted(unknown))}")
        out = {k: int(v) for k, v in sizes.items()}
        if "query" not in out:
            raise DataError("splits", "sizes must give the number of queries")
        retrieval = out.setdefault("retrieval", n - out["query"])
        if "val" not in out:
            spare = retrieval - out.get("train", round(0.9 * retrieval))
            out["val"] = max(0, min(round(0.1 * retrieval), spare))
        out.setdefault("train", retrieval - out["val"])
    else:
        f = {**DEFAULT_FRACTIONS, **(fractions or {})}
        out = {k: round(f[k] * n) for k in ("query", "val", "train")}
        out["retrieval"] = n - out["query"]
        out["train"] = min(out["train"], out["retrieval"] - out["val"])
    if min(out.values()) < 0 or out["query"] + out["retrieval"] > n:
        raise DataError("splits", f"sizes {out} do not fit {n} samples")
    if out["train"] + out["val"] > out["retrieval"]:
        raise DataError("splits", f"train + val ({out['train']} + {out['val']}) exceed retrieval ({out['retrieval']})")
    return out


def make_splits(
    samples: Sequence[Sample],
    sizes: dict[str, int] | None = None,
    fractions: dict[str, float] | None = None,
    seed: int = 0,
) -> Splits:
    """Patient-disjoint seeded splits; `sizes` (counts) wins over `fractions` (of all samples)."""
    if len({s.id for s in samples}) != len(samples):
        raise DataError("splits", "sample ids are not unique")
    want = _resolve_sizes(len(samples), sizes, fractions)
    groups = _groups(samples)
    random.Random(seed).shuffle(groups)
    query, rest = _take(groups, want["query"])
    retrieval, _unused = _take(rest, want["retrieval"])
    val, rest = _take(retrieval, want["val"])
    train, _ = _take(rest, want["train"])
    return Splits(_flat(query), _flat(retrieval), _flat(train), _flat(val), seed)


def save_splits(splits: Splits, path: str | Path) -> None:
    """Write the ids of every part (and the seed) as JSON."""
    data = {"seed": splits.seed, "counts": splits.counts(), **splits.ids()}
    Path(path).write_text(json.dumps(data, indent=1), encoding="utf-8")


def load_splits(path: str | Path, samples: Sequence[Sample]) -> Splits:
    """Rebuild Splits from a JSON of ids against `samples` (DataError if an id is unknown)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(path, f"cannot read splits: {exc}") from exc
    by_id = {s.id: s for s in samples}
    parts: dict[str, list[Sample]] = {}
    for part in PARTS:
        missing = [i for i in data.get(part, []) if i not in by_id]
        if missing:
            raise DataError(path, f"{len(missing)} {part} id(s) are not in the samples (first: {missing[0]!r})")
        parts[part] = [by_id[i] for i in data.get(part, [])]
    return Splits(**parts, seed=int(data.get("seed", 0)))
