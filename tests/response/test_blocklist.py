from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import polars as pl
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from finsecure.audit.service import Actor
from finsecure.auth import service as auth_service
from finsecure.auth.models import Role
from finsecure.auth.schemas import ApiKeyCreate, Scope
from finsecure.entity.models import Entity
from finsecure.event.schemas import Domain
from finsecure.pipeline.batch import Batch
from finsecure.response import blocklist
from finsecure.response.blocklist import BlockedFlagStep
from finsecure.response.models import BlockEntry
from tests.alert.factories import session_factory, uid

Headers = Callable[[Role], dict[str, str]]
ACTOR = Actor(label="alice")


def test_blocked_flag_step__flags_events_of_blocked_entities_until_expiry(db_session: Session) -> None:
    card, ip = uid("card"), "203.0.113.7"
    step = BlockedFlagStep(session_factory(db_session), refresh_s=3600)
    frame = pl.DataFrame({"card_id": [card, uid("card"), None], "src_ip": ["10.0.0.1", "10.0.0.2", ip]})
    batch = Batch(Domain.payment, frame, source="test")
    assert step.process(batch).frame["blocked"].to_list() == [False, False, False]
    blocklist.block(db_session=db_session, entity_type="card_id", entity_id=card, reason="skimmed", ttl=None,
                    actor=ACTOR)  # fmt: skip
    entry = blocklist.block(db_session=db_session, entity_type="src_ip", entity_id=ip, reason="scanner",
                            ttl=dt.timedelta(hours=1), actor=ACTOR)  # fmt: skip
    db_session.commit()
    assert step.process(batch).frame["blocked"].to_list() == [True, False, True]  # reloaded at once
    db_session.execute(
        update(BlockEntry).where(BlockEntry.id == entry.id).values(expires_at=dt.datetime.now(dt.UTC))
    )
    blocklist._bump()  # another process changed it: force the reload a refresh would do
    assert step.process(batch).frame["blocked"].to_list() == [True, False, False]


def test_block__renews_the_entry_and_marks_the_entity(db_session: Session) -> None:
    card = uid("card")
    db_session.add(Entity(entity_type="card_id", key=card, attributes={}))
    db_session.commit()
    first = blocklist.block(db_session=db_session, entity_type="card_id", entity_id=card, reason="a",
                            ttl=dt.timedelta(hours=1), actor=ACTOR)  # fmt: skip
    again = blocklist.block(db_session=db_session, entity_type="card_id", entity_id=card, reason="b",
                            ttl=dt.timedelta(hours=5), actor=ACTOR)  # fmt: skip
    assert first.id == again.id
    assert again.reason == "b"
    entity = db_session.scalar(
        select(Entity).where(Entity.key == card).execution_options(populate_existing=True)
    )
    assert entity is not None
    assert entity.blocked
    blocklist.unblock(db_session=db_session, entry=again, actor=ACTOR)
    db_session.flush()
    db_session.refresh(entity)
    assert not entity.blocked


def test_blocklist_api__add_read_enforce_and_remove(
    client: TestClient, db_session: Session, auth_headers: Headers
) -> None:
    card = uid("card")
    headers = auth_headers(Role.analyst)
    created = client.post(
        "/api/blocklist",
        json={
            "entity_type": "card_id",
            "entity_id": card,
            "reason": "customer reported theft",
            "ttl_hours": 1,
        },
        headers=headers,
    )
    assert created.status_code == 201, created.text
    entry = created.json()
    listed = client.get(
        "/api/blocklist", params={"entity_id": card}, headers=auth_headers(Role.viewer)
    ).json()
    assert [e["id"] for e in listed["items"]] == [entry["id"]]
    _, raw = auth_service.create_api_key(
        db_session=db_session, key_in=ApiKeyCreate(name="pos-gateway", scopes=[Scope.read]), owner_id=None,
        actor=ACTOR,
    )  # fmt: skip
    enforced = client.get(
        "/api/enforcement/blocklist",
        params={"entity_type": "card_id", "entity_id": card},
        headers={"X-API-Key": raw},
    )
    assert enforced.status_code == 200
    assert enforced.json()["total"] == 1
    _, ingest_only = auth_service.create_api_key(
        db_session=db_session, key_in=ApiKeyCreate(name="ingest", scopes=[Scope.ingest]), owner_id=None,
        actor=ACTOR,
    )  # fmt: skip
    refused = client.get("/api/enforcement/blocklist", headers={"X-API-Key": ingest_only})
    assert refused.status_code == 403
    bad = client.post("/api/blocklist", json={"entity_type": "planet", "entity_id": "x", "reason": "no"},
                      headers=headers)  # fmt: skip
    assert bad.status_code == 422
    assert client.delete(f"/api/blocklist/{entry['id']}", headers=headers).status_code == 200
    after = client.get("/api/enforcement/blocklist", params={"entity_id": card}, headers={"X-API-Key": raw})
    assert after.json()["total"] == 0


def test_default_steps__blocked_flag_runs_before_detection(db_session: Session) -> None:
    from finsecure.platform import default_steps

    steps = default_steps(rules=[], session_factory=session_factory(db_session))
    ids = [s.step_id for s in steps]
    assert ids.index("features") < ids.index("blocklist") < ids.index("detection")
    assert "blocklist" not in [s.step_id for s in default_steps(rules=[])]
