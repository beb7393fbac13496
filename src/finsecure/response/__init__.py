"""Automated and manual responses: block, notify, open a case, call a webhook."""
