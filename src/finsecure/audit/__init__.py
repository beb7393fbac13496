"""Who changed what, when: the append-only audit log."""
