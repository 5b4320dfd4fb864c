"""TFDS builders, one per dataset. Importing this package registers them with TFDS."""

from fastslow_jax.data.builders.cc3m import Cc3m
from fastslow_jax.data.builders.emoji import Emoji
from fastslow_jax.data.builders.jsonl import Jsonl
from fastslow_jax.data.builders.karpathy import CocoKarpathy, Flickr30k
from fastslow_jax.data.builders.shapes import Shapes
from fastslow_jax.data.builders.vatex import Vatex

__all__ = ["Cc3m", "Emoji", "CocoKarpathy", "Flickr30k", "Jsonl", "Shapes", "Vatex"]
