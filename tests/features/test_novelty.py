"""Novelty flags: first time a pair is seen, unambiguous pair keys, time-to-live."""

from __future__ import annotations

import datetime as dt

import polars as pl

from finsecure.event.schemas import Domain
from finsecure.features.config import DomainFeatures, FeatureConfig, KeyFeatures, PairFeatures
from finsecure.features.entity_index import key_buffers
from finsecure.features.novelty import pair_buffers, pair_keys
from finsecure.features.step import FeatureStep
from finsecure.pipeline.batch import Batch
from tests.features.helpers import EPOCH, canonical_frame

_CONFIG = FeatureConfig(
    domains={
        Domain.auth: DomainFeatures(
            keys=(KeyFeatures("user_id"),), pairs=(PairFeatures("user_device", "user_id", "device_id"),)
        )
    },
    novelty_ttl_s=3_600,
)


def test_pair_keys__cannot_be_confused_by_shifting_characters() -> None:
    frame = pl.DataFrame({"a": ["ab", "a", "x", None], "b": ["c", "bc", None, "y"]})
    keys = pair_keys(frame, "a", "b").to_list()
    assert keys[0] != keys[1]
    assert keys[2:] == [None, None]
    assert pair_keys(frame, "a", "missing").to_list() == [None] * 4


def test_novelty__first_time_then_again_after_ttl() -> None:
    rows = [
        {"ts": EPOCH, "user_id": "u1", "device_id": "d1"},
        {"ts": EPOCH + dt.timedelta(minutes=1), "user_id": "u1", "device_id": "d1"},
        {"ts": EPOCH + dt.timedelta(minutes=2), "user_id": "u1", "device_id": "d2"},
        {"ts": EPOCH + dt.timedelta(minutes=3), "user_id": "u2", "device_id": "d1"},
        {"ts": EPOCH + dt.timedelta(minutes=4), "user_id": "u1", "device_id": None},
        {"ts": EPOCH + dt.timedelta(hours=3), "user_id": "u1", "device_id": "d1"},
    ]
    frame = canonical_frame(Domain.auth, rows)
    out = FeatureStep(_CONFIG).process(Batch(Domain.auth, frame, source="test")).frame
    assert out["novel__user_device"].to_list() == [True, False, True, True, None, True]


def test_pair_buffers__same_keys_as_pair_keys() -> None:
    frame = pl.DataFrame(
        {
            "a": ["ab", "a", "x", None, "", "\u00e9t\u00e9", "k" * 12, "card-1"],
            "b": ["c", "bc", None, "y", "z", "", "v", "m" * 30],
        }
    )
    offsets, data, valid = pair_buffers(key_buffers(frame["a"]), key_buffers(frame["b"]))
    built = [
        bytes(data[offsets[i] : offsets[i + 1]]).decode() if valid[i] else None for i in range(frame.height)
    ]
    assert built == pair_keys(frame, "a", "b").to_list()
    assert not offsets.flags.writeable  # the same array type as Arrow's buffers (one compiled lookup)
    _, _, none_null = pair_buffers(key_buffers(frame["b"][:2]), key_buffers(frame["a"][:2]))
    assert none_null.size == 0
