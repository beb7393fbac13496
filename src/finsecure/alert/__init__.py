"""Alerts: one finding by a rule or a model about an entity."""
