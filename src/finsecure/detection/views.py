"""Detection rules for the dashboard: list and read them (viewers and up), switch them on or off
(admins), run their samples and replay them over the event lake (analysts and up).

The rules are the YAML files the running pipeline loaded (``rules/``); switching one off is stored in
``rule_states`` and reaches the running pipeline at once (:mod:`finsecure.detection.states`).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import ConfigDict, Field, model_validator
from sqlalchemy import func, select

from finsecure.alert.models import Alert
from finsecure.audit import service as audit_service
from finsecure.auth.deps import AdminUser, AnalystUser, ViewerUser, user_actor
from finsecure.core.database import utcnow
from finsecure.core.deps import Context, DbSession
from finsecure.core.errors import NotFound, Unprocessable, error_responses
from finsecure.core.schemas import ApiModel
from finsecure.detection import states as rule_states
from finsecure.detection.engine import DetectionStep
from finsecure.detection.rule import Rule

router = APIRouter(prefix="/rules", tags=["rules"])

#: The longest period one backtest may replay (it runs while the caller waits).
MAX_BACKTEST_DAYS = 7
RuleIdPath = Annotated[str, Path(min_length=1, max_length=128)]


class RuleRead(ApiModel):
    id: str
    title: str
    domain: str
    kind: str
    severity: str
    status: str = Field(description="How mature the rule is: stable, test or experimental")
    attack: list[str] = Field(description="ATT&CK technique ids")
    typology: str | None = Field(description="Fraud typology, when the rule is about fraud")
    enabled: bool
    hits_24h: int = Field(description="Rule hits stored as alerts over the last 24 hours")
    updated_by: str | None = Field(description="Who last switched the rule on or off")
    updated_at: dt.datetime | None


class RuleList(ApiModel):
    items: list[RuleRead]
    total: int


class RuleDetail(RuleRead):
    description: str
    triage: str = Field(description="What to check when the rule fires")
    explain: str = Field(description="The template of the alert's explanation")
    entity: str
    path: str | None
    samples_positive: list[dict[str, Any]]
    samples_negative: list[dict[str, Any]]


class RuleUpdate(ApiModel):
    enabled: bool


class SampleResult(ApiModel):
    kind: Literal["positive", "negative"]
    label: str = Field(description="Which sample (or, for threshold and sequence rules, the set)")
    expected: Literal["fires", "stays quiet"]
    hits: int
    passed: bool


class SampleRun(ApiModel):
    rule_id: str
    passed: bool
    results: list[SampleResult]
    problems: list[str] = Field(description="What is wrong with the samples, in plain words")


class BacktestRequest(ApiModel):
    from_: dt.datetime = Field(alias="from")
    to: dt.datetime

    model_config = ConfigDict(
        extra="forbid", from_attributes=True, str_strip_whitespace=True, populate_by_name=True
    )

    @model_validator(mode="after")
    def _check_period(self) -> BacktestRequest:
        start, end = _utc(self.from_), _utc(self.to)
        if end <= start:
            raise ValueError("'to' must come after 'from'")
        if end - start > dt.timedelta(days=MAX_BACKTEST_DAYS):
            raise ValueError(f"a backtest covers at most {MAX_BACKTEST_DAYS} days")
        self.from_, self.to = start, end
        return self


class BacktestRead(ApiModel):
    rule_id: str
    title: str
    start: dt.datetime
    end: dt.datetime
    events: dict[str, int]
    hits: int
    labelled_hits: int
    true_hits: int
    labelled_bad: int
    flagged_bad: int
    precision: float | None = Field(description="Share of labelled hits on bad events (null: no labels)")
    recall: float | None
    by_day: dict[str, int]
    top_entities: list[tuple[str, int]]
    elapsed_s: float


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


@functools.lru_cache(maxsize=1)
def _shipped_rules() -> tuple[Rule, ...]:
    from finsecure.platform import default_rules

    return default_rules()


def _detection_steps(context: Context) -> list[DetectionStep]:
    if context.platform is None:
        return []
    return [step for step in context.platform.pipeline.steps if isinstance(step, DetectionStep)]


def loaded_rules(context: Context) -> tuple[Rule, ...]:
    """The rules the running pipeline evaluates; the shipped ones for a process without a pipeline."""
    steps = _detection_steps(context)
    if steps:
        return tuple({rule.id: rule for step in steps for rule in step.rules.rules}.values())
    return _shipped_rules()


def _rule_or_404(context: Context, rule_id: str) -> Rule:
    for rule in loaded_rules(context):
        if rule.id == rule_id:
            return rule
    raise NotFound(f"There is no detection rule with id {rule_id!r}")


def _hits_24h(db_session: DbSession, rule_id: str | None = None) -> dict[str, int]:
    since = utcnow() - dt.timedelta(hours=24)
    stmt = (
        select(Alert.rule_id, func.coalesce(func.sum(Alert.count), 0))
        .where(Alert.last_seen >= since, Alert.rule_id.is_not(None))
        .group_by(Alert.rule_id)
    )
    if rule_id is not None:
        stmt = stmt.where(Alert.rule_id == rule_id)
    return {str(rid): int(total) for rid, total in db_session.execute(stmt)}


def _read(rule: Rule, state: rule_states.RuleState | None, hits: Mapping[str, int]) -> dict[str, Any]:
    return {
        "id": rule.id,
        "title": rule.title,
        "domain": rule.domain.value,
        "kind": rule.kind,
        "severity": rule.severity,
        "status": rule.status,
        "attack": list(rule.attack),
        "typology": rule.typology,
        "enabled": True if state is None else state.enabled,
        "hits_24h": hits.get(rule.id, 0),
        "updated_by": state.updated_by if state is not None else None,
        "updated_at": state.updated_at if state is not None else None,
    }


def _detail(rule: Rule, state: rule_states.RuleState | None, hits: Mapping[str, int]) -> RuleDetail:
    return RuleDetail(
        **_read(rule, state, hits),
        description=rule.description,
        triage=rule.triage,
        explain=rule.explain,
        entity=rule.entity,
        path=rule.path,
        samples_positive=[dict(event) for event in rule.samples_positive],
        samples_negative=[dict(event) for event in rule.samples_negative],
    )


@router.get(
    "",
    response_model=RuleList,
    summary="Detection rules, with whether each runs and how often it fired over the last day",
    responses=error_responses(401, 403, 422),
)
def list_rules(
    _viewer: ViewerUser,
    context: Context,
    db_session: DbSession,
    domain: Annotated[str | None, Query(max_length=16)] = None,
    kind: Annotated[str | None, Query(max_length=16)] = None,
    status: Annotated[str | None, Query(max_length=16)] = None,
    enabled: bool | None = None,
) -> RuleList:
    stored = rule_states.states(db_session=db_session)
    hits = _hits_24h(db_session)
    items = [
        RuleRead(**_read(rule, stored.get(rule.id), hits))
        for rule in sorted(loaded_rules(context), key=lambda r: (r.domain.value, r.title))
        if (domain is None or rule.domain.value == domain)
        and (kind is None or rule.kind == kind)
        and (status is None or rule.status == status)
    ]
    if enabled is not None:
        items = [item for item in items if item.enabled == enabled]
    return RuleList(items=items, total=len(items))


@router.get(
    "/{rule_id}",
    response_model=RuleDetail,
    summary="One rule: what it looks for, what to check when it fires, its sample events",
    responses=error_responses(401, 403, 404, 422),
)
def read_rule(
    rule_id: RuleIdPath, _viewer: ViewerUser, context: Context, db_session: DbSession
) -> RuleDetail:
    rule = _rule_or_404(context, rule_id)
    state = db_session.get(rule_states.RuleState, rule.id)
    return _detail(rule, state, _hits_24h(db_session, rule.id))


@router.patch(
    "/{rule_id}",
    response_model=RuleDetail,
    summary="Switch a rule on or off (the running pipeline follows at once, no restart)",
    responses=error_responses(400, 401, 403, 404, 422),
)
def update_rule(
    rule_id: RuleIdPath,
    body: RuleUpdate,
    user: AdminUser,
    request: Request,
    context: Context,
    db_session: DbSession,
) -> RuleDetail:
    rule = _rule_or_404(context, rule_id)
    before, state = rule_states.set_enabled(
        db_session=db_session, rule_id=rule.id, enabled=body.enabled, by=user.username
    )
    audit_service.record(
        db_session=db_session, actor=user_actor(user, request),
        action="rule.enable" if body.enabled else "rule.disable", target_type="rule", target_id=rule.id,
        before={"enabled": before}, after={"enabled": body.enabled, "title": rule.title},
    )  # fmt: skip
    db_session.commit()
    disabled = rule_states.disabled_rule_ids(db_session=db_session)
    steps = _detection_steps(context)
    rule_states.apply_to_pipeline(steps, disabled)
    return _detail(rule, state, _hits_24h(db_session, rule.id))


def _results(rule: Rule) -> list[SampleResult]:
    from finsecure.detection.samples import sample_hits

    grouped = rule.threshold is not None or rule.sequence is not None
    results: list[SampleResult] = []
    for kind, events in (("positive", rule.samples_positive), ("negative", rule.samples_negative)):
        fires = kind == "positive"
        runs: Sequence[tuple[str, Sequence[Mapping[str, Any]]]]
        if grouped:
            what = "burst" if rule.threshold is not None else "sequence"
            runs = [(f"the {kind} {what} ({len(events)} events)", events)] if events else []
        else:
            runs = [
                (str(event.get("event_id", f"{kind} sample {i + 1}")), [event])
                for i, event in enumerate(events)
            ]
        for label, run in runs:
            try:
                count = sample_hits(rule, run).height
            except ValueError:
                count = -1
            passed = count > 0 if fires else count == 0
            results.append(
                SampleResult(
                    kind=kind,
                    label=label,
                    expected="fires" if fires else "stays quiet",
                    hits=max(count, 0),
                    passed=passed,
                )
            )
    return results


@router.post(
    "/{rule_id}/test",
    response_model=SampleRun,
    summary="Run the rule's sample events: positive ones must fire, negative ones must stay quiet",
    responses=error_responses(401, 403, 404, 422),
)
def run_rule_samples(rule_id: RuleIdPath, _analyst: AnalystUser, context: Context) -> SampleRun:
    from finsecure.detection.samples import run_samples

    rule = _rule_or_404(context, rule_id)
    results = _results(rule)
    problems = run_samples(rule)
    return SampleRun(
        rule_id=rule.id,
        passed=not problems and all(r.passed for r in results),
        results=results,
        problems=problems,
    )


@router.post(
    "/{rule_id}/backtest",
    response_model=BacktestRead,
    summary=f"Replay the rule over the event lake for a period (at most {MAX_BACKTEST_DAYS} days)",
    responses=error_responses(400, 401, 403, 404, 413, 422),
)
def backtest_rule(
    rule_id: RuleIdPath, body: BacktestRequest, _analyst: AnalystUser, context: Context
) -> BacktestRead:
    from finsecure.detection.backtest import backtest

    rule = _rule_or_404(context, rule_id)
    try:
        result = backtest(rule, context.settings.lake_dir, body.from_, body.to)
    except ValueError as exc:
        raise Unprocessable(str(exc)) from exc
    return BacktestRead.model_validate(result.as_dict())
