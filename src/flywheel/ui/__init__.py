"""The web dashboard (not built yet; see issue 9)."""
