"""Shared test fixtures."""

import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str):
    """Loads ``configs/<name>.py`` the way --config does and returns its ConfigDict."""
    spec = importlib.util.spec_from_file_location(
        f"configs_{name}", os.path.join(REPO, "configs", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.fixture
def tiny_config():
    """A fresh test-sized config (configs/tiny.py)."""
    return load_config("tiny")
