"""Stateful per-entity features: sliding windows, geo, novelty, network fan-out, failed-login bursts.

The pipeline step is :class:`FeatureStep`; what it computes is set by :class:`FeatureConfig`
(:data:`DEFAULT_CONFIG` by default). :data:`FEATURE_COLUMNS` lists the columns it adds per domain
under the default settings, and :data:`FEATURE_DESCRIPTIONS` says in plain words what each means.
The time rules (processing order, late events, time-to-live) are in :mod:`finsecure.features.config`;
each module documents the exact meaning of its features, and :mod:`finsecure.features.reference`
recomputes them one event at a time for tests.

>>> FEATURE_COLUMNS[Domain.payment][:3]
('card_id__count_1h', 'card_id__count_24h', 'card_id__count_7d')
>>> FEATURE_DESCRIPTIONS[Domain.payment]["card_id__count_1h"]
'How many payments this card had in the last hour (counted by the minute), this one included.'
"""

from __future__ import annotations

import types
from collections.abc import Mapping

from finsecure.event.schemas import Domain
from finsecure.features.columns import domain_columns
from finsecure.features.config import DEFAULT_CONFIG, FeatureConfig
from finsecure.features.step import FeatureStep

__all__ = ["DEFAULT_CONFIG", "FEATURE_COLUMNS", "FEATURE_DESCRIPTIONS", "FeatureConfig", "FeatureStep"]

FEATURE_COLUMNS: Mapping[Domain, tuple[str, ...]] = types.MappingProxyType(
    {domain: tuple(c.name for c in domain_columns(domain, DEFAULT_CONFIG)) for domain in Domain}
)
"""Feature columns added per domain under the default settings, in output order."""

FEATURE_DESCRIPTIONS: Mapping[Domain, Mapping[str, str]] = types.MappingProxyType(
    {
        domain: types.MappingProxyType(
            {c.name: c.description for c in domain_columns(domain, DEFAULT_CONFIG)}
        )
        for domain in Domain
    }
)
"""What each default feature column means, in plain words, per domain."""
