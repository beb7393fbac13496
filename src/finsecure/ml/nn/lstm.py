"""An LSTM over an entity's recent events (a card's or account's transaction sequence)."""

from __future__ import annotations

import torch
from torch import nn

from finsecure.ml.nn._common import FeatureScaler

__all__ = ["SequenceLSTM"]


class SequenceLSTM(nn.Module):
    """LSTM over the steps, oldest first; the state after the last step (the scored event) gives the logit.

    The last step's scaled features are also fed straight to the head, so the current event's own values
    (amount, distance) need not survive the recurrence to count.

    Parameters
    ----------
    n_features
        Features per step.
    hidden
        LSTM state size.
    layers
        Stacked LSTM layers.

    Examples
    --------
    >>> import torch
    >>> SequenceLSTM(5, hidden=8)(torch.zeros(3, 4, 5)).shape
    torch.Size([3])
    """

    def __init__(
        self,
        n_features: int,
        *,
        hidden: int = 32,
        layers: int = 1,
        dropout: float = 0.1,
        squash: bool = False,
    ) -> None:
        super().__init__()
        self.scaler = FeatureScaler(n_features, squash=squash)
        self.lstm = nn.LSTM(
            n_features, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.head = nn.Sequential(
            nn.Linear(hidden + n_features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.scaler(x)
        out, _ = self.lstm(z)
        last = torch.cat([out[:, -1, :], z[:, -1, :]], dim=1)
        logit: torch.Tensor = self.head(last).squeeze(1)
        return logit
