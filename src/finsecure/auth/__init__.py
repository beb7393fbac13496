"""People and machines: users, roles, tokens and API keys."""
