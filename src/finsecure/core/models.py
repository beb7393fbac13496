"""Imports every table so that ``Base.metadata`` is complete (for Alembic and tests)."""

from finsecure.alert.models import Alert
from finsecure.alert.suppression import Suppression
from finsecure.audit.models import AuditEntry
from finsecure.auth.models import ApiKey, RefreshToken, User
from finsecure.core.database import Base
from finsecure.detection.states import RuleState
from finsecure.entity.models import Edge, Entity
from finsecure.event.models import StoredEvent
from finsecure.incident.models import Incident, IncidentAlert, IncidentNote
from finsecure.ingest.models import DeadLetter
from finsecure.model.models import ModelVersion
from finsecure.response.models import BlockEntry, ResponseAction
from finsecure.rule.models import Rule
from finsecure.system.models import SystemMetric

metadata = Base.metadata

__all__ = [
    "Alert",
    "ApiKey",
    "AuditEntry",
    "BlockEntry",
    "DeadLetter",
    "Edge",
    "Entity",
    "Incident",
    "IncidentAlert",
    "IncidentNote",
    "ModelVersion",
    "RefreshToken",
    "ResponseAction",
    "Rule",
    "RuleState",
    "StoredEvent",
    "Suppression",
    "SystemMetric",
    "User",
    "metadata",
]
