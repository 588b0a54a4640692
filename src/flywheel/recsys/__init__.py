"""The real-time recommender (not built yet; see issue 8)."""
