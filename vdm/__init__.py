"""vdm: diffusion models in the unified view of Variational Diffusion Models (JAX/Flax)."""
