"""The model registry: versioned, evaluated, promotable ML artefacts."""
