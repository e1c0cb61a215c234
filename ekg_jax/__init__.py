"""EKG filter pruning in JAX."""
