"""Getting events in: readers of raw formats, normalisers (YAML mappings), sources and dead letters."""
