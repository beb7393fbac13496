"""A Transformer encoder over an entity's recent behaviour (auth + cloud + payment events)."""

from __future__ import annotations

import math

import torch
from torch import nn

from finsecure.ml.nn._common import FeatureScaler

__all__ = ["SequenceTransformer"]


class _Attention(nn.Module):
    """Multi-head self-attention written with plain matmuls (exports to a small, fast ONNX graph).

    With ``last_only`` the one query is the last position: per-head dot products are then an element-wise
    product summed per head by a matmul with a 0/1 "which head" matrix, which avoids the reshapes and
    transposes of the general path (they cost more than the arithmetic at these sizes).
    """

    head_of: torch.Tensor

    def __init__(self, d_model: int, heads: int, *, last_only: bool) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not a multiple of heads {heads}")
        self.heads = heads
        self.head_dim = d_model // heads
        self.last_only = last_only
        self.q = nn.Linear(d_model, d_model)
        # Key and value biases change nothing: a key bias adds the same amount to every score of a query
        # (softmax ignores it) and a value bias passes through the weighted mean (the output bias absorbs it).
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.out = nn.Linear(d_model, d_model)
        head_of = torch.zeros(d_model, heads)
        head_of[torch.arange(d_model), torch.arange(d_model) // self.head_dim] = 1.0
        self.register_buffer("head_of", head_of)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n, length, d = h.shape
        scale = 1.0 / math.sqrt(self.head_dim)
        k, v = self.k(h), self.v(h)
        if self.last_only:
            q = self.q(h[:, -1:, :]) * scale  # (n, 1, d)
            weights = torch.softmax((k * q) @ self.head_of, dim=1)  # (n, steps, heads)
            mixed = ((weights @ self.head_of.t()) * v).sum(dim=1, keepdim=True)  # (n, 1, d)
        else:
            q = (self.q(h) * scale).reshape(n, length, self.heads, self.head_dim).transpose(1, 2)
            kh = k.reshape(n, length, self.heads, self.head_dim).transpose(1, 2)
            vh = v.reshape(n, length, self.heads, self.head_dim).transpose(1, 2)
            weights = torch.softmax(q @ kh.transpose(-1, -2), dim=-1)
            mixed = (weights @ vh).transpose(1, 2).reshape(n, length, d)
        result: torch.Tensor = self.out(mixed)
        return result


class _Layer(nn.Module):
    """A pre-norm encoder layer; with ``last_only`` only the last position is computed (as the query)."""

    def __init__(self, d_model: int, heads: int, ff: int, dropout: float, *, last_only: bool) -> None:
        super().__init__()
        self.last_only = last_only
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = _Attention(d_model, heads, last_only=last_only)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, ff), nn.GELU(), nn.Linear(ff, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        base = h[:, -1:, :] if self.last_only else h
        h = base + self.drop(self.attn(self.norm1(h)))
        out: torch.Tensor = h + self.drop(self.ff(self.norm2(h)))
        return out


class SequenceTransformer(nn.Module):
    """Linear embedding + learned positions, pre-norm encoder layers, the last position's state to a logit.

    Only the last event is scored, so the final layer computes attention and feed-forward for that one
    position (it still attends over all steps): the same result as a full encoder read at the last
    position, for a fraction of the cost.

    Parameters
    ----------
    n_features
        Features per step.
    steps
        Sequence length (positions are learned, so it is fixed).
    d_model, heads, layers, ff
        Width, attention heads, encoder layers, feed-forward width.

    Examples
    --------
    >>> import torch
    >>> SequenceTransformer(5, steps=4, d_model=8, heads=2)(torch.zeros(3, 4, 5)).shape
    torch.Size([3])
    """

    def __init__(
        self,
        n_features: int,
        *,
        steps: int = 16,
        d_model: int = 32,
        heads: int = 4,
        layers: int = 1,
        ff: int = 64,
        dropout: float = 0.1,
        squash: bool = False,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError("a transformer needs at least one layer")
        self.scaler = FeatureScaler(n_features, squash=squash)
        # No bias: the learned positions are a per-step bias already (one addition fewer per value).
        self.embed = nn.Linear(n_features, d_model, bias=False)
        self.position = nn.Parameter(torch.zeros(steps, d_model))
        nn.init.normal_(self.position, std=0.02)
        self.layers = nn.ModuleList(
            _Layer(d_model, heads, ff, dropout, last_only=i == layers - 1) for i in range(layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(self.scaler(x)) + self.position
        for layer in self.layers:
            h = layer(h)
        logit: torch.Tensor = self.head(self.norm(h[:, -1, :])).squeeze(1)
        return logit
