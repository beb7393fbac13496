"""The event bus: an in-process default and NATS JetStream for scale-out, behind one interface.

Example
-------
>>> bus = make_bus(None)
>>> type(bus).__name__, bus is make_bus("memory://")
('InProcessBus', True)
>>> type(make_bus("nats://127.0.0.1:4222")).__name__
'NatsBus'
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

from finsecure.bus.base import (
    Bus,
    BusClosed,
    BusError,
    BusFull,
    BusLoop,
    BusSink,
    BusSource,
    Message,
    PublishAck,
    subject_matches,
)
from finsecure.bus.memory import InProcessBus
from finsecure.bus.nats import NatsBus

__all__ = [
    "Bus",
    "BusClosed",
    "BusError",
    "BusFull",
    "BusLoop",
    "BusSink",
    "BusSource",
    "InProcessBus",
    "Message",
    "NatsBus",
    "PublishAck",
    "make_bus",
    "subject_matches",
]

_SHARED: dict[str, InProcessBus] = {}
_SHARED_LOCK = threading.Lock()


def make_bus(url: str | None) -> Bus:
    """The bus a URL names.

    ``None`` or ``memory://[name]`` gives the process-wide in-process bus of that name (the same object
    on every call, so a sink and a source in one process meet on it; a closed one is replaced).
    ``nats://host:port`` (or ``tls://``, several comma-separated) gives a new, not yet connected
    :class:`NatsBus`.

    Raises
    ------
    ValueError
        For any other URL.
    """
    if url is None or url.startswith("memory:"):
        name = urlsplit(url or "memory://").netloc or "default"
        with _SHARED_LOCK:
            bus = _SHARED.get(name)
            if bus is None or bus.closed:
                bus = _SHARED[name] = InProcessBus()
            return bus
    scheme = urlsplit(url.split(",")[0].strip()).scheme
    if scheme in ("nats", "tls"):
        return NatsBus(url)
    raise ValueError(f"unknown bus URL {url!r}: use memory:// (in-process) or nats://host:port")
