"""A loopback HTTP load generator for ``fastslow bench serve`` (standard library only; its own process).

``python -m fastslow_jax.serving.loadgen --port P --clients C --seconds S --max-requests N --rerank K``
runs C clients, each on one keep-alive HTTP/1.1 connection to 127.0.0.1:P, sending
``GET /api/search?q=...&k=10&rerank=K`` back to back (queries taken in turn from QUERIES) until S
seconds or N requests in all have passed, and prints one JSON object: per request its latency and
status, and for every distinct query the distinct answers seen (ids, Fast and Slow scores), so that
the caller can compare them with the unbatched engine. A request that gets no answer within
``--request-timeout`` counts as hung (its connection is dropped and reopened). Only loopback
addresses are accepted.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
import time
from urllib.parse import quote

QUERIES = (
    "a small red circle",
    "a large blue square above a small green triangle",
    "two yellow diamonds",
    "a purple circle in the bottom left corner",
    "a small green square to the right of a large red triangle",
    "a blue star",
    "a large yellow circle below a small purple square",
    "three red triangles",
    "a small blue diamond to the left of a large green circle and a yellow square in the top right corner",
    "an orange square",
    "a large purple triangle above a small red diamond",
    "a green circle next to a blue circle",
)


def check_loopback(host: str) -> str:
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = host == "localhost"
    if not ok:
        raise ValueError(f"the load generator only targets loopback addresses (127.0.0.0/8, ::1), not {host!r}")
    return host


def answer_key(body: dict) -> tuple:
    """What an answer says, rounded so that equal answers compare equal: (ids, fast, slow) per result."""
    return tuple((r["index"], round(r["fast_score"], 4), None if r["slow_score"] is None else round(r["slow_score"], 3))
                 for r in body["results"])


async def _request(reader, writer, host: str, path: str) -> tuple[int, dict, bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def run(host: str, port: int, clients: int, seconds: float, max_requests: int, rerank: int, k: int = 10,
              request_timeout: float = 30.0, backoff_s: float = 0.02) -> dict:
    check_loopback(host)
    start = time.perf_counter()
    deadline = start + seconds
    budget = [max_requests]
    records: list[tuple[float, int]] = []  # (latency s, status; 0 = hung, -1 = connection error)
    answers: dict[str, set] = {}
    retry_after: list[str] = []

    async def client(i: int) -> None:
        reader = writer = None
        n = 0
        while time.perf_counter() < deadline and budget[0] > 0:
            budget[0] -= 1
            query = QUERIES[(i + n) % len(QUERIES)]
            n += 1
            path = f"/api/search?q={quote(query)}&k={k}&rerank={rerank}"
            t0 = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                status, headers, body = await asyncio.wait_for(_request(reader, writer, host, path), request_timeout)
            except asyncio.TimeoutError:
                records.append((time.perf_counter() - t0, 0))
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            except (OSError, asyncio.IncompleteReadError, ValueError):
                records.append((time.perf_counter() - t0, -1))
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(backoff_s)
                continue
            records.append((time.perf_counter() - t0, status))
            if status == 200:
                answers.setdefault(query, set()).add(answer_key(json.loads(body)))
            elif status == 503:
                retry_after.append(headers.get("retry-after", ""))
                await asyncio.sleep(backoff_s)
            if headers.get("connection", "").lower() == "close":
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    return {"clients": clients, "rerank": rerank, "k": k, "elapsed_s": time.perf_counter() - start,
            "latency_s": [r[0] for r in records], "status": [r[1] for r in records],
            "retry_after": sorted(set(retry_after)),
            "answers": {q: [list(map(list, a)) for a in sorted(v, key=repr)] for q, v in answers.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastslow_jax.serving.loadgen", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--max-requests", type=int, required=True)
    p.add_argument("--rerank", type=int, default=0)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--request-timeout", type=float, default=30.0)
    args = p.parse_args(argv)
    try:
        import uvloop  # a faster event loop when installed (it is in the pinned stack), else asyncio's
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    try:
        out = asyncio.run(run(args.host, args.port, args.clients, args.seconds, args.max_requests, args.rerank,
                              args.k, args.request_timeout))
    except ValueError as err:
        print(f"loadgen: error: {err}", file=sys.stderr)
        return 1
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
