"""Load test of ``scenecls --mode=serve``: micro-batching on against off, on the same machine, interleaved.

Starts two servers on free 127.0.0.1 ports (``--mode=serve``, one with ``serve.batching`` true, one false)
over the same trained workdir, then runs the same load against each in turn, ``--rounds`` times: N clients
(``--clients``, default 32) each send M requests (``--requests``) one after another, synthetic scene photos
(JPEG, several sizes) with a share of bad files (text, truncated JPEG, a decompression-bomb PNG) mixed in.
It reports per server: throughput (requests/s and photos/s), p50/p95/p99 latency of the photos, the count
of each status code, and the server's RSS after warm-up, at its peak and at the end (sampled every 50 ms
with psutil). Everything is bounded: a fixed number of requests, a timeout on each, servers stopped with
SIGTERM at the end.

Usage: ``python experiments/load_test.py [--workdir=W --config=configs/X.py] [--clients=32 --requests=8]``;
without ``--workdir`` it serves the committed tiny run ``tests/fixtures/run_v1`` (copied to a temp dir).
"""

import argparse
import asyncio
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter

import httpx
import numpy as np
import psutil
from benchmark import machine
from PIL import Image

from scenecls.data import synthetic
from scenecls.data.images import encode_jpeg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTO_SIZES = "240x320,300x400,360x480,480x640"  # height x width


def photos(count: int, sizes: str = PHOTO_SIZES, seed: int = 0) -> list[bytes]:
    """``count`` synthetic scene composites as JPEG bytes, cycling through ``sizes``."""
    shapes = [tuple(int(n) for n in size.split("x")) for size in sizes.split(",")]
    return [
        encode_jpeg(synthetic.make_composite(*shapes[i % len(shapes)], seed=seed + i)[0], quality=90)
        for i in range(count)
    ]


