"""Network fan-out and traffic features, and failed-login bursts."""

from __future__ import annotations

import datetime as dt

import pytest

from finsecure.event.schemas import Domain
from finsecure.features import FEATURE_COLUMNS
from finsecure.features.step import FeatureStep
from finsecure.pipeline.batch import Batch
from tests.features.helpers import EPOCH, canonical_frame


def _flow(
    seconds: float, dst_ip: str | None, dst_port: int | None, state: str = "SF", src: str = "10.0.0.9"
) -> dict[str, object]:
    return {
        "ts": EPOCH + dt.timedelta(seconds=seconds),
        "src_ip": src,
        "dst_ip": dst_ip,
        "dst_port": dst_port,
        "conn_state": state,
        "bytes_out": 100,
        "bytes_in": 200,
        "packets_out": 3,
    }


def test_network__distinct_hosts_and_ports_over_five_minutes() -> None:
    flows = [
        _flow(0, "10.1.0.1", 22, "S0"),
        _flow(1, "10.1.0.2", 22, "REJ"),
        _flow(2, "10.1.0.1", 80),
        _flow(3, None, 443),
        _flow(4, "10.1.0.3", None, "S0", src="10.0.0.8"),  # another source
        _flow(400, "10.1.0.1", 22),  # the first three are out of the window by now
    ]
    out = (
        FeatureStep().process(Batch(Domain.network, canonical_frame(Domain.network, flows), source="t")).frame
    )
    assert out["src_ip__distinct_dst_ip_5m"].to_list() == [1, 2, 2, 2, 1, 1]
    assert out["src_ip__distinct_dst_port_5m"].to_list() == [1, 1, 2, 3, 0, 1]
    assert out["src_ip__count_5m"].to_list() == [1, 2, 3, 4, 1, 1]
    assert out["src_ip__failed_ratio_5m"].to_list() == pytest.approx([1.0, 1.0, 2 / 3, 0.5, 1.0, 0.0])
    assert out["src_ip__bytes_per_s_5m"].to_list() == pytest.approx([1.0, 2.0, 3.0, 4.0, 1.0, 1.0])
    assert out["src_ip__packets_per_s_5m"][3] == pytest.approx(12 / 300)
    assert out.columns[-len(FEATURE_COLUMNS[Domain.network]) :] == list(FEATURE_COLUMNS[Domain.network])


def test_auth__failed_login_bursts_per_user_and_ip() -> None:
    def login(minutes: float, user: str, ip: str, outcome: str) -> dict[str, object]:
        return {
            "ts": EPOCH + dt.timedelta(minutes=minutes),
            "user_id": user,
            "src_ip": ip,
            "action": "login",
            "outcome": outcome,
        }

    rows = [
        login(0, "u1", "198.51.100.7", "failure"),
        login(1, "u2", "198.51.100.7", "failure"),
        login(2, "u1", "198.51.100.7", "failure"),
        login(3, "u1", "203.0.113.5", "success"),
        login(30, "u1", "198.51.100.7", "failure"),
    ]
    out = FeatureStep().process(Batch(Domain.auth, canonical_frame(Domain.auth, rows), source="t")).frame
    assert out["user_id__failed_logins_10m"].to_list() == [1, 1, 2, 2, 1]
    assert out["user_id__failed_logins_1h"].to_list() == [1, 1, 2, 2, 3]
    assert out["src_ip__failed_logins_10m"].to_list() == [1, 2, 3, 0, 1]
    assert out["novel__user_ip"].to_list() == [True, True, False, True, False]
