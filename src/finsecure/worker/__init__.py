"""Scale-out: partitioned workers that consume the bus, and the ingest side that publishes to it."""
