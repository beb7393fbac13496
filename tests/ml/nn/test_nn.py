"""The networks themselves: shapes, the scaler, and the transformer's last-position shortcut."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finsecure.ml.nn import SequenceCNN, SequenceLSTM, SequenceTransformer
from finsecure.ml.nn._common import FeatureScaler
from finsecure.ml.nn.transformer import _Layer


@pytest.mark.parametrize(
    "module",
    [
        SequenceCNN(5, over="features"),
        SequenceCNN(5, over="steps"),
        SequenceLSTM(5, hidden=8, layers=2),
        SequenceTransformer(5, steps=6, d_model=8, heads=2, layers=2),
    ],
    ids=["cnn-features", "cnn-steps", "lstm", "transformer"],
)
def test_forward__one_finite_logit_per_row_even_with_missing_values(module: torch.nn.Module) -> None:
    x = torch.randn(7, 6, 5)
    x[0, :, 1] = float("nan")
    x[3, 2, :] = float("nan")
    out = module.eval()(x)
    assert out.shape == (7,)
    assert torch.isfinite(out).all()


def test_feature_scaler__fit_standardises_ignoring_missing_values() -> None:
    scaler = FeatureScaler(2, squash=False)
    x = torch.tensor([[1.0, 10.0], [3.0, float("nan")], [float("nan"), 30.0]])
    scaler.fit(x)
    torch.testing.assert_close(scaler.mean, torch.tensor([2.0, 20.0]))
    torch.testing.assert_close(scaler.inv_std, torch.tensor([1.0, 0.1]))
    out = scaler(x)
    torch.testing.assert_close(out, torch.tensor([[-1.0, -1.0], [1.0, 0.0], [0.0, 1.0]]))


def test_feature_scaler__squash_is_a_signed_log_and_huge_values_are_clipped() -> None:
    scaler = FeatureScaler(1, squash=True)
    x = torch.tensor([[-(np.e - 1)], [0.0], [np.e - 1]], dtype=torch.float32)
    torch.testing.assert_close(scaler.squash(x), torch.tensor([[-1.0], [0.0], [1.0]]))
    scaler.inv_std.fill_(100.0)
    assert scaler(torch.tensor([[1e9]])).item() == 8.0


def test_feature_scaler__constant_feature_is_not_divided_by_zero() -> None:
    scaler = FeatureScaler(1, squash=False)
    scaler.fit(torch.full((4, 1), 5.0))
    assert scaler.inv_std.item() == 1.0
    assert scaler(torch.tensor([[5.0]])).item() == 0.0


def test_layer__last_only_equals_the_full_layer_at_the_last_position() -> None:
    torch.manual_seed(0)
    full = _Layer(8, 2, 16, 0.0, last_only=False).eval()
    last = _Layer(8, 2, 16, 0.0, last_only=True).eval()
    last.load_state_dict(full.state_dict())
    h = torch.randn(5, 6, 8)
    with torch.no_grad():
        torch.testing.assert_close(last(h)[:, 0, :], full(h)[:, -1, :], atol=1e-5, rtol=1e-5)


def test_sequence_transformer__refuses_heads_that_do_not_divide_the_width() -> None:
    with pytest.raises(ValueError, match="multiple of heads"):
        SequenceTransformer(3, d_model=10, heads=4)
