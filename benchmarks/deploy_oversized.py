"""What oversized replies cost the server's memory: the gRPC service with mutual TLS on
127.0.0.1 in this process, a model of 650 values (2.6 KB), and replies that declare, and send,
far more than an answer needs.

    .venv/bin/python benchmarks/deploy_oversized.py

Cases (each after a fresh baseline of this process's resident memory, ``VmRSS``):
an unjoined client's reply of 512 MiB; a joined client with nothing to answer, 512 MiB; a
joined client answering its instruction with two replies that declare 384 MiB each and send
64 MiB each. Prints, per case, how the server answered and how far the RSS rose above the
baseline, beside the reply limit the instruction allows.
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fedloom.messages import Instruction
from fedloom.transport._certs import create_federation
from fedloom.transport._client import ClientOptions, _Session
from fedloom.transport._fleet import GrpcFleet
from fedloom.transport._proto import fedloom_pb2 as pb
from fedloom.transport._service import ServerOptions, start_server
from fedloom.transport._wire import decode

MIB = 1 << 20
RUN = "oversized"


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _declaring(message_id: str, size: int, sent: int) -> Iterator[pb.Chunk]:
    header = pb.Header(run_id=RUN, kind="reply", message_id=message_id, round=1, phase="fit")
    header.blobs.add(name="vector", size=size)
    yield pb.Chunk(header=header)
    block = bytes(MIB)
    for _ in range(sent // MIB):
        yield pb.Chunk(data=block)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="fedloom-oversized-"))
    made = create_federation(work, server_hosts=["127.0.0.1"], clients=["a", "b", "c"])
    fleet = GrpcFleet(RUN)
    server, port = start_server(fleet, ServerOptions("127.0.0.1:0", made["server"].load(), {}))
    address = f"127.0.0.1:{port}"
    sessions = {c: _Session(ClientOptions(address, made[c].load())) for c in "abc"}
    for c in "ab":
        sessions[c].join(pb.JoinRequest(phases=["fit"]), timeout=10)
    model = Instruction(1, "fit", np.zeros(650, np.float32))
    limit = fleet.reply_limit(model)
    pool = ThreadPoolExecutor(4)
    pool.submit(lambda: list(fleet.exchange({"a": model}, 60)))
    pulled = decode(sessions["a"].pull(pb.PullRequest(run_id=RUN, wait_seconds=10), timeout=20),
                    1 << 30)  # fmt: skip
    mid = pulled.header.message_id
    results = []

    def case(name: str, who: str, streams: list[tuple[int, int]], message_id: str) -> None:
        base = _rss_mib()
        peak = [base]
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.02):
                peak[0] = max(peak[0], _rss_mib())

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        futures = [
            sessions[who].push.future(_declaring(message_id, size, sent), timeout=60)
            for size, sent in streams
        ]
        answers = []
        for f in futures:
            try:
                answers.append(f.result().reason)
            except Exception as exc:  # the server may end the call before the client finished
                answers.append(f"{type(exc).__name__}")
        done.set()
        watcher.join()
        results.append({"case": name, "answers": answers, "rss_rise_mib": peak[0] - base})

    case("unjoined client, 512 MiB", "c", [(512 * MIB, 512 * MIB)], "any")
    case("joined, nothing to answer, 512 MiB", "b", [(512 * MIB, 512 * MIB)], "any")
    case("joined, answering, 2 x 384 MiB declared, 64 MiB sent each", "a",
         [(384 * MIB, 64 * MIB)] * 2, mid)  # fmt: skip
    fleet.finish()
    for s in sessions.values():
        s.close()
    server.stop(grace=0).wait(5)
    print(json.dumps({"reply_limit_bytes": limit, "cases": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
