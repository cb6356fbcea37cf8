"""scenecls: scene classification with ResNet-50 + Inception head, in JAX/Flax."""

__version__ = "0.1.0"
