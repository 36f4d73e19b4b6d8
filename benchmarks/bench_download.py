"""The cost of bounding a download: MB/s of `components.sources.web.download` (size cap, overall deadline,
http(s) alone) against urllib's plain `urlopen(url).read()`, on one answer served from 127.0.0.1.

The server sends --mb megabytes (default 256: about an Overpass answer for 40 km² of city centre) with a
Content-Length, as Overpass and feed servers do. Cases, side by side in one run, alternating, each the median
of 5 runs after a warm-up:
- `bounded`: download() into a bytearray, with the feed bounds' stall and a cap and deadline that the answer
  stays within;
- `plain`: urlopen(url).read().

Prints one JSON document. Usage: python benchmarks/bench_download.py [--mb N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from components.sources.locations import FEED_LIMITS
from components.sources.web import MB, download

REPEATS = 5
BLOCK = bytes(range(256)) * 4096  # 1 MiB


def serve(size_bytes: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(size_bytes))
            self.end_headers()
            left = size_bytes
            while left:
                piece = BLOCK[:min(left, len(BLOCK))]
                self.wfile.write(piece)
                left -= len(piece)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def bounded(url: str, size_bytes: int) -> int:
    body = bytearray()
    limits = FEED_LIMITS._replace(max_mb=2 * size_bytes / MB, deadline_s=600)
    download(url, url, limits, body.extend)
    return len(body)


def plain(url: str, size_bytes: int) -> int:
    with urllib.request.urlopen(url, timeout=FEED_LIMITS.stall_s) as response:
        return len(response.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="megabytes the answer holds (256)")
    args = parser.parse_args()
    size_bytes = args.mb * MB
    server = serve(size_bytes)
    url = f"http://127.0.0.1:{server.server_address[1]}/answer"
    cases = {"bounded": bounded, "plain": plain}
    seconds = {name: [] for name in cases}
    for repeat in range(REPEATS + 1):
        for name, fetch in cases.items():
            started_s = time.perf_counter()
            assert fetch(url, size_bytes) == size_bytes
            if repeat:  # the first round warms up
                seconds[name].append(time.perf_counter() - started_s)
    server.shutdown()
    result = {name: {"mb_per_s": round(args.mb / statistics.median(times), 1),
                     "best_mb_per_s": round(args.mb / min(times), 1), "worst_mb_per_s": round(args.mb / max(times), 1)}
              for name, times in seconds.items()}
    print(json.dumps({"benchmark": "download", "mb": args.mb, "repeats": REPEATS, "cases": result,
                      "bounded_over_plain": round(result["bounded"]["mb_per_s"] / result["plain"]["mb_per_s"], 3),
                      "machine": {"python": platform.python_version(), "cpus": os.cpu_count()}},
                     indent=2))


if __name__ == "__main__":
    main()
