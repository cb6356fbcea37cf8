"""The paper's final model (Version 4): Keras ResNet-50 + Inception head, two stages."""

from scenecls.config import default_config


def get_config():
    """Returns the default config (see scenecls/config.py for every field)."""
    return default_config()
