"""The entity graph: edges from events, an in-memory graph with TTL and persistence, communities,
fraud rings, risk propagation and explaining paths."""
