"""The micro-batch engine: named steps over columnar batches of one domain."""
