"""VLM client throughput against a local chat-completions server with a fixed reply latency.

Usage: python benchmarks/vlm_client.py [--latency 1.0] [--levels 1 8 32 64]

For each concurrency bound c it sends max(16, 4c) requests (each with a small JPEG image, as the
artefact judges do) and prints requests/s, the ideal c / latency, their ratio (target >= 0.9 at
32), and the server-observed peak of requests in flight.  Then the reply cache (issue 27): the
cost of a request's fingerprint and of a cache lookup for a 768 px patch (what a region judge
sends), side by side with one reply's latency, and a rerun answered wholly from the cache.
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

            async def timed(client=client, warm=warm, reqs=reqs):
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
    reply_cache(args.latency, 8 if args.quick else 64)


def reply_cache(latency: float, n: int) -> None:
    """Fingerprint cost per request against the reply latency, and a rerun from the cache."""
    import tempfile
    import tracemalloc

    from pixverve.models import replies

    patch = np.random.default_rng(1).integers(0, 255, (768, 768, 3), dtype=np.uint8)
    reqs = [("bench", f"img{i}:p", [user_message(f"judge {i} scenario:ok", [patch])], SCHEMA) for i in range(n)]
    t0 = time.perf_counter()
    keys = [replies.fingerprint("fake", m, "{}", s) for _, _, m, s in reqs]
    per_key = (time.perf_counter() - t0) / n
    with tempfile.TemporaryDirectory() as tmp:
        replies.use_reply_cache(Path(tmp) / "replies.jsonl")
        try:
            with FakeOpenAI(latency=latency) as server:
                first = VLMClient(VLMSettings(base_url=server.base_url, model="fake", max_in_flight=32))
                t0 = time.perf_counter()
                first.run_many(reqs)
                asked = time.perf_counter() - t0
                tracemalloc.start()
                again = VLMClient(VLMSettings(base_url=server.base_url, model="fake", max_in_flight=32))
                t0 = time.perf_counter()
                out = again.run_many(reqs)
                cached = time.perf_counter() - t0
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                sent_again = server.requests - n
        finally:
            replies.use_reply_cache(None)
    assert all(r.cached for r in out) and sent_again == 0 and len(set(keys)) == n
    print(f"reply cache, {n} requests with a 768 px JPEG patch:")
    print(f"  fingerprint {per_key * 1e3:.2f} ms/request = {per_key / latency:.4f} of one {latency:.2f} s reply")
    print(
        f"  first run {asked:.2f} s, rerun from the cache {cached:.2f} s (ratio {cached / asked:.3f}), "
        f"0 requests sent again, peak traced memory of the rerun {peak / 2**20:.1f} MiB"
    )


if __name__ == "__main__":
    main()
