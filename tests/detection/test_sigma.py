from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

from finsecure.detection.sigma import sigma_report
from finsecure.detection.sigma.report import with_raw
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
    rows = sigma_report(sigma_dir, {Domain.cloud: with_raw(pl.concat(frames), AAD)})
    assert len(rows) >= 140
    assert all(row.loaded for row in rows)
    compiled = [row for row in rows if row.compiled]
    assert len(compiled) / len(rows) >= 0.9
    assert len([row for row in compiled if not row.raw_fields]) >= 70  # on canonical columns alone
    assert all(row.reason for row in rows if not row.compiled)
    fired = {Path(row.path).name for row in rows if row.fired}
    assert {
        "azure_app_delegated_permissions_all_users.yml",  # canonical columns
        "azure_app_credential_added.yml",  # reads the audit record's modified properties
        "azure_app_appid_uri_changes.yml",
    } <= fired


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


def test_compile_sigma__field_without_column_reads_the_raw_record(sigma_dir: Path) -> None:
    from finsecure.detection.engine import RuleSet
    from finsecure.detection.frames import sample_frame
    from finsecure.detection.sigma.convert import (
        RAW_COLUMN,
        compile_sigma,
        raw_fields,
        raw_record,
        sigma_rule_from_path,
    )
    from finsecure.pipeline.batch import Batch

    path = sigma_dir / "aws" / "cloudtrail" / "aws_ecs_task_definition_cred_endpoint_query.yml"
    if not path.is_file():
        path = next(sigma_dir.rglob("aws_ecs_task_definition_cred_endpoint_query.yml"))
    rule = compile_sigma(sigma_rule_from_path(path))
    assert "requestParameters.containerDefinitions.command" in raw_fields(rule)
    record = {
        "eventSource": "ecs.amazonaws.com", "eventName": "RegisterTaskDefinition",
        "requestParameters": {"containerDefinitions": [
            {"command": ["sh", "-c", "curl $AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"]}]},
    }  # fmt: skip
    frame = sample_frame(
        Domain.cloud, [{"service": "ecs.amazonaws.com", "action": "RegisterTaskDefinition"}] * 2
    )
    frame = frame.with_columns(pl.Series(RAW_COLUMN, [raw_record(record), raw_record({"eventName": "x"})]))
    hits = RuleSet([rule]).evaluate(Batch(Domain.cloud, frame, "test"))
    assert hits.get_column("event_id").to_list() == ["sample-0"]
    # a batch without the source records: the rule runs and simply does not fire
    plain = sample_frame(Domain.cloud, [{"service": "ecs.amazonaws.com", "action": "RegisterTaskDefinition"}])
    assert RuleSet([rule]).evaluate(Batch(Domain.cloud, plain, "test")).height == 0


def test_sigma_report__otrf_records_fire_when_replayed_through_ingest(sigma_dir: Path) -> None:
    """The cloud feeds keep each record in ``raw`` on the normal ingest path: the same rules fire as
    when the report attaches the records itself."""
    from finsecure.ingest.sources import open_source

    if not AAD.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"the OTRF data set is missing at {AAD}")
        pytest.skip("the OTRF data set is not beside this checkout")
    frames = [chunk.frame for chunk in open_source(AAD, "azure-ad").chunks() if chunk.domain == Domain.cloud]
    live = pl.concat(frames)
    assert live.get_column("raw").null_count() == 0
    replayed = sigma_report(sigma_dir, {Domain.cloud: live})
    attached = sigma_report(sigma_dir, {Domain.cloud: with_raw(live.drop("raw"), AAD)})
    fired = {Path(row.path).name: row.fired for row in replayed if row.fired}
    assert fired == {Path(row.path).name: row.fired for row in attached if row.fired}
    assert {"azure_app_credential_added.yml", "azure_app_delegated_permissions_all_users.yml"} <= set(fired)


def test_sigma_rule__raw_field_fires_on_a_cloudtrail_record_read_by_ingest(
    sigma_dir: Path, tmp_path: Path
) -> None:
    """A rule on a field with no canonical column fires on a CloudTrail file read through the cloudtrail
    mapping (nothing attached by hand), and the pipeline accepts the batch with its ``raw`` column."""
    import json

    from finsecure.detection.engine import RuleSet
    from finsecure.detection.sigma.convert import compile_sigma, sigma_rule_from_path
    from finsecure.ingest.sources import open_source
    from finsecure.pipeline.batch import Batch
    from finsecure.pipeline.engine import is_canonical_schema

    path = next(sigma_dir.rglob("aws_ecs_task_definition_cred_endpoint_query.yml"))
    rule = compile_sigma(sigma_rule_from_path(path))

    def record(n: int, command: str) -> dict[str, object]:
        return {
            "eventID": f"e{n}", "eventTime": "2024-05-06T10:00:00Z", "eventSource": "ecs.amazonaws.com",
            "eventName": "RegisterTaskDefinition", "awsRegion": "eu-west-1", "sourceIPAddress": "192.0.2.7",
            "userIdentity": {"type": "IAMUser", "userName": "mallory", "accountId": "123456789012"},
            "requestParameters": {"containerDefinitions": [{"command": ["sh", "-c", command]}]},
        }  # fmt: skip

    trail = tmp_path / "trail.json"
    records = [record(1, "curl $AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"), record(2, "echo hello")]
    trail.write_text(json.dumps({"Records": records}))
    [chunk] = [c for c in open_source(trail, "cloudtrail").chunks() if c.frame.height]
    assert is_canonical_schema(Domain.cloud, chunk.frame.schema)
    hits = RuleSet([rule]).evaluate(Batch(Domain.cloud, chunk.frame, "test"))
    assert hits.get_column("event_id").to_list() == ["e1"]
