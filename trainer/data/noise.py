"""Seeded image-report correspondence noise, saved so that a run can be reproduced exactly.

A fraction `rate` of the pairs is chosen with the seed; their reports are rotated one step along
a seeded cycle (a derangement: every chosen pair gets another pair's report, none keeps its own).
Labels follow the image (they describe the image, which did not change). Two chosen pairs can
still carry identical report *texts* (e.g. "normal fundus"); the record counts pairs, not texts.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from trainer.data.manifest import Sample
from trainer.errors import DataError


@dataclass(frozen=True)
class NoiseRecord:
    """Which pairs got which report: report of `indices[k]` now comes from `sources[k]`."""

    rate: float
    seed: int
    n_samples: int
    indices: list[int]
    sources: list[int]
    ids: list[str]  # sample ids at `indices`, to check the record is applied to the same list

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> NoiseRecord:
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> NoiseRecord:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            raise DataError(path, f"cannot read noise record: {exc}") from exc


def inject_noise(samples: Sequence[Sample], rate: float, seed: int) -> tuple[list[Sample], NoiseRecord]:
    """Shuffle reports among round(rate * n) seeded pairs; returns new Samples and the record.

    The originals are not modified. Noisy samples get metadata["noisy"] = True and
    metadata["report_from"] = id of the pair whose report they now carry (ground truth for
    noise-detection analyses; models must not read it).
    """
    if not 0.0 <= rate < 1.0:
        raise DataError("noise", f"noise rate must be in [0, 1), got {rate}")
    n = len(samples)
    k = round(rate * n)
    if k == 1:
        k = 2 if n >= 2 else 0  # one pair cannot swap with itself
    rng = random.Random(seed)
    chosen = rng.sample(range(n), k)
    sources = chosen[1:] + chosen[:1]  # rotate along the seeded cycle: no fixed points
    record = NoiseRecord(rate, seed, n, chosen, sources, [samples[i].id for i in chosen])
    return apply_noise(samples, record), record


def apply_noise(samples: Sequence[Sample], record: NoiseRecord) -> list[Sample]:
    """Re-apply a saved NoiseRecord to the same (clean) sample list."""
    if len(samples) != record.n_samples or [samples[i].id for i in record.indices] != record.ids:
        raise DataError("noise", "the noise record was made for a different sample list")
    out = list(samples)
    for i, src in zip(record.indices, record.sources, strict=True):
        meta = {**samples[i].metadata, "noisy": True, "report_from": samples[src].id}
        out[i] = replace(samples[i], report=samples[src].report, labels=list(samples[i].labels), metadata=meta)
    return out
