"""A small 1-D convolutional network over a flow's feature vector or a short window of events."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from finsecure.ml.nn._common import FeatureScaler

__all__ = ["SequenceCNN"]


class SequenceCNN(nn.Module):
    """Two strided 1-D convolutions, max- and mean-pooled, then one linear layer to a logit.

    Parameters
    ----------
    n_features
        Features per step (last axis of the input).
    over
        ``"features"``: convolve along the flattened feature vector (one channel; for a single flow record,
        ``steps == 1``, where neighbouring features such as byte and packet counts form local patterns).
        ``"steps"``: convolve along time with the features as channels (a window of an entity's events).
    channels
        Channels of the second convolution (the first has half as many).
    kernel_size
        Width of both convolutions.

    Examples
    --------
    >>> import torch
    >>> SequenceCNN(5, over="steps")(torch.zeros(3, 4, 5)).shape
    torch.Size([3])
    """

    def __init__(
        self,
        n_features: int,
        *,
        over: Literal["features", "steps"] = "steps",
        channels: int = 32,
        kernel_size: int = 3,
        dropout: float = 0.1,
        squash: bool = True,
    ) -> None:
        super().__init__()
        self.over = over
        self.scaler = FeatureScaler(n_features, squash=squash)
        first = max(channels // 2, 4)
        in_channels = 1 if over == "features" else n_features
        stride = 2 if over == "features" else 1  # a long feature vector is shortened; a 16-step window is not
        pad = kernel_size // 2
        self.conv = nn.Sequential(
            nn.Conv1d(in_channels, first, kernel_size, stride=stride, padding=pad),
            nn.ReLU(),
            nn.Conv1d(first, channels, kernel_size, stride=stride, padding=pad),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.scaler(x)
        # "features": (n, 1, steps * features); "steps": (n, features, steps), the features are the channels.
        z = z.reshape(z.shape[0], 1, -1) if self.over == "features" else z.transpose(1, 2)
        h = self.conv(z)
        pooled = torch.cat([h.amax(dim=2), h.mean(dim=2)], dim=1)
        out: torch.Tensor = self.head(pooled).squeeze(1)
        return out
