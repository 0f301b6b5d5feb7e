"""Slow senders for ``deploy_load.py --stallers K``: K authenticated clients that join, take
their instructions, and answer each with replies that never send a byte.

    .venv/bin/python benchmarks/_stall_clients.py PORT CERTS K STREAMS SECONDS

Client ``s0`` to ``s(K-1)`` each keep a heartbeat going and, whenever a Pull gives them an
instruction, open ``STREAMS`` replies at once that send nothing (and one more, to see it
refused), wait for the server to end them, and Pull again, for ``SECONDS`` seconds or until
the run is over. Prints ``RESULT {json}``: how each reply ended (its reason, or its error).
"""

from __future__ import annotations

import collections
import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

from fedloom.transport._client import ClientOptions, _Session
from fedloom.transport._proto import fedloom_pb2 as pb
from fedloom.transport._wire import decode

ends: collections.Counter[str] = collections.Counter()
lock = threading.Lock()


def _count(what: str) -> None:
    with lock:
        ends[what] += 1


def main(argv: list[str]) -> None:
    port, certs, count, streams = argv[0], Path(argv[1]), int(argv[2]), int(argv[3])
    until = time.monotonic() + float(argv[4])
    ca = (certs / "ca.pem").read_bytes()
    quit_ = threading.Event()

    def silent() -> Iterator[pb.Chunk]:
        quit_.wait(45)  # longer than the server's stall limit (30 s): it ends the call first
        yield from ()

    def one(i: int) -> None:
        cid = f"s{i}"
        tls = ((certs / "clients" / f"{cid}.pem").read_bytes(),
               (certs / "clients" / f"{cid}.key").read_bytes(), ca)  # fmt: skip
        session = _Session(ClientOptions(f"127.0.0.1:{port}", tls))
        try:
            joined = session.join(pb.JoinRequest(phases=["fit"]), timeout=30)

            def beats() -> None:
                while not quit_.wait(3):
                    with contextlib.suppress(grpc.RpcError, ValueError):
                        session.beat(pb.HeartbeatRequest(run_id=joined.run_id), timeout=10)

            threading.Thread(target=beats, daemon=True).start()
            while time.monotonic() < until:
                request = pb.PullRequest(run_id=joined.run_id, wait_seconds=10)
                message = decode(session.pull(request, timeout=70), 1 << 30)
                if message.header.kind in ("done", "failed"):
                    return
                if message.header.kind != "instruction":
                    continue
                opened = [session.push.future(silent(), timeout=120) for _ in range(streams + 1)]
                for future in opened:
                    try:
                        _count(future.result().reason or "accepted")
                    except grpc.RpcError as exc:
                        _count(f"{exc.code().name}: {exc.details()}")
        except grpc.RpcError as exc:
            _count(f"session {exc.code().name}")
        finally:
            session.close()

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, until - time.monotonic()) + 60)
    quit_.set()
    print("RESULT", json.dumps({"ends": dict(ends)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
