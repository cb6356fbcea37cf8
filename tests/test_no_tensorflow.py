"""The model, the train step and stage setup, and patch inference run with TensorFlow and tfds absent.

Each case runs in a fresh interpreter whose import system refuses ``tensorflow``, ``tensorflow_datasets``
and ``tf_keras`` (as on a GPU, serving or export machine without them). A new entry point that must work
without TensorFlow (the server's health check, say) is one more entry in ``CASES``.
"""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO
from serve.served import FIXTURE

_BLOCK = """
import importlib.abc
import importlib.machinery
import sys

class _Refuse(importlib.abc.Loader):
    def create_module(self, spec):
        raise ImportError(f"{spec.name} is blocked by this test")

    def exec_module(self, module):
        pass

class _NoTensorFlow(importlib.abc.MetaPathFinder):
    # A spec whose loading raises ImportError: importing fails; find_spec (etils asks it) still answers.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_datasets", "tf_keras"):
            return importlib.machinery.ModuleSpec(name, _Refuse())
        return None

sys.meta_path.insert(0, _NoTensorFlow())
"""

_CHECK_ABSENT = """
assert not any(m.split(".")[0] in ("tensorflow", "tensorflow_datasets") for m in sys.modules), "TF imported"
print("OK")
"""

# name -> code run after the block; WORKDIR is a copy of a tiny trained workdir (the committed fixture run).
CASES = {
    "imports": """
        import scenecls.models, scenecls.patches, scenecls.train
        """,
    "train_step": """
        import jax, jax.numpy as jnp, numpy as np
        from conftest import load_config
        from scenecls import parallel
        from scenecls.train import initial_variables, setup_stage

        config = load_config("tiny")
        stage = setup_stage(config, initial_variables(config, 5), "stage1", 5)
        rng = np.random.default_rng(0)
        batch = {
            "image": rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8),
            "label": rng.integers(0, 5, 8).astype(np.int32),
        }
        before = jax.device_get(stage.state.params["head"])
        state, metrics = stage.step(
            stage.state, parallel.shard_batch(stage.mesh, batch), jax.random.PRNGKey(0), jnp.ones(5)
        )
        assert bool(metrics["finite"]) and int(metrics["count"]) == 8
        after = jax.device_get(state.params["head"])
        assert any(not np.array_equal(a, b) for a, b in zip(
            jax.tree_util.tree_leaves(after), jax.tree_util.tree_leaves(before)))
        """,
    "patch_classifier": """
        import numpy as np
        from scenecls.patches import PatchClassifier

        classifier = PatchClassifier.from_workdir(WORKDIR)
        image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
        result = classifier.predict(image)
        assert result["major"] in classifier.classes, result
        """,
    "serve": """
        import asyncio, io
        import httpx, numpy as np
        from PIL import Image
        from serve.served import serve_config
        from scenecls.serve.app import create_app
        from scenecls.serve.service import Service

        service = Service.from_workdir(serve_config(), WORKDIR)
        photo = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 128, 3), np.uint8)).save(photo, "PNG")

        async def requests():
            transport = httpx.ASGITransport(app=create_app(service))
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as client:
                health = await client.get("/api/health")
                classified = await client.post("/api/classify", content=photo.getvalue())
                return health, classified

        health, classified = asyncio.run(requests())
        service.close()
        assert health.status_code == 200 and health.json()["status"] == "ok", health.text
        major = classified.json().get("major") if classified.status_code == 200 else classified.text
        assert major in service.classes, major
        """,
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_runs_without_tensorflow(case, tmp_path):
    workdir = shutil.copytree(FIXTURE, tmp_path / "run")
    code = f"{_BLOCK}\nWORKDIR = {str(workdir)!r}\n{textwrap.dedent(CASES[case])}{_CHECK_ABSENT}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.path.join(REPO, "tests")])}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stderr[-3000:]
