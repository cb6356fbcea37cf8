"""The HTTP routes (FastAPI): the page, ``/api/classify``, ``/api/health`` and ``/api/info``.

Every request's work (decoding, cropping, the overlay) runs in a worker thread, its forward passes on the
service's device thread, so the event loop only moves bytes. Refusals are JSON ``{"detail": reason}``: 400
(not an image), 413 (body or image too large), 422 (parameters), 503 with ``Retry-After`` (too busy).
"""

import contextlib
import os
from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

import scenecls
from scenecls.serve.service import Overloaded, RequestError, Service

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
RETRY_AFTER_S = 1


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``max_bytes`` (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(413, f"request body of {int(declared)} bytes is over the limit of {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(413, f"request body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, str]:
    """The image bytes and a name: the first file of a multipart form, or the raw body."""
    body = await read_body(request, max_bytes)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form()
        except Exception as e:  # python-multipart's parse errors: a malformed form
            raise RequestError(400, f"malformed multipart form ({e})") from None
        files = [value for value in form.values() if isinstance(value, UploadFile)]
        if not files:
            raise RequestError(400, "the multipart form holds no file; send the image as a file field")
        data, name = await files[0].read(), files[0].filename or "upload"
    else:
        data, name = body, request.headers.get("x-filename", "upload")
    if not data:
        raise RequestError(400, f"{name}: empty upload (0 bytes); send an image")
    return data, name


def create_app(service: Service) -> FastAPI:
    """The FastAPI app serving ``service``; its shutdown closes the service (after requests in flight)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        service.close()

    app = FastAPI(title="scenecls", version=scenecls.__version__, lifespan=lifespan)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(RequestError)
    async def refused(_: Request, error: RequestError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=error.status)

    @app.exception_handler(Overloaded)
    async def overloaded(_: Request, error: Overloaded) -> JSONResponse:
        return JSONResponse(
            {"detail": str(error)}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)}
        )

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(os.path.join(STATIC_DIR, "index.html"))

    @app.get("/api/health")
    async def health() -> dict:
        return service.health()

    @app.get("/api/info")
    async def info() -> dict:
        return service.describe()

    @app.post("/api/classify")
    async def classify(
        request: Request,
        mode: Literal["exact", "shared"] | None = Query(None, description="default: config.patch.mode"),
        stride: int | None = Query(None, ge=1, description="px between patches; <= patch size"),
        threshold: float | None = Query(None, ge=0, le=1, description="secondary-class coverage threshold"),
        overlay: bool = Query(True, description="include the overlay PNG (base64)"),
    ) -> JSONResponse:
        """``--mode=infer``'s JSON for one image (multipart file or raw bytes), with the overlay PNG."""
        with service.admitted():
            data, name = await read_upload(request, int(service.limits.max_upload_mb * 1e6))
            result = await run_in_threadpool(service.classify, data, name, mode, stride, threshold, overlay)
        return JSONResponse(result)

    return app
