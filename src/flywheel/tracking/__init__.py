"""Experiment tracking (not built yet; see issue 4)."""
