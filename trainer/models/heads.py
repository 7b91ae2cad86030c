"""Small trainable heads shared by the hashing methods: projection, hash layers, label classifier.

All are per-sample (Linear + LayerNorm + tanh): a code never depends on other items in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

FEATURE_NORMS = ("layer", "batch")


class Projection(nn.Module):
    """Backbone global feature -> shared embedding space.

    The input is normalised first: "layer" (LayerNorm, per sample) evens out the towers' scales;
    "batch" (BatchNorm1d: batch statistics in training, running statistics in eval, so a stored or
    query code still depends on its own sample only) also standardises each feature across cases.
    Why "batch" exists: in a library of two domains the domain offset dominates the features and
    LayerNorm keeps it, so the small within-domain differences stayed below the tanh's reach and
    all 240 demo radiographs got one code; standardised per feature, the same run separates them
    (benchmarks/results/domain_collapse.md).
    """

    def __init__(self, in_dim: int, out_dim: int, norm: str = "layer") -> None:
        super().__init__()
        if norm not in FEATURE_NORMS:
            raise ValueError(f"feature norm must be one of {', '.join(FEATURE_NORMS)}, not {norm!r}")
        first = nn.LayerNorm(in_dim) if norm == "layer" else nn.BatchNorm1d(in_dim)
        self.net = nn.Sequential(first, nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class HashHeads(nn.Module):
    """One tanh hash layer per code length, all reading the same embedding."""

    def __init__(self, in_dim: int, bits: Sequence[int]) -> None:
        super().__init__()
        self.bits = [int(b) for b in bits]
        self.layers = nn.ModuleDict({str(b): nn.Linear(in_dim, b) for b in self.bits})

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        """Continuous codes in (-1, 1) per code length; sign(h) is the binary code."""
        return {b: self.layers[str(b)](x).tanh() for b in self.bits}


class LabelClassifier(nn.Module):
    """Multi-label logits from an embedding (optional auxiliary supervision)."""

    def __init__(self, in_dim: int, n_labels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, n_labels)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)
