"""``scenecls --mode=serve``: the app on uvicorn until SIGINT or SIGTERM (requests in flight finish)."""

import signal

import ml_collections
import uvicorn

from scenecls import console
from scenecls.serve.app import create_app
from scenecls.serve.service import Service


def serve(config: ml_collections.ConfigDict, workdir: str) -> int:
    """Serves the best model of ``workdir`` on ``config.serve.host:port``; returns 0 after a clean stop.

    On SIGINT or SIGTERM the server stops accepting connections, finishes the requests in flight (for at
    most ``serve.shutdown_timeout_s``), then stops the device thread.
    """
    service = Service.from_workdir(config, workdir)
    limits = config.serve
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(service),
            host=limits.host,
            port=limits.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=limits.shutdown_timeout_s,
        )
    )
    mode = "on" if limits.batching else "off"
    console.say(
        f"Serving {workdir} ({len(service.classes)} classes, micro-batching {mode}) on "
        f"http://{limits.host}:{limits.port}/  (Ctrl+C or SIGTERM stops)"
    )
    # uvicorn re-raises the signal that stopped it once it is done; a handler of ours takes it, so a
    # requested stop ends with status 0 rather than being killed by the signal's default action.
    stops = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, _: stops.append(number))
    server.run()
    console.say(f"Stopped ({signal.Signals(stops[0]).name})" if stops else "Stopped")
    return 0
