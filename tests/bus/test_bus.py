"""make_bus: one URL setting picks the bus."""

from __future__ import annotations

import asyncio

import pytest

from finsecure.bus import InProcessBus, NatsBus, make_bus


def test_make_bus__memory_urls_share_one_bus_per_name():
    default = make_bus(None)
    assert isinstance(default, InProcessBus)
    assert make_bus("memory://") is default
    named = make_bus("memory://tenant-a")
    assert named is not default
    assert make_bus("memory://tenant-a") is named
    asyncio.run(named.close())
    assert make_bus("memory://tenant-a") is not named  # a closed bus is replaced


def test_make_bus__nats_urls_give_a_nats_bus():
    bus = make_bus("nats://10.0.0.5:4222,nats://10.0.0.6:4222")
    assert isinstance(bus, NatsBus)
    assert bus.url == "nats://10.0.0.5:4222,nats://10.0.0.6:4222"


def test_make_bus__refuses_unknown_schemes():
    with pytest.raises(ValueError, match=r"use memory:// .* or nats://host:port"):
        make_bus("kafka://broker:9092")
