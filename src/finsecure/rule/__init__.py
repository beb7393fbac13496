"""Detection rules as stored in the database (the source of truth is `rules/**/*.yml`)."""
