"""The paper's four model versions (SPEC.md), as one config file with an argument.

Usage: ``scenecls --config=experiments/paper_versions.py:v3 --workdir=runs/v3 ...``
"""

from scenecls.config import default_config

# Keras' last 30 layers of ResNet-50 + GAP head: GAP, dense and 28 backbone layers
# (conv5_block2, conv5_block3 and the tail of conv5_block1: its 0_conv and 3_conv
# plus BatchNorms, which stay frozen).
_GAP_TAIL = (
    "^head/",
    "^backbone/conv5_block1_[03]_conv/",
    "^backbone/conv5_block2_",
    "^backbone/conv5_block3_",
)

# version: (head, stage-1 lr, stage-1 epochs, stage-2 lr, stage-2 epochs); test accuracy in the paper.
VERSIONS = {
    "v1": ("gap", 1e-4, 15, 1e-5, 5),  # 0.91
    "v2": ("gap", 1e-5, 15, 1e-5, 5),  # 0.95
    "v3": ("inception", 1e-5, 10, 1e-6, 3),  # 0.93
    "v4": ("inception", 1e-5, 15, 1e-5, 10),  # 0.96 (the default config)
}


def get_config(version: str = "v4"):
    """Returns the config of paper version ``v1``..``v4``."""
    if version not in VERSIONS:
        raise ValueError(f"unknown paper version {version!r}; expected one of {sorted(VERSIONS)}")
    head, lr1, epochs1, lr2, epochs2 = VERSIONS[version]
    config = default_config()
    config.model.head = head
    if head == "gap":
        config.model.dropout_rate = 0.0
        config.stage2.trainable = _GAP_TAIL
    config.stage1.learning_rate, config.stage1.epochs = lr1, epochs1
    config.stage2.learning_rate, config.stage2.epochs = lr2, epochs2
    return config
