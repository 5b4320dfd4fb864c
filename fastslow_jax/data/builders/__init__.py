"""TFDS builders, one per dataset. Importing this package registers them with TFDS."""

from fastslow_jax.data.builders.shapes import Shapes

__all__ = ["Shapes"]
