from __future__ import annotations

import ipaddress

import numpy as np

from finsecure.sim.text import hex_ids, int_to_ip, ip_to_int, ipv4_text, mix64, seq_ids, uniform01


def test_mix64__distinct_inputs_stay_distinct() -> None:
    values = np.arange(200_000, dtype=np.uint64)
    assert len(np.unique(mix64(values, 5))) == len(values)
    assert not np.array_equal(mix64(values, 5), mix64(values, 6))


def test_uniform01__in_unit_interval() -> None:
    u = uniform01(np.arange(100_000), 3)
    assert (u >= 0).all()
    assert (u < 1).all()
    assert 0.49 < float(u.mean()) < 0.51


def test_hex_ids__tokens_are_unique_and_never_card_numbers() -> None:
    ids = hex_ids("card_", np.arange(50_000, dtype=np.uint64), key=1)
    assert ids.n_unique() == 50_000
    assert ids.str.contains(r"^card_[0-9a-f]{16}$").all()
    assert not ids.str.contains(r"^[0-9]{13,19}$").any()


def test_ipv4_text__round_trip() -> None:
    addresses = np.array(
        [1, ip_to_int("100.64.0.1"), ip_to_int("198.19.255.255"), 2**32 - 1], dtype=np.uint32
    )
    text = ipv4_text(addresses).to_list()
    assert text == ["0.0.0.1", "100.64.0.1", "198.19.255.255", "255.255.255.255"]
    assert [int(ipaddress.IPv4Address(t)) for t in text] == addresses.tolist()
    assert int_to_ip(ip_to_int("10.1.2.3")) == "10.1.2.3"


def test_seq_ids__padding() -> None:
    assert seq_ids("emp_", 2, start=9, width=3).to_list() == ["emp_009", "emp_010"]
