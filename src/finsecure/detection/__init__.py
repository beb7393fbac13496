"""Detections as code: rules as YAML, compiled once to Polars expressions, run on every batch.

Public API: :class:`Rule`, :func:`load_rules`, :class:`RuleSet`, :class:`DetectionStep`; Sigma rules
through :mod:`finsecure.detection.sigma`.
"""

from finsecure.detection.conditions import ConditionError, compile_condition
from finsecure.detection.engine import HITS_SCHEMA, DetectionStep, RuleSet
from finsecure.detection.rule import LoadResult, Rule, RuleError, collect_errors, load_rule_file, load_rules

__all__ = [
    "HITS_SCHEMA",
    "ConditionError",
    "DetectionStep",
    "LoadResult",
    "Rule",
    "RuleError",
    "RuleSet",
    "collect_errors",
    "compile_condition",
    "load_rule_file",
    "load_rules",
]
