"""Shipped rules on real attack logs (OTRF Security-Datasets): the rules written for them fire on them.

The shared data sets sit beside the checkout; without them these tests skip, except in CI (``CI=true``)
where a missing file fails the run.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

from finsecure.detection import RuleSet, load_rules
from finsecure.event.schemas import Domain
from finsecure.pipeline.batch import Batch

RULES = load_rules(Path(__file__).resolve().parents[2] / "rules").rules
OTRF = Path(
    os.environ.get("FINSECURE_DATASETS") or Path(__file__).resolve().parents[3] / "shared" / "datasets"
)
OTRF = OTRF / "otrf-cloud" / "datasets"
CLOUDTRAIL = OTRF / "atomic" / "aws" / "collection" / "ec2_proxy_s3_exfiltration.zip"
AAD_AUDIT = OTRF / "compound" / "GoldenSAMLADFSMailAccess" / "AADAuditEvents.Zip"


def _events(path: Path, format_name: str) -> pl.DataFrame:
    from finsecure.ingest.sources import open_source

    if not path.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"the OTRF data set is missing at {path}")
        pytest.skip("the OTRF data sets are not beside this checkout")
    frames = [
        chunk.frame for chunk in open_source(path, format_name).chunks() if chunk.domain == Domain.cloud
    ]
    return pl.concat(frames)


def _fired(frame: pl.DataFrame) -> dict[str, int]:
    cloud = [rule for rule in RULES if rule.domain == Domain.cloud and rule.sequence is None]
    hits = RuleSet(cloud).evaluate(Batch(Domain.cloud, frame, "otrf"))
    return dict(hits.group_by("rule_title").len().iter_rows())


def test_cloud_rules__ec2_role_credentials_exfiltration_from_a_laptop() -> None:
    frame = _events(CLOUDTRAIL, "cloudtrail")
    fired = _fired(frame)
    stolen = frame.filter(pl.col("principal_type") == "AssumedRole", pl.col("src_ip").is_not_null()).height
    assert fired.get("Temporary role credentials used from a desktop computer") == stolen > 0
    # the console user's own browsing (Describe* calls) raises nothing
    assert set(fired) == {"Temporary role credentials used from a desktop computer"}


def test_cloud_rules__golden_saml_application_persistence_in_azure_ad() -> None:
    fired = _fired(_events(AAD_AUDIT, "azure-ad"))
    assert fired == {
        "Credentials added to a cloud application": 2,
        "Application granted delegated permissions": 1,
    }
