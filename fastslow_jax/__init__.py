"""fastslow_jax: Fast (dual encoder) and Slow (cross-attention) text-to-visual retrieval in JAX/Flax NNX."""

__version__ = "0.1.0"
