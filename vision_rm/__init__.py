"""vision_rm (see README)."""
