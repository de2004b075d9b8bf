"""diffusion_align (see README)."""
