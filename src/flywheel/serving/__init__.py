"""Model serving (not built yet; see issue 6)."""
