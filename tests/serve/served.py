"""Helpers of the server tests: a trained workdir (the committed tiny run), its service, an HTTP client."""

import asyncio
import os
import shutil

import httpx
import pytest
from conftest import REPO, load_config

from scenecls.serve import Service

FIXTURE = os.path.join(REPO, "tests", "fixtures", "run_v1")  # a tiny trained run (see tests/workdir)


def serve_config(**serve):
    """configs/tiny.py with the model of the fixture run and ``serve`` fields overridden."""
    config = load_config("tiny")
    config.serve.update(serve)
    return config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("served") / "run")
    shutil.copytree(FIXTURE, path)
    return path


@pytest.fixture(scope="module")
def service(workdir):
    service = Service.from_workdir(serve_config(max_pixels=1_000_000, max_upload_mb=0.5), workdir)
    yield service
    service.close()


def send(app, *requests: tuple[str, str, dict]) -> list[httpx.Response]:
    """Sends (method, url, httpx keyword arguments) requests to ``app`` in process, concurrently."""

    async def all_of():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as client:
            return await asyncio.gather(*(client.request(m, url, **kwargs) for m, url, kwargs in requests))

    return asyncio.run(all_of())
