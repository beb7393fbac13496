"""Cross-cutting pieces: settings, database, errors, logging and security primitives."""
