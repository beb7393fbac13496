"""Incidents (cases): correlated alerts that an analyst works as one."""
