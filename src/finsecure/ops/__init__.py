"""Operations: metrics, request ids, shared state for several processes."""
