"""A/B tests and bandits (not built yet; see issue 7)."""