def bad_files() -> list[bytes]:
    """Text, a truncated JPEG, and a 1-pixel PNG whose header declares 40000 x 40000 pixels."""
    jpeg = photos(1, seed=99)[0]
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    bomb = bytearray(buffer.getvalue())
    bomb[16:24] = struct.pack(">II", 40000, 40000)
    bomb[29:33] = struct.pack(">I", zlib.crc32(bytes(bomb[12:29])))
    return [b"not an image\n" * 20, jpeg[: len(jpeg) // 2], bytes(bomb)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(config: str, workdir: str, batching: bool, extra: list[str]) -> tuple[subprocess.Popen, str]:
    """A ``--mode=serve`` process on a free localhost port, once it answers /api/health."""
    port = free_port()
    command = [sys.executable, "-m", "scenecls.main", f"--config={config}", f"--workdir={workdir}"]
    command += [
        "--mode=serve",
        "--config.serve.host=127.0.0.1",
        f"--config.serve.port={port}",
        f"--config.serve.batching={batching}",
        *extra,
    ]
    log = open(os.path.join(workdir, f"server_batching_{batching}.txt"), "w")  # noqa: SIM115 (closed with it)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}; see {log.name}")
        try:
            if httpx.get(f"{url}/api/health", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    process.kill()
    raise RuntimeError(f"the server did not answer within 300 s; see {log.name}")


class RssSampler:
    """Samples a process's resident memory every 50 ms in a thread; ``peak`` since the last ``reset``."""

    def __init__(self, pid: int):
        self.process, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> int:
        return self.process.memory_info().rss

    def reset(self) -> None:
        self.peak = self.now()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, self.now())
            except psutil.Error:
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


async def load(
    url: str, payloads: list[tuple[bytes, bool]], clients: int, requests: int, seed: int, query: str = ""
) -> dict:
    """``clients`` concurrent clients x ``requests`` each: status counts, photo latencies, wall time."""
    statuses: Counter = Counter()
    latencies: list[float] = []
    phases: Counter = Counter()  # the server's own timing of the photos, summed

    async def client(index: int, http: httpx.AsyncClient) -> None:
        rng = np.random.default_rng([seed, index])
        for _ in range(requests):
            data, is_photo = payloads[rng.integers(len(payloads))]
            start = time.perf_counter()
            try:
                response = await http.post(f"{url}/api/classify{query}", content=data)
                status = str(response.status_code)
            except httpx.HTTPError as e:
                status = type(e).__name__
            statuses[status] += 1
            if is_photo and status == "200":
                latencies.append(time.perf_counter() - start)
                phases.update(response.json()["timing"])

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        wall = time.perf_counter() - start
    return {"statuses": statuses, "latencies": latencies, "wall": wall, "phases": phases}


def summary(runs: list[dict]) -> dict:
    """Totals over a server's rounds: throughput, latency percentiles, status counts."""
    statuses = sum((run["statuses"] for run in runs), Counter())
    latencies = np.concatenate([run["latencies"] for run in runs]) if runs else np.zeros(0)
    wall = sum(run["wall"] for run in runs)
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) if len(latencies) else (np.nan,) * 3
    phases = sum((run["phases"] for run in runs), Counter())
    return {
        "requests": sum(statuses.values()),
        "requests_per_s": sum(statuses.values()) / wall,
        "photos_per_s": len(latencies) / wall,
        "p50_s": p50,
        "p95_s": p95,
        "p99_s": p99,
        "statuses": dict(sorted(statuses.items())),
        "server_mean_s": {phase: total / max(1, len(latencies)) for phase, total in sorted(phases.items())},
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="", help="a trained run (default: the tiny test fixture)")
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "tiny.py"))
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=8, help="per client and round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating on/off load phases per server")
    parser.add_argument("--bad_share", type=float, default=0.1, help="share of bad files among requests")
    parser.add_argument("--photos", type=int, default=16, help="distinct photos")
    parser.add_argument("--sizes", default=PHOTO_SIZES, help="photo sizes, HxW, comma separated")
    parser.add_argument("--no_overlay", action="store_true", help="ask for the JSON only (?overlay=false)")
    parser.add_argument("--server_flag", action="append", default=[], help="extra flag for both servers")
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args()

    scratch = tempfile.mkdtemp(prefix="scenecls_load_")
    workdir = args.workdir or os.path.join(scratch, "run")
    if not args.workdir:
        shutil.copytree(os.path.join(REPO, "tests", "fixtures", "run_v1"), workdir)
    good = [(data, True) for data in photos(args.photos, args.sizes)]
    bad = [(data, False) for data in bad_files()]
    bad_count = (
        max(len(bad), round(len(good) * args.bad_share / (1 - args.bad_share))) if args.bad_share else 0
    )
    payloads = good + [bad[i % len(bad)] for i in range(bad_count)]

    servers = {}
    try:
        for batching in (True, False):
            process, url = start_server(args.config, workdir, batching, args.server_flag)
            servers[batching] = {"process": process, "url": url, "rss": RssSampler(process.pid), "runs": []}
        for server in servers.values():  # warm-up at full concurrency, then the baseline RSS
            asyncio.run(load(server["url"], payloads, args.clients, 1, seed=1000))
            server["rss_warm"] = server["rss"].now()
            server["rss"].reset()
        for round_index in range(args.rounds):
            for batching, server in servers.items():
                print(f"round {round_index + 1}/{args.rounds}, batching {'on' if batching else 'off'} ...")
                query = "?overlay=false" if args.no_overlay else ""
                run = asyncio.run(
                    load(server["url"], payloads, args.clients, args.requests, round_index, query)
                )
                server["runs"].append(run)
                server["rss_after_round"] = server.get("rss_after_round", []) + [server["rss"].now()]
    finally:
        for server in servers.values():
            server["rss"].stop()
            server["process"].send_signal(signal.SIGTERM)
        for server in servers.values():
            server["exit"] = server["process"].wait(120)

    results = {"cpu": machine(), "clients": args.clients, "requests_per_client": args.requests}
    results["overlay"], results["server_flags"] = not args.no_overlay, args.server_flag
    results["sizes"] = args.sizes
    results["rounds"], results["payloads"] = args.rounds, {"photos": len(good), "bad": bad_count}
    for batching, server in servers.items():
        results["on" if batching else "off"] = {
            **summary(server["runs"]),
            "rss_warm_mb": server["rss_warm"] / 2**20,
            "rss_peak_mb": server["rss"].peak / 2**20,
            "rss_after_rounds_mb": [rss / 2**20 for rss in server["rss_after_round"]],
            "exit_status": server["exit"],
        }
    results["speedup"] = results["on"]["photos_per_s"] / results["off"]["photos_per_s"]
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=float)
    shutil.rmtree(scratch, ignore_errors=True)


def table(results: dict) -> str:
    """The results as a Markdown table and a line of context."""
    lines = [
        f"{results['clients']} clients x {results['requests_per_client']} requests x {results['rounds']} "
        f"rounds per server ({results['payloads']['photos']} photos of {results['sizes']} px and "
        f"{results['payloads']['bad']} bad files in the mix, overlay {results['overlay']}, "
        f"server flags {' '.join(results['server_flags']) or 'none'}); {results['cpu']}",
        "",
        "| batching | requests/s | photos/s | p50 s | p95 s | p99 s | status codes | RSS warm / peak / after "
        "each round (MB) | exit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in ("on", "off"):
        r = results[key]
        codes = ", ".join(f"{code}: {count}" for code, count in r["statuses"].items())
        after = " / ".join(f"{mb:.0f}" for mb in r["rss_after_rounds_mb"])
        lines.append(
            f"| {key} | {r['requests_per_s']:.2f} | {r['photos_per_s']:.2f} | {r['p50_s']:.2f} | "
            f"{r['p95_s']:.2f} | {r['p99_s']:.2f} | {codes} | {r['rss_warm_mb']:.0f} / "
            f"{r['rss_peak_mb']:.0f} / {after} | {r['exit_status']} |"
        )
    lines.append(f"\nPhotos/s with micro-batching / without: {results['speedup']:.2f}x")
    for key in ("on", "off"):
        phases = ", ".join(
            f"{k.removesuffix('_s')} {v:.3f}" for k, v in results[key]["server_mean_s"].items()
        )
        lines.append(f"Server time per photo (mean s), batching {key}: {phases}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
