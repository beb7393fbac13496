"""Ids, tokens and addresses for many entities at once: NumPy integers in, Polars strings out.

Nothing here loops over entities in Python; the simulator builds millions of ids this way.

Example
-------
>>> hex_ids("card_", np.array([1, 2], dtype=np.uint64), key=7).to_list()
['card_bd64a5d9adefe000', 'card_63033b0ca389c35a']
>>> ipv4_text(np.array([ip_to_int("100.64.0.1"), ip_to_int("10.0.3.4")], dtype=np.uint32)).to_list()
['100.64.0.1', '10.0.3.4']
>>> seq_ids("emp_", 3, width=4).to_list()
['emp_0000', 'emp_0001', 'emp_0002']
"""

from __future__ import annotations

import ipaddress

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

__all__ = ["ascii_rows", "hex_ids", "int_to_ip", "ip_to_int", "ipv4_text", "mix64", "seq_ids", "uniform01"]

U64 = npt.NDArray[np.uint64]

_HEX_PAIRS = np.frombuffer(b"".join(f"{i:02x}".encode() for i in range(256)), dtype=np.uint8).reshape(256, 2)


def mix64(values: npt.ArrayLike, key: int = 0) -> U64:
    """A bijective 64-bit mixer (SplitMix64 finaliser) of ``values`` keyed by ``key``.

    Distinct inputs give distinct outputs, so tokens built from distinct indices never collide, yet
    they look random. Works on arrays only (NumPy wraps silently on arrays, as wanted here).
    """
    x = np.asarray(values).astype(np.uint64, copy=True)
    x ^= np.asarray([key & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64)
    x += np.asarray([0x9E3779B97F4A7C15], dtype=np.uint64)
    x ^= x >> np.uint64(30)
    x *= np.asarray([0xBF58476D1CE4E5B9], dtype=np.uint64)
    x ^= x >> np.uint64(27)
    x *= np.asarray([0x94D049BB133111EB], dtype=np.uint64)
    x ^= x >> np.uint64(31)
    return x


def uniform01(values: npt.ArrayLike, key: int) -> npt.NDArray[np.float64]:
    """Deterministic pseudo-random numbers in [0, 1) from integers (a keyed hash, not a stream)."""
    return (mix64(values, key) >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def ascii_rows(prefix: str, body: npt.NDArray[np.uint8]) -> pl.Series:
    """Strings ``prefix + row`` from an ``(n, w)`` matrix of ASCII codes."""
    n, width = body.shape
    head = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    total = len(head) + width
    matrix = np.empty((n, total), dtype=np.uint8)
    matrix[:, : len(head)] = head
    matrix[:, len(head) :] = body
    offsets = np.arange(n + 1, dtype=np.int64) * total
    array = pa.Array.from_buffers(
        pa.large_string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(matrix))]
    )
    series = pl.from_arrow(array)
    assert isinstance(series, pl.Series)  # noqa: S101 - from_arrow of an Array is a Series
    return series


def hex_ids(prefix: str, values: npt.ArrayLike, *, key: int, digits: int = 16) -> pl.Series:
    """Opaque tokens ``prefix + hex`` from distinct integers (unique when ``digits == 16``).

    Parameters
    ----------
    prefix
        ASCII text put in front, e.g. ``"card_"``.
    values
        Non-negative integers; distinct values give distinct tokens.
    key
        Keys the mixer, so another run (seed) gets other tokens for the same indices.
    digits
        Hex digits kept (the high ones), 1 to 16.
    """
    mixed = mix64(values, key)
    pairs = _HEX_PAIRS[mixed.astype(">u8").view(np.uint8).reshape(-1, 8)].reshape(-1, 16)
    return ascii_rows(prefix, pairs[:, :digits])


def seq_ids(prefix: str, count: int, *, start: int = 0, width: int = 0) -> pl.Series:
    """Readable sequential ids ``prefix + number`` (zero-padded to ``width`` digits)."""
    text = pl.int_range(start, start + count, dtype=pl.Int64, eager=True).cast(pl.String)
    if width:
        text = text.str.zfill(width)
    return pl.select(pl.concat_str([pl.lit(prefix), pl.lit(text)])).to_series()


def ipv4_text(addresses: npt.ArrayLike) -> pl.Series:
    """Dotted-quad text of IPv4 addresses given as unsigned 32-bit integers."""
    ints = np.asarray(addresses).astype(np.uint32, copy=False)
    octets = pl.DataFrame({f"o{k}": (ints >> np.uint32(24 - 8 * k)) & np.uint32(255) for k in range(4)})
    return octets.select(pl.format("{}.{}.{}.{}", "o0", "o1", "o2", "o3")).to_series()


def ip_to_int(text: str) -> int:
    """The integer of a dotted-quad IPv4 address."""
    return int(ipaddress.IPv4Address(text))


def int_to_ip(value: int) -> str:
    """The dotted-quad text of an IPv4 address given as an integer."""
    return str(ipaddress.IPv4Address(value))
