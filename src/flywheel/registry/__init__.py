"""The model registry (not built yet; see issue 4)."""
