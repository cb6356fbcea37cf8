"""``scenecls --mode=serve``: a local web app and JSON API over a trained workdir, micro-batched.

Modules: ``batcher`` (the device thread and its queue), ``service`` (the model, limits and one request's
classification), ``app`` (the FastAPI routes and the upload limits), ``server`` (uvicorn and shutdown) and
``static/`` (the page, with no network assets). No TensorFlow is imported here.
"""

from scenecls.serve.app import create_app
from scenecls.serve.server import serve
from scenecls.serve.service import Service

__all__ = ["Service", "create_app", "serve"]
