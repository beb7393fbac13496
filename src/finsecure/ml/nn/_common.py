"""Pieces every architecture shares: the input scaler baked into the network, and the input contract.

Every module takes ``x`` of shape ``(n, steps, features)`` (float32, NaN = missing; the last step is the
event being scored) and returns one logit per row, shape ``(n,)``. Scaling lives inside the network (as
buffers the trainer fills from the training data), so the exported ONNX graph takes raw feature values
and serving needs no separate preprocessing code that could drift from training.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FeatureScaler"]

_CLIP = 8.0
"""Scaled values are clipped to ``[-_CLIP, _CLIP]``: one absurd amount must not saturate every unit."""


class FeatureScaler(nn.Module):
    """Optionally ``sign(x) * log1p(|x|)``, then standardised per feature and clipped; NaN becomes 0.

    The signed log (``squash``) spreads heavy-tailed counts and amounts (bytes, euros) that plain
    standardisation would leave as a few huge values and a crowd near zero; binary flags stay two distinct
    values. It costs five element-wise operators on every value of the input, so sequence models (16 steps
    per event) leave it off and get features that are already on a sensible scale (the history step can
    store ``log1p`` of amounts); the clip bounds what is left. NaN becomes 0, the training mean.
    ``mean`` and ``inv_std`` start as the identity and are set by :meth:`fit` from training data.

    Parameters
    ----------
    n_features
        Size of the last axis of the input.
    squash
        Apply the signed log first.
    """

    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(self, n_features: int, *, squash: bool = True) -> None:
        super().__init__()
        self.squash_inputs = squash
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("inv_std", torch.ones(n_features))

    def squash(self, x: torch.Tensor) -> torch.Tensor:
        """The signed log applied before standardisation (identity when ``squash`` is off)."""
        if not self.squash_inputs:
            return x
        return torch.sign(x) * torch.log1p(torch.abs(x))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Set ``mean``/``inv_std`` from ``x`` (any shape whose last axis is the features), ignoring NaN."""
        flat = self.squash(x.reshape(-1, x.shape[-1]).double())
        present = ~torch.isnan(flat)
        count = present.sum(dim=0).clamp(min=1)
        filled = torch.where(present, flat, torch.zeros_like(flat))
        mean = filled.sum(dim=0) / count
        var = (torch.where(present, flat - mean, torch.zeros_like(flat)) ** 2).sum(dim=0) / count
        std = var.sqrt()
        self.mean.copy_(mean.float())
        self.inv_std.copy_(torch.where(std > 1e-6, 1.0 / std, torch.ones_like(std)).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (self.squash(x) - self.mean) * self.inv_std
        z = torch.where(torch.isnan(z), 0.0, z)
        return torch.clamp(z, -_CLIP, _CLIP)
