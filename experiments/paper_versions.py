"""The paper's four model versions (SPEC.md), as one config file with an argument.

Usage: ``scenecls --config=experiments/paper_versions.py:v3 --workdir=runs/v3 ...``
"""

from scenecls.config import default_config, last_30_layers

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
    config.stage2.trainable = last_30_layers(head)
    if head == "gap":
        config.model.dropout_rate = 0.0
    config.stage1.learning_rate, config.stage1.epochs = lr1, epochs1
    config.stage2.learning_rate, config.stage2.epochs = lr2, epochs2
    return config
