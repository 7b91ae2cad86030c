"""Small trainable heads shared by the hashing methods: projection, hash layers, label classifier.

All are per-sample (Linear + LayerNorm + tanh): a code never depends on other items in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class Projection(nn.Module):
    """Backbone global feature -> shared embedding space (LayerNorm evens out the towers' scales)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

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
