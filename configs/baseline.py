"""Baseline (paper's Version 2): ResNet-50 -> global average pooling -> dense."""

from scenecls.config import default_config, last_30_layers


def get_config():
    """Returns the GAP-head baseline: same two-stage recipe, no Inception head."""
    config = default_config()
    config.model.head = "gap"
    config.model.dropout_rate = 0.0
    config.stage2.epochs = 5
    config.stage2.trainable = last_30_layers("gap")
    return config
