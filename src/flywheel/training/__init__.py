"""Distributed training (not built yet; see issue 5)."""
