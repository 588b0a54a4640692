"""The feature store (not built yet; see issue 3)."""
