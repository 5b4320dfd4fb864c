"""Model definitions. Parameters carry logical-axis metadata; placement is decided by
``fastslow_jax.parallel`` from the config's rules table, never at construction time, so eager
sharding is turned off for the whole package."""
from flax import nnx

nnx.use_eager_sharding(False)
