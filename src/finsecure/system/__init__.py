"""Platform health and metrics."""
