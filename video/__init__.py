"""video (see README)."""
