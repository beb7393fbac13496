"""Streaming correlation: alerts that share an entity within a time window join one incident.

Public API: :class:`Correlator`, :func:`incident_risk`, :func:`describe_incident`.
"""

from finsecure.correlation.engine import Correlator, alert_entity_keys
from finsecure.correlation.summary import describe_incident, incident_risk, risk_severity

__all__ = ["Correlator", "alert_entity_keys", "describe_incident", "incident_risk", "risk_severity"]
