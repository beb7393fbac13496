from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

from finsecure.detection.sigma import sigma_report
from finsecure.event.schemas import Domain

# /work/shared sits beside the checkout (tests/detection/ -> tests -> repo -> its parent).
SHARED = Path(__file__).resolve().parents[3] / "shared"
SIGMA_DIR = SHARED / "sigma" / "rules" / "cloud"
AAD = (
    SHARED
    / "datasets"
    / "otrf-cloud"
    / "datasets"
    / "compound"
    / "GoldenSAMLADFSMailAccess"
    / "AADAuditEvents.Zip"
)


@pytest.fixture(scope="module")
def sigma_dir() -> Path:
    if not SIGMA_DIR.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"the shared Sigma rules are missing at {SIGMA_DIR}")
        pytest.skip("the shared Sigma rules are not beside this checkout")
    return SIGMA_DIR


def test_sigma_report__loads_and_compiles_shared_rules_and_fires_on_otrf(sigma_dir: Path) -> None:
    from finsecure.ingest.sources import open_source

    if not AAD.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"the OTRF data set is missing at {AAD}")
        pytest.skip("the OTRF data set is not beside this checkout")
    frames = [chunk.frame for chunk in open_source(AAD, "azure-ad").chunks() if chunk.domain == Domain.cloud]
    rows = sigma_report(sigma_dir, {Domain.cloud: pl.concat(frames)})
    assert len(rows) >= 140
    assert all(row.loaded for row in rows)
    compiled = [row for row in rows if row.compiled]
    assert len(compiled) / len(rows) >= 0.45
    assert all(row.reason for row in rows if not row.compiled)
    fired = {Path(row.path).name for row in rows if row.fired}
    assert "azure_app_delegated_permissions_all_users.yml" in fired


def test_sigma_report__console_login_without_mfa_fires_on_canonical_event(sigma_dir: Path) -> None:
    from finsecure.detection.frames import sample_frame

    frame = sample_frame(
        Domain.cloud,
        [
            {"action": "ConsoleLogin", "mfa_used": False, "outcome": "success", "user_id": "bob"},
            {"action": "ConsoleLogin", "mfa_used": True, "outcome": "success", "user_id": "bob"},
        ],
    )
    rows = sigma_report(sigma_dir / "aws", {Domain.cloud: frame})
    by_name = {Path(row.path).name: row for row in rows}
    assert by_name["aws_cloudtrail_console_login_success_without_mfa.yml"].fired == 1
