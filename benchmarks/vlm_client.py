"""VLM client throughput against a local chat-completions server with a fixed reply latency.

Usage: python benchmarks/vlm_client.py [--latency 1.0] [--levels 1 8 32 64]

For each concurrency bound c it sends max(16, 4c) requests (each with a small JPEG image, as the
artefact judges do) and prints requests/s, the ideal c / latency, their ratio (target >= 0.9 at
32), and the server-observed peak of requests in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from fake_openai import FakeOpenAI  # noqa: E402

from pixverve.models.vlm import VLMClient, VLMSettings, user_message  # noqa: E402

SCHEMA = {"type": "object", "required": ["flagged"], "properties": {"flagged": {"type": "boolean"}}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=1.0)  # a fast VLM reply; real ones take seconds
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--quick", action="store_true", help="seconds, tiny sizes: CI checks that it still runs")
    args = ap.parse_args()
    if args.quick:
        args.latency, args.levels = 0.05, [1, 8]
    patch = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    print(f"server latency {args.latency:.2f} s per reply; requests carry one 64 px JPEG")
    print(f"{'concurrency':>11} {'requests':>8} {'seconds':>8} {'req/s':>8} {'ideal':>8} {'ratio':>6} {'peak':>5}")
    for c in args.levels:
        n = max(16, 4 * c)
        with FakeOpenAI(latency=args.latency) as server:
            client = VLMClient(VLMSettings(base_url=server.base_url, model="fake", max_in_flight=c))
            reqs = [("bench", f"r{i}", [user_message(f"judge {i} scenario:ok", [patch])], SCHEMA) for i in range(n)]
            warm = [("bench", f"w{i}", [user_message(f"warm {i} scenario:ok", [patch])], SCHEMA) for i in range(c)]

            async def timed():
                await client.ask_many(warm)  # connections opened and imports done before timing
                t0 = time.perf_counter()
                out = await client.ask_many(reqs)
                dt = time.perf_counter() - t0
                await client.close()
                return out, dt

            results, dt = asyncio.run(timed())
            assert all(r.status == "ok" for r in results)
            peak = server.max_active
        rps, ideal = n / dt, c / args.latency
        print(f"{c:>11} {n:>8} {dt:>8.2f} {rps:>8.1f} {ideal:>8.1f} {rps / ideal:>6.2f} {peak:>5}")


if __name__ == "__main__":
    main()
