"""Playbooks: "when an incident or alert matches, do these actions", one YAML file each under
``playbooks/``.

.. code-block:: yaml

    id: block-card-on-critical-card-fraud
    title: Block the card when a critical card-fraud alert fires
    enabled: true
    dry_run: false            # describe the actions instead of doing them
    when:
      on: alert               # alert | incident
      min_severity: critical
      domains: [payment]
      rule_ids: []            # alerts only; empty means any rule
      min_risk: 0             # incidents only, 0..100
      min_domains: 1          # incidents only
    actions:
      - type: block
        approval: true        # wait for a person (POST /api/actions/{id}/approve)
        params: {ttl_hours: 24}

Parameters may name environment variables as ``${NAME}``; an action whose variable is unset is left out
(logged once), so shipped playbooks do nothing until an operator gives them an endpoint.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from finsecure.alert.service import SEVERITY_RANK

__all__ = [
    "PLAYBOOKS_DIR",
    "LoadedPlaybooks",
    "Playbook",
    "PlaybookAction",
    "PlaybookError",
    "Trigger",
    "load_playbooks",
]

logger = logging.getLogger(__name__)

#: The playbooks shipped with the repository (``playbooks/`` beside ``src/``).
PLAYBOOKS_DIR = Path(__file__).resolve().parents[3] / "playbooks"
_ENV = re.compile(r"\$\{([A-Z0-9_]+)\}")
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{1,63}$")


class PlaybookError(ValueError):
    """A playbook that cannot be used, with where it came from."""


@dataclass(frozen=True)
class Trigger:
    on: Literal["alert", "incident"]
    min_severity: str = "low"
    domains: tuple[str, ...] = ()
    rule_ids: tuple[str, ...] = ()
    min_risk: float = 0.0
    min_domains: int = 1

    def matches(self, target: Mapping[str, Any]) -> bool:
        """Whether an alert or incident (as a dict with ``kind``, ``severity``, ``domains``...) matches.

        >>> t = Trigger(on="incident", min_severity="high", min_domains=2)
        >>> incident = {"kind": "incident", "severity": "critical", "domains": ["auth", "payment"]}
        >>> t.matches(incident)
        True
        >>> t.matches({**incident, "domains": ["auth"]})
        False
        """
        if target.get("kind") != self.on:
            return False
        if SEVERITY_RANK.get(str(target.get("severity")), 0) < SEVERITY_RANK[self.min_severity]:
            return False
        domains = [str(d) for d in target.get("domains") or ()]
        if self.domains and not set(domains) & set(self.domains):
            return False
        if self.on == "alert":
            return not self.rule_ids or target.get("rule_id") in self.rule_ids
        return float(target.get("risk") or 0.0) >= self.min_risk and len(set(domains)) >= self.min_domains


@dataclass(frozen=True)
class PlaybookAction:
    type: str
    params: Mapping[str, Any] = field(default_factory=dict)
    approval: bool = False

    def resolved_params(self) -> dict[str, Any] | None:
        """``params`` with ``${NAME}`` replaced from the environment; ``None`` when a variable is unset."""
        missing: list[str] = []

        def resolve(value: Any) -> Any:
            if isinstance(value, str):

                def sub(match: re.Match[str]) -> str:
                    found = os.environ.get(match.group(1))
                    if not found:
                        missing.append(match.group(1))
                        return ""
                    return found

                return _ENV.sub(sub, value)
            if isinstance(value, list):
                return [resolve(v) for v in value]
            if isinstance(value, dict):
                return {k: resolve(v) for k, v in value.items()}
            return value

        params = {k: resolve(v) for k, v in self.params.items()}
        return None if missing else params


@dataclass(frozen=True)
class Playbook:
    id: str
    title: str
    trigger: Trigger
    actions: tuple[PlaybookAction, ...]
    description: str = ""
    enabled: bool = True
    dry_run: bool = False
    source: str = ""

    @classmethod
    def from_dict(cls, data: Any, *, source: str, action_types: Iterable[str]) -> Playbook:
        """Build and check a playbook; errors name ``source`` and the field.

        >>> pb = Playbook.from_dict(
        ...     {"id": "p1", "title": "T", "when": {"on": "alert"}, "actions": [{"type": "webhook"}]},
        ...     source="doc", action_types=["webhook"])
        >>> pb.trigger.on, pb.actions[0].type
        ('alert', 'webhook')
        >>> bad = {"id": "p1", "title": "T", "when": {"on": "alert"}, "actions": [{"type": "x"}]}
        >>> Playbook.from_dict(bad, source="doc", action_types=["webhook"])
        Traceback (most recent call last):
        ...
        finsecure.response.playbooks.PlaybookError: doc: actions[0].type: unknown action type 'x'
        """
        known = set(action_types)

        def fail(where: str, message: str) -> PlaybookError:
            return PlaybookError(f"{source}: {where}: {message}")

        if not isinstance(data, dict):
            raise fail("top", "a playbook is a mapping")
        extra = set(data) - {"id", "title", "description", "enabled", "dry_run", "when", "actions"}
        if extra:
            raise fail("top", f"unknown fields {sorted(extra)}")
        playbook_id = data.get("id")
        if not isinstance(playbook_id, str) or not _ID.match(playbook_id):
            raise fail("id", "lower-case letters, digits, - and _, 2 to 64 characters")
        if not isinstance(data.get("title"), str) or not data["title"].strip():
            raise fail("title", "required text")
        when = data.get("when")
        if not isinstance(when, dict):
            raise fail("when", "a mapping with at least `on: alert` or `on: incident`")
        # YAML 1.1 (PyYAML) reads a bare `on` key as the boolean true
        when = {("on" if key is True else key): value for key, value in when.items()}
        extra = set(when) - {"on", "min_severity", "domains", "rule_ids", "min_risk", "min_domains"}
        if extra:
            raise fail("when", f"unknown fields {sorted(extra)}")
        if when.get("on") not in {"alert", "incident"}:
            raise fail("when.on", "alert or incident")
        severity = when.get("min_severity", "low")
        if severity not in SEVERITY_RANK:
            raise fail("when.min_severity", f"one of {sorted(SEVERITY_RANK)}")
        for name in ("domains", "rule_ids"):
            value = when.get(name, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise fail(f"when.{name}", "a list of names")
        try:
            trigger = Trigger(
                on=when["on"],
                min_severity=severity,
                domains=tuple(when.get("domains", [])),
                rule_ids=tuple(when.get("rule_ids", [])),
                min_risk=float(when.get("min_risk", 0.0)),
                min_domains=int(when.get("min_domains", 1)),
            )
        except (TypeError, ValueError) as exc:
            raise fail("when", str(exc)) from exc
        raw_actions = data.get("actions")
        if not isinstance(raw_actions, list) or not raw_actions:
            raise fail("actions", "a non-empty list")
        actions = []
        for i, raw in enumerate(raw_actions):
            if not isinstance(raw, dict) or set(raw) - {"type", "params", "approval"}:
                raise fail(f"actions[{i}]", "a mapping of type, params and approval")
            if raw.get("type") not in known:
                raise fail(f"actions[{i}].type", f"unknown action type {raw.get('type')!r}")
            params = raw.get("params", {})
            if not isinstance(params, dict):
                raise fail(f"actions[{i}].params", "a mapping")
            actions.append(
                PlaybookAction(type=raw["type"], params=params, approval=bool(raw.get("approval")))
            )
        return cls(
            id=playbook_id,
            title=data["title"].strip(),
            description=str(data.get("description", "")),
            enabled=bool(data.get("enabled", True)),
            dry_run=bool(data.get("dry_run", False)),
            trigger=trigger,
            actions=tuple(actions),
            source=source,
        )

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "enabled": self.enabled,
            "dry_run": self.dry_run,
            "on": self.trigger.on,
            "actions": [a.type for a in self.actions],
            "source": self.source,
        }


@dataclass(frozen=True)
class LoadedPlaybooks:
    playbooks: tuple[Playbook, ...]
    errors: tuple[str, ...]


def load_playbooks(directory: Path, *, action_types: Iterable[str]) -> LoadedPlaybooks:
    """Every ``*.yml``/``*.yaml`` under ``directory``; bad files are reported, never fatal; ids are unique."""
    types = list(action_types)
    playbooks: list[Playbook] = []
    errors: list[str] = []
    if not directory.is_dir():
        return LoadedPlaybooks((), ())
    seen: dict[str, str] = {}
    for path in sorted([*directory.rglob("*.yml"), *directory.rglob("*.yaml")]):
        source = path.name if path.parent == directory else str(path.relative_to(directory))
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            playbook = Playbook.from_dict(data, source=source, action_types=types)
        except (OSError, yaml.YAMLError, PlaybookError) as exc:
            errors.append(str(exc) if isinstance(exc, PlaybookError) else f"{source}: {exc}")
            continue
        if playbook.id in seen:
            errors.append(f"{source}: id: {playbook.id!r} is already used by {seen[playbook.id]}")
            continue
        seen[playbook.id] = source
        playbooks.append(playbook)
    return LoadedPlaybooks(tuple(playbooks), tuple(errors))
