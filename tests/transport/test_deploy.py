"""The deployment, end to end: real ``fedloom`` server and client processes on 127.0.0.1.

Where a test must craft the messages itself (a replayed reply, a malformed or poisoned update)
it runs the gRPC service in this process and talks to it over a real mutual-TLS channel.
"""

from __future__ import annotations

import collections
import contextlib
import random
import shutil
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from _procs import Fedloom, Proc, rounds

from fedloom.client import ClientApp, ClientContext, LinearTrainer
from fedloom.data import ArrayData, ClientData
from fedloom.messages import Instruction, Reply
from fedloom.recipes import simulate
from fedloom.server import RunResult, RunStore, load_checkpoint, run_rounds
from fedloom.strategy import RoundOutcome, make_strategy
from fedloom.transport._certs import Credentials, create_federation
from fedloom.transport._client import ClientOptions, _send, _Session, run_client
from fedloom.transport._fleet import GrpcFleet
from fedloom.transport._proto import fedloom_pb2 as pb
from fedloom.transport._service import SERVICE, ServerOptions, start_server
from fedloom.transport._wire import Message, decode, encode_reply

# ------------------------------------------------------------------ real processes


@pytest.fixture
def certs(fedloom: Fedloom) -> str:
    fedloom.run("certs", "certs --out certs --server-host 127.0.0.1 --clients 0,1,2,3")
    return "certs"


def _server(
    fedloom: Fedloom,
    name: str,
    *,
    out: str,
    rounds: int,
    clients: int,
    min_clients: int,
    address: str = "127.0.0.1:0",
    extra: tuple[str, ...] = (),
) -> tuple[Proc, int]:
    """A ``fedloom server`` (logreg on digits, TLS) and the port it listens on."""
    args = (
        f"server --certs certs --address {address} --model logreg --dataset digits "
        f"--clients {clients} --min-clients {min_clients} --rounds {rounds} "
        f"--wait-for-clients 60 --out {out}"
    )
    server = fedloom.start(name, args, *extra)
    return server, fedloom.port(server)


def _client(port: int, client_id: str, clients: int, *extra: str) -> tuple[str, ...]:
    """The arguments of a ``fedloom client`` training on its partition of digits."""
    args = f"client --server 127.0.0.1:{port} --client-id {client_id} --dataset digits"
    return (f"{args} --clients {clients}", *extra)


def _participation(store: RunStore, round: int) -> list[tuple[str, str]]:
    return sorted((p.client_id, p.status) for p in store.participation(round))


@pytest.mark.slow  # real server and client processes
def test_a_run_of_several_rounds_completes_with_mutual_tls(
    fedloom: Fedloom, certs: str, tmp_path: Path
) -> None:
    # Prepare
    server, port = _server(fedloom, "server", out="run", rounds=3, clients=3, min_clients=3)
    reference = simulate(model="logreg", dataset="digits", clients=3, rounds=3, min_clients=3)

    # Execute
    clients = [
        fedloom.start(f"client{c}", *_client(port, str(c), 3, "--certs", certs)) for c in range(3)
    ]
    status = fedloom.wait(server, 60)

    # Assert: every round with every client; the model is the one the simulation trains
    assert status == 0, fedloom.logs()
    for client in clients:
        assert fedloom.wait(client, 30) == 0, fedloom.logs()
        assert "this client answered 3 instructions" in client.out(), fedloom.logs()
    history = rounds(tmp_path / "run") or []
    assert [(r["round"], r["clients"]) for r in history] == [(1, 3), (2, 3), (3, 3)]
    np.testing.assert_allclose(
        [r["accuracy"] for r in history], np.array([r.accuracy for r in reference.history.rounds])
    )
    with RunStore(tmp_path / "run" / "run.db") as store:
        latest = store.latest()
        taken = {r: _participation(store, r) for r in (1, 2, 3)}
    everyone = [("0", "accepted"), ("1", "accepted"), ("2", "accepted")]
    assert latest.round == 3 and taken == {1: everyone, 2: everyone, 3: everyone}
    saved = load_checkpoint(tmp_path / "run" / "model.npz")
    np.testing.assert_array_equal(saved.parameters, latest.parameters)
    # the sum of the three updates may be taken in another order than in the simulation
    np.testing.assert_allclose(latest.parameters, reference.parameters, rtol=1e-6, atol=1e-7)


def _accepted(db: Path, client_id: str) -> Callable[[], int | None]:
    """A check for :meth:`Fedloom.until`: the last committed round, once ``client_id`` took
    part in it (read from the run store while the server writes it)."""

    def check() -> int | None:
        with RunStore(db) as store:
            latest = store.latest().round
            return latest if (client_id, "accepted") in _participation(store, latest) else None

    return check


@pytest.mark.slow  # real server and client processes
def test_a_client_killed_mid_round_does_not_stop_the_round(
    fedloom: Fedloom, certs: str, tmp_path: Path
) -> None:
    # Prepare: 4 clients, 3 needed; local training takes a while (hundreds of local epochs), so
    # a kill right after a round that client 3 took part in lands while the next one trains
    server, port = _server(
        fedloom,
        "server",
        out="run",
        rounds=3,
        clients=4,
        min_clients=3,
        extra=("--local-epochs", "400", "--round-timeout", "3"),
    )
    clients = [
        fedloom.start(f"client{c}", *_client(port, str(c), 4, "--certs", certs)) for c in range(4)
    ]
    # the first round starts once 3 have joined, so client 3 may join only for the second
    killed_after = fedloom.until(
        "a round with client 3", _accepted(tmp_path / "run/run.db", "3"), timeout=60
    )

    # Execute
    clients[3].kill()
    status = fedloom.wait(server, 60)

    # Assert: the rounds after the kill completed with the other three; client 3 is named in
    # the log, and recorded as dropped
    assert killed_after < 3, fedloom.logs()
    assert status == 0, fedloom.logs()
    history = rounds(tmp_path / "run") or []
    assert [r["round"] for r in history] == [1, 2, 3]
    assert [r["clients"] for r in history[killed_after:]] == [3] * (3 - killed_after)
    assert "no reply from 3 in time" in server.err(), fedloom.logs()
    with RunStore(tmp_path / "run" / "run.db") as store:
        after = [_participation(store, r) for r in range(killed_after + 1, 4)]
    three = [("0", "accepted"), ("1", "accepted"), ("2", "accepted"), ("3", "dropped")]
    assert after == [three] * (3 - killed_after)
    for client in clients[:3]:
        assert fedloom.wait(client, 30) == 0, fedloom.logs()


def _written(out: Path, count: int) -> Callable[[], list[dict[str, Any]] | None]:
    """A check for :meth:`Fedloom.until`: ``OUT/history.json`` once it holds ``count`` rounds."""

    def check() -> list[dict[str, Any]] | None:
        history = rounds(out)
        return history if history is not None and len(history) >= count else None

    return check


@pytest.mark.slow  # real server and client processes
@pytest.mark.parametrize("seed", [None, 3, 11], ids=["after-round-2", "seed-3", "seed-11"])
def test_a_server_killed_between_rounds_resumes_and_ends_with_the_uninterrupted_model(
    fedloom: Fedloom, certs: str, tmp_path: Path, seed: int | None
) -> None:
    # Prepare: run A, without interruption, and run B, the same, side by side
    run: dict[str, Any] = {"rounds": 4, "clients": 3, "min_clients": 3}
    extra = ("--seed", "7", "--local-epochs", "100")
    server_a, port_a = _server(fedloom, "server-a", out="run-a", extra=extra, **run)
    server_b, port_b = _server(fedloom, "server-b", out="run-b", extra=extra, **run)
    clients = [
        fedloom.start(
            f"{name}-client{c}", *_client(port, str(c), 3, "--certs", certs, "--give-up", "60")
        )
        for name, port in (("a", port_a), ("b", port_b))
        for c in range(3)
    ]

    # Execute: B's server is SIGKILLed as soon as round 2 is written (or at a seeded moment
    # from round 1 on: mid-round, mid-commit or between rounds), then resumed on the same
    # port; its clients keep retrying and join the resumed server on their own
    if seed is None:
        fedloom.until("round 2 of run B", _written(tmp_path / "run-b", 2), timeout=60)
    else:
        fedloom.until("round 1 of run B", _written(tmp_path / "run-b", 1), timeout=60)
        time.sleep(random.Random(seed).uniform(0.0, 2.0))
    server_b.kill()
    with RunStore(tmp_path / "run-b" / "run.db") as store:
        committed = store.latest().round
    before = rounds(tmp_path / "run-b") or []
    resumed, _ = _server(
        fedloom,
        "server-b-resumed",
        out="run-b",
        address=f"127.0.0.1:{port_b}",
        extra=(*extra, "--resume"),
        **run,
    )
    status = fedloom.wait(resumed, 60)

    # Assert: killed mid-run; every round once, with every client; the same model as run A
    assert 1 <= committed <= 4, fedloom.logs()  # 4: it had finished; the resume says so
    assert status == 0 and fedloom.wait(server_a, 60) == 0, fedloom.logs()
    for client in clients:
        assert fedloom.wait(client, 30) == 0, fedloom.logs()
    history, uninterrupted = rounds(tmp_path / "run-b") or [], rounds(tmp_path / "run-a") or []
    assert [(r["round"], r["clients"]) for r in history] == [(1, 3), (2, 3), (3, 3), (4, 3)]
    assert history[:committed] == before[:committed]  # the very records: not trained again
    everyone = [("0", "accepted"), ("1", "accepted"), ("2", "accepted")]
    with RunStore(tmp_path / "run-b" / "run.db") as store:
        latest = store.latest()
        taken = {r: _participation(store, r) for r in (1, 2, 3, 4)}
    assert latest.round == 4 and taken == dict.fromkeys((1, 2, 3, 4), everyone)
    a = load_checkpoint(tmp_path / "run-a" / "model.npz")
    b = load_checkpoint(tmp_path / "run-b" / "model.npz")
    assert a.round == b.round == 4
    # float sums over replies that arrive in another order may differ in the last bit
    np.testing.assert_allclose(b.parameters, a.parameters, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(latest.parameters, a.parameters, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        [r["accuracy"] for r in history], [r["accuracy"] for r in uninterrupted]
    )


@pytest.mark.slow  # real server and client processes
def test_unauthenticated_and_revoked_clients_are_refused_and_the_run_completes(
    fedloom: Fedloom, certs: str, tmp_path: Path
) -> None:
    # Prepare: an impostor holding a certificate for "2" from another federation's CA (it
    # trusts our CA, so only its own certificate can fail it), a client without TLS that names
    # itself "1", and client 2 revoked once the server runs
    fedloom.run("other", "certs --out other --server-host 127.0.0.1 --clients 2")
    shutil.copyfile(tmp_path / "certs" / "ca.pem", tmp_path / "other" / "ca.pem")
    server, port = _server(fedloom, "server", out="run", rounds=2, clients=3, min_clients=2)
    fedloom.run("revoke", f"certs --out {certs} --revoke 2")

    # Execute: they try first, and give up; then clients 0 and 1 join
    refused = {
        "impostor": _client(port, "2", 3, "--certs", "other", "--give-up", "2"),
        "plaintext": _client(port, "1", 3, "--insecure", "--give-up", "2"),
        "revoked": _client(port, "2", 3, "--certs", certs, "--give-up", "2"),
    }
    tried = {name: fedloom.start(name, *args) for name, args in refused.items()}
    statuses = {name: fedloom.wait(proc, 30) for name, proc in tried.items()}
    clients = [
        fedloom.start(f"client{c}", *_client(port, str(c), 3, "--certs", certs)) for c in range(2)
    ]
    status = fedloom.wait(server, 60)

    # Assert: the three failed (the TLS handshake, or PERMISSION_DENIED), and never took part
    assert all(code != 0 for code in statuses.values()), fedloom.logs()
    assert not any("the run is over" in proc.out() for proc in tried.values())
    assert "UNAVAILABLE" in tried["impostor"].err(), fedloom.logs()
    assert "UNAVAILABLE" in tried["plaintext"].err(), fedloom.logs()
    assert "PERMISSION_DENIED" in tried["revoked"].err(), fedloom.logs()
    assert "client 2 is revoked" in tried["revoked"].err(), fedloom.logs()
    assert "refused revoked client 2" in server.err(), fedloom.logs()
    assert status == 0, fedloom.logs()
    for client in clients:
        assert fedloom.wait(client, 30) == 0, fedloom.logs()
    assert [(r["round"], r["clients"]) for r in rounds(tmp_path / "run") or []] == [(1, 2), (2, 2)]
    with RunStore(tmp_path / "run" / "run.db") as store:
        taken = [_participation(store, r) for r in (1, 2)]
    assert taken == [[("0", "accepted"), ("1", "accepted")]] * 2


# ------------------------------------------------------------------ the service in this process

RUN = "run-1"
F32 = np.float32


def _context(client_id: str) -> Callable[[dict[str, Any]], ClientContext]:
    """``run_client``'s ``make_context`` for handlers that touch neither data nor a trainer."""
    empty = ArrayData(np.zeros((0, 1), F32), np.zeros(0, np.int64))
    return lambda model: ClientContext(client_id, ClientData(empty, empty), LinearTrainer(1, 2))


@dataclass
class Service:
    """A :class:`GrpcFleet` behind the real gRPC service with mutual TLS, and ways to reach it."""

    fleet: GrpcFleet
    address: str
    credentials: dict[str, Credentials]
    pool: ThreadPoolExecutor
    sessions: list[_Session] = field(default_factory=list)

    def join(self, client_id: str) -> _Session:
        """A TLS channel with ``client_id``'s certificate, joined."""
        session = _Session(ClientOptions(self.address, self.credentials[client_id].load()))
        self.sessions.append(session)
        session.join(pb.JoinRequest(phases=["fit"]), timeout=10)
        return session

    def exchange(self, instructions: dict[str, Instruction], timeout: float = 10) -> Future[Any]:
        """The replies of the round loop's ``exchange``, run in a thread as the loop would."""
        return self.pool.submit(lambda: list(self.fleet.exchange(instructions, timeout)))


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    with _running(tmp_path) as running:
        yield running


@contextlib.contextmanager
def _running(tmp_path: Path, **options: Any) -> Iterator[Service]:
    """The service with clients ``a`` and ``b`` (and ``options`` for :class:`ServerOptions`)."""
    made = create_federation(tmp_path, server_hosts=["127.0.0.1"], clients=["a", "b"])
    fleet = GrpcFleet(RUN)
    server, port = start_server(
        fleet, ServerOptions("127.0.0.1:0", made["server"].load(), {}, **options)
    )
    pool = ThreadPoolExecutor(2)
    running = Service(fleet, f"127.0.0.1:{port}", made, pool)
    try:
        yield running
    finally:
        fleet.finish()
        for session in running.sessions:
            session.close()
        # bounded: after a Push of bytes that are not chunks, grpc's shutdown never completes
        server.stop(grace=0).wait(5)
        pool.shutdown(wait=True)


def _pull(session: _Session) -> Message:
    """The session's outstanding instruction, as the client runtime receives it."""
    request = pb.PullRequest(run_id=RUN, wait_seconds=10)
    return decode(session.pull(request, timeout=20), 1 << 30)


def _push(session: _Session, chunks: list[pb.Chunk]) -> tuple[bool, str]:
    answer = session.push(iter(chunks), timeout=10)
    return answer.accepted, answer.reason


def _reply(message_id: str, vector: Any, *, round: int = 1, run_id: str = RUN) -> list[pb.Chunk]:
    """The chunks of a fit reply with ``vector`` (and 5 examples) to ``message_id``."""
    reply = Reply("ignored: the id comes from TLS", round, "fit", np.asarray(vector, F32), 5)
    return list(encode_reply(run_id, message_id, reply))


def _declared(message_id: str, *blobs: tuple[str, int], data: tuple[bytes, ...]) -> list[pb.Chunk]:
    """A reply header declaring ``blobs`` (name, size) followed by ``data`` chunks."""
    header = pb.Header(
        run_id=RUN, message_id=message_id, kind="reply", round=1, phase="fit", num_examples=5
    )
    header.blobs.extend(pb.Blob(name=name, size=size) for name, size in blobs)
    return [pb.Chunk(header=header), *(pb.Chunk(data=d) for d in data)]


def _kind(chunks: list[pb.Chunk], kind: str) -> list[pb.Chunk]:
    chunks[0].header.kind = kind
    return chunks


MODEL = Instruction(1, "fit", np.zeros(4, F32))
GOOD_A, GOOD_B = [1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]
LIMIT = 1 << 31  # the service's default bound on one message
MALFORMED: dict[str, tuple[Callable[[str], list[pb.Chunk]], str]] = {
    "NaN": (lambda mid: _reply(mid, [1, np.nan, 0, 0]), "the update contains NaN or Inf"),
    "Inf": (lambda mid: _reply(mid, [1, 0, -np.inf, 0]), "the update contains NaN or Inf"),
    "too short": (lambda mid: _reply(mid, [1, 2, 3]), "the update has 3 values, the model 4"),
    "too long": (lambda mid: _reply(mid, np.ones(5)), "the update has 5 values, the model 4"),
    "no header": (
        lambda mid: [pb.Chunk(data=bytes(16))],
        "the stream does not start with a header",
    ),
    "empty": (lambda mid: [], "the stream does not start with a header"),
    "truncated": (
        lambda mid: _declared(mid, ("vector", 16), data=(bytes(8),)),
        "truncated: 8 of 16 declared bytes arrived",
    ),
    "overlong": (
        lambda mid: _declared(mid, ("vector", 8), data=(bytes(16),)),
        "more data than the 8 bytes the header declares",
    ),
    "over the size limit": (
        lambda mid: _declared(mid, ("vector", LIMIT + 4), data=()),
        f"the message declares {LIMIT + 4} bytes, more than the limit {LIMIT}",
    ),
    "second header": (
        lambda mid: [*_reply(mid, GOOD_A), *_reply(mid, GOOD_A)[:1]],
        "a second header inside one message",
    ),
    "repeated blob": (
        lambda mid: _declared(mid, ("vector", 16), ("vector", 16), data=(bytes(32),)),
        "a blob name repeats",
    ),
    "partial float": (
        lambda mid: _declared(mid, ("vector", 6), data=(bytes(6),)),
        "the vector has 6 bytes, not a whole number of float32",
    ),
    "another run": (lambda mid: _reply(mid, GOOD_A, run_id="run-0"), "not a reply of this run"),
    "not a reply": (
        lambda mid: _kind(_reply(mid, GOOD_A), "instruction"),
        "not a reply of this run",
    ),
    "another round": (
        lambda mid: _reply(mid, GOOD_A, round=2),
        "answers round 2 phase 'fit', expected 1 'fit'",
    ),
}


SETTLED = ("NaN", "Inf", "too short", "too long", "partial float")
"""Cases that answer the outstanding instruction with unusable content."""


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_or_poisoned_reply_is_refused_and_the_exchange_goes_on(
    service: Service, case: str
) -> None:
    # Prepare
    make, reason = MALFORMED[case]
    a, b = service.join("a"), service.join("b")
    replies = service.exchange({"a": MODEL, "b": MODEL})
    mid_a, mid_b = _pull(a).header.message_id, _pull(b).header.message_id

    # Execute: a sends the bad reply, then b and a send good ones
    refused = _push(a, make(mid_a))
    good = [_push(b, _reply(mid_b, GOOD_B)), _push(a, _reply(mid_a, GOOD_A))]

    # Assert
    assert refused == (False, reason)
    got = {r.client_id: r.vector for r in replies.result(timeout=20)}
    np.testing.assert_array_equal(got["b"], GOOD_B)
    if case in SETTLED:
        # a reply that answers its instruction but is unusable settles it: the round sees it
        # at once (and rejects it, with the reason, in its fit checks; one that cannot even be
        # decoded arrives as a refusal that carries the reason); a second answer is not counted
        assert good == [(True, ""), (True, "already accepted (a retry)")]
        assert "a" in got
        assert got["a"] is None or not np.array_equal(got["a"], GOOD_A)
    else:
        assert good == [(True, ""), (True, "")]
        np.testing.assert_array_equal(got["a"], GOOD_A)


def test_a_declared_size_is_not_reserved_before_its_bytes_arrive(service: Service) -> None:
    # a header of a few bytes must not make the server set aside what it declares: under the
    # 2 GiB limit, every client could hold 2 GiB of the server's memory per Push it keeps open
    a = service.join("a")
    replies = service.exchange({"a": MODEL}, timeout=5)
    mid = _pull(a).header.message_id
    declared = 256 << 20

    tracemalloc.start()
    try:
        refused = _push(a, _declared(mid, ("vector", declared), data=(bytes(1 << 20),) * 4))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # refused at its header: a reply to a 4-value model needs at most 16 * 5 bytes, 1 MiB and
    # 256 bytes for the one client the server knows; none of the data was kept
    limit = 16 * 5 + (1 << 20) + 256 * 1
    assert refused == (False, f"the reply declares {declared} bytes; an answer to it needs at "
                              f"most {limit}")  # fmt: skip
    assert peak < declared // 16, f"{peak / 2**20:.0f} MiB set aside for a header"
    replies.result(timeout=20)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply("a", 1, "fit", None, 5), "no update vector"),
        (Reply("a", 1, "fit", np.ones(4, F32), 0), "num_examples is 0; it must be positive"),
    ],
)
def test_a_refused_reply_settles_its_client_for_the_round_at_once(
    service: Service, reply: Reply, reason: str
) -> None:
    # Prepare: a round that would wait a minute for a client that does not answer
    a = service.join("a")
    replies = service.exchange({"a": MODEL}, timeout=60)
    mid = _pull(a).header.message_id

    # Execute
    refused = _push(a, list(encode_reply(RUN, mid, reply)))

    # Assert: the client hears why; the round has its answer now, not in a minute
    assert refused == (False, reason)
    got = replies.result(timeout=5)
    assert [r.client_id for r in got] == ["a"]


def test_a_client_with_nothing_to_answer_is_refused_at_its_header(service: Service) -> None:
    # a joined client with no outstanding instruction, declaring 512 MiB, sends no byte
    # that the server keeps; nor does one answering a message id it was never sent
    a = service.join("a")
    tracemalloc.start()
    try:
        idle = _push(a, _declared("any", ("vector", 512 << 20), data=(bytes(1 << 20),) * 2))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert idle == (False, "answers no outstanding instruction (stale, replayed or misrouted)")
    assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB kept for a refused header"


def test_a_client_the_round_waits_for_no_reply_from_holds_no_reply_open(service: Service) -> None:
    # Prepare: b is joined but has no instruction; its 70 replies send no byte at all
    b = service.join("b")
    release = threading.Event()

    def silent() -> Iterator[pb.Chunk]:
        release.wait(30)
        yield from ()

    try:
        # Execute
        opened = [b.push.future(silent(), timeout=30) for _ in range(70)]
        answers = collections.Counter(f.result(timeout=5).reason for f in opened)
    finally:
        release.set()

    # Assert: each refused at once (within the 5 s, not after the 30 s stall)
    assert answers == {"answers no outstanding instruction (stale, replayed or misrouted)": 70}


def test_bytes_that_are_not_chunks_are_refused_and_the_exchange_goes_on(service: Service) -> None:
    # Prepare
    a = service.join("a")
    replies = service.exchange({"a": MODEL})
    mid = _pull(a).header.message_id
    raw = a.channel.stream_unary(f"/{SERVICE}/Push", lambda b: b, pb.PushReply.FromString)

    # Execute
    garbage = raw(iter([b"\xff\xff\xff\xff not protobuf"]), timeout=10)
    good = _push(a, _reply(mid, GOOD_A))

    # Assert: a refusal with a reason, not a gRPC error
    assert not garbage.accepted and "bytes that are not a chunk" in garbage.reason
    assert good == (True, "")
    assert [r.vector.tolist() for r in replies.result(timeout=20)] == [GOOD_A]


def test_clients_waiting_for_work_hold_no_server_thread(service: Service) -> None:
    # Prepare: 100 long Pulls from a, more than the 64 threads the service used to have
    a, b = service.join("a"), service.join("b")
    before = threading.active_count()
    request = pb.PullRequest(run_id=RUN, wait_seconds=30)
    waiting = [a.pull(request, timeout=40) for _ in range(100)]
    try:
        # Execute: b's heartbeat and pull are answered while a's Pulls wait
        beat = b.beat(pb.HeartbeatRequest(run_id=RUN), timeout=5)
        idle = decode(b.pull(pb.PullRequest(run_id=RUN, wait_seconds=0), timeout=5), 1 << 20)
        grown = threading.active_count() - before
        # an instruction for a wakes every one of its Pulls, long before their 30 s run out
        replies = service.exchange({"a": MODEL}, timeout=20)
        got = [decode(call, 1 << 20) for call in waiting]
    finally:
        for call in waiting:
            call.cancel()

    # Assert
    assert beat.known and idle.header.kind == "wait"
    assert grown < 8, f"{grown} threads for 100 waiting clients"
    assert {m.header.kind for m in got} == {"instruction"}
    assert len({m.header.message_id for m in got}) == 1
    _push(a, _reply(got[0].header.message_id, GOOD_A))
    assert [r.client_id for r in replies.result(timeout=20)] == ["a"]


@dataclass
class Stalled:
    """Clients a and b with an instruction each, and ``opened``: a's replies that sent their
    (admissible) header and then nothing."""

    a: _Session
    b: _Session
    mid_a: str
    mid_b: str
    replies: Future[Any]
    opened: list[Any]


@contextlib.contextmanager
def _stalling(service: Service, count: int) -> Iterator[Stalled]:
    a, b = service.join("a"), service.join("b")
    replies = service.exchange({"a": MODEL, "b": MODEL}, timeout=30)
    mid_a, mid_b = _pull(a).header.message_id, _pull(b).header.message_id
    release = threading.Event()

    def stalled() -> Iterator[pb.Chunk]:
        yield _reply(mid_a, GOOD_A)[0]
        release.wait(30)

    try:
        opened = [a.push.future(stalled(), timeout=30) for _ in range(count)]
        yield Stalled(a, b, mid_a, mid_b, replies, opened)
    finally:
        release.set()


def test_stalled_replies_are_dropped_and_the_others_are_served(tmp_path: Path) -> None:
    with _running(tmp_path, stall_seconds=3.0) as service, _stalling(service, 70) as st:
        # Execute: b is heard while a's 70 streams are open
        beat = st.b.beat(pb.HeartbeatRequest(run_id=RUN), timeout=5)
        b_answer = _push(st.b, _reply(st.mid_b, GOOD_B))
        answers = collections.Counter(f.result(timeout=20).reason for f in st.opened)

        # Assert: two streams are let in and dropped when they stall; the rest are refused
        # at once; a's instruction is still open, so its honest reply is taken
        assert beat.known and b_answer == (True, "")
        assert answers == {
            "2 replies from this client are already arriving; send one at a time": 68,
            "no bytes for 3 s: a stalled reply is dropped": 2,
        }
        assert _push(st.a, _reply(st.mid_a, GOOD_A)) == (True, "")
        got = {r.client_id: r.vector.tolist() for r in st.replies.result(timeout=20)}
        assert got == {"a": GOOD_A, "b": GOOD_B}


def test_replies_past_the_servers_limit_are_turned_away_until_one_ends(tmp_path: Path) -> None:
    with (
        _running(tmp_path, stall_seconds=2.0, pushes_at_once=2) as service,
        _stalling(service, 2) as st,  # a's two stalled replies are all the server takes
    ):
        time.sleep(0.5)  # both are in
        # Execute: b's reply while they are open; then as the client runtime sends it
        with pytest.raises(grpc.RpcError) as busy:
            _push(st.b, _reply(st.mid_b, GOOD_B))
        answer = Reply("b", 1, "fit", np.array(GOOD_B, F32), 10)
        sent = service.pool.submit(_send, st.b, RUN, st.mid_b, answer)
        dropped = [f.result(timeout=20).reason for f in st.opened]
        again = sent.result(timeout=20)

        # Assert: turned away as UNAVAILABLE; the runtime sends it again until it is taken
        assert busy.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "the server is taking 2 replies" in (busy.value.details() or "")
        assert dropped == ["no bytes for 2 s: a stalled reply is dropped"] * 2
        assert (again.accepted, again.reason) == (True, "")
        assert _push(st.a, _reply(st.mid_a, GOOD_A)) == (True, "")
        assert sorted(r.client_id for r in st.replies.result(timeout=20)) == ["a", "b"]


def test_a_retried_reply_is_acknowledged_and_counted_once(service: Service) -> None:
    # Prepare
    a, b = service.join("a"), service.join("b")
    replies = service.exchange({"a": MODEL, "b": MODEL})
    mid_a, mid_b = _pull(a).header.message_id, _pull(b).header.message_id
    chunks = _reply(mid_a, GOOD_A)

    # Execute: the same chunk stream twice (as after a lost acknowledgement), then b
    first, again = _push(a, chunks), _push(a, chunks)
    other = _push(b, _reply(mid_b, GOOD_B))

    # Assert
    assert (first, again, other) == ((True, ""), (True, "already accepted (a retry)"), (True, ""))
    assert [r.client_id for r in replies.result(timeout=20)] == ["a", "b"]


def test_a_replayed_or_stale_reply_is_not_counted_in_a_later_round(service: Service) -> None:
    # Prepare: round 1, answered
    a = service.join("a")
    round_1 = service.exchange({"a": MODEL})
    old = _reply(_pull(a).header.message_id, GOOD_A)
    assert _push(a, old) == (True, "")
    assert len(round_1.result(timeout=20)) == 1
    round_2 = service.exchange({"a": Instruction(2, "fit", np.zeros(4, F32))})
    mid_2 = _pull(a).header.message_id

    # Execute: round 1's reply again; its vector for round 2's instruction; then a true answer
    replayed = _push(a, old)
    relabelled = _push(a, _reply(mid_2, GOOD_A, round=1))
    fresh = _push(a, _reply(mid_2, GOOD_B, round=2))

    # Assert: the replay is acknowledged as the retry it may be, but round 2 counts only the
    # fresh reply
    assert replayed == (True, "already accepted (a retry)")
    assert relabelled == (False, "answers round 1 phase 'fit', expected 2 'fit'")
    assert fresh == (True, "")
    assert [(r.round, r.vector.tolist()) for r in round_2.result(timeout=20)] == [(2, GOOD_B)]


def test_a_reply_after_its_round_gave_up_on_it_is_refused(service: Service) -> None:
    # Prepare
    a = service.join("a")
    replies = service.exchange({"a": MODEL}, timeout=0.5)
    mid = _pull(a).header.message_id

    # Execute
    gave_up = replies.result(timeout=20)
    late = _push(a, _reply(mid, GOOD_A))

    # Assert
    assert gave_up == []
    assert late == (False, "answers no outstanding instruction (stale, replayed or misrouted)")


def test_a_client_cannot_answer_the_instruction_of_another(service: Service) -> None:
    # Prepare: a learns b's message id
    a, b = service.join("a"), service.join("b")
    replies = service.exchange({"a": MODEL, "b": MODEL})
    mid_a, mid_b = _pull(a).header.message_id, _pull(b).header.message_id

    # Execute: a answers b's instruction with its own certificate; then both answer their own
    forged = _push(a, _reply(mid_b, GOOD_A))
    good = [_push(b, _reply(mid_b, GOOD_B)), _push(a, _reply(mid_a, GOOD_A))]

    # Assert
    assert forged == (False, "answers no outstanding instruction (stale, replayed or misrouted)")
    assert good == [(True, ""), (True, "")]
    got = {r.client_id: r.vector.tolist() for r in replies.result(timeout=20)}
    assert got == {"a": GOOD_A, "b": GOOD_B}


def test_a_model_of_50_million_parameters_makes_a_round_trip(service: Service) -> None:
    # Prepare: a client runtime that answers with twice the model it was sent
    sent = np.random.default_rng(0).standard_normal(50_000_000, dtype=F32)  # 200 MB

    def double(ctx: ClientContext, ins: Instruction) -> Reply:
        assert ins.parameters is not None
        return Reply(ctx.client_id, ins.round, ins.phase, ins.parameters * 2, 1)

    options = ClientOptions(service.address, service.credentials["a"].load(), poll_seconds=1)
    answered = service.pool.submit(run_client, options, _context("a"), ClientApp({"fit": double}))
    assert service.fleet.wait_for_clients(1, 20)

    # Execute
    replies = list(service.fleet.exchange({"a": Instruction(1, "fit", sent)}, timeout=300))
    service.fleet.finish()

    # Assert: all of it came back doubled (exact in float32), compared a slice at a time
    assert answered.result(timeout=30) == 1
    [reply] = replies
    assert reply.vector is not None and reply.vector.dtype == F32
    assert reply.vector.shape == sent.shape
    step = 1 << 22
    for start in range(0, sent.size, step):
        part = slice(start, start + step)
        np.testing.assert_array_equal(reply.vector[part], sent[part] * 2)


# ------------------------------------------------------------------ a poisoned client in a run


@dataclass(frozen=True)
class PoisonedRun:
    """Two rounds of FedAvg over gRPC with clients a, b and one whose update holds a NaN."""

    result: RunResult
    outcomes: list[RoundOutcome]
    calls: collections.Counter[str]
    round_timeout: float


UPDATES = {"a": [1.0, 1.0, 1.0, 1.0], "b": [3.0, 3.0, 3.0, 3.0], "nan": [np.nan, 0.0, 0.0, 0.0]}


@pytest.fixture(scope="module")
def poisoned_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PoisonedRun]:
    made = create_federation(
        tmp_path_factory.mktemp("poisoned"), server_hosts=["127.0.0.1"], clients=list(UPDATES)
    )
    fleet = GrpcFleet(RUN)
    server, port = start_server(fleet, ServerOptions("127.0.0.1:0", made["server"].load(), {}))
    calls: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def fit(ctx: ClientContext, ins: Instruction) -> Reply:
        with lock:
            calls[ctx.client_id] += 1
        return Reply(ctx.client_id, ins.round, ins.phase, np.array(UPDATES[ctx.client_id], F32), 10)

    pool = ThreadPoolExecutor(len(UPDATES))
    for cid in UPDATES:
        options = ClientOptions(f"127.0.0.1:{port}", made[cid].load(), poll_seconds=1)
        pool.submit(run_client, options, _context(cid), ClientApp({"fit": fit}))
    outcomes: list[RoundOutcome] = []
    try:
        assert fleet.wait_for_clients(len(UPDATES), 20)
        result = run_rounds(
            fleet,
            make_strategy("fedavg"),
            np.zeros(4, F32),
            rounds=2,
            min_clients=2,
            round_timeout=3.0,
            on_commit=lambda state, outcome, selected: outcomes.append(outcome),
        )
        yield PoisonedRun(result, outcomes, calls, 3.0)
    finally:
        fleet.finish()
        pool.shutdown(wait=True)
        server.stop(None)


def test_a_poisoned_update_is_kept_out_and_the_rounds_complete(poisoned_run: PoisonedRun) -> None:
    history = poisoned_run.result.history

    assert [(r.round, r.clients) for r in history.rounds] == [(1, 2), (2, 2)]
    assert [sorted(o.accepted) for o in poisoned_run.outcomes] == [["a", "b"], ["a", "b"]]
    # FedAvg of a's 1s and b's 3s (10 examples each) is 2 per round
    np.testing.assert_array_equal(poisoned_run.result.parameters, [4.0, 4.0, 4.0, 4.0])


def test_a_poisoned_update_is_recorded_as_rejected_and_not_asked_for_again(
    poisoned_run: PoisonedRun,
) -> None:
    # the round should record why the client was left out, as it does for an update without a
    # vector, and not keep the client recomputing the refused update until the round times out
    rejected = [
        {c: "NaN or Inf" in why for c, why in o.rejected.items()} for o in poisoned_run.outcomes
    ]
    seconds = [r.seconds for r in poisoned_run.result.history.rounds]

    assert (rejected, dict(poisoned_run.calls)) == ([{"nan": True}] * 2, {"a": 2, "b": 2, "nan": 2})
    assert max(seconds) < poisoned_run.round_timeout


@pytest.mark.slow  # real server and client processes
def test_a_client_reissued_after_revocation_joins_and_its_old_certificate_stays_refused(
    fedloom: Fedloom, certs: str, tmp_path: Path
) -> None:
    # Prepare: client 2's certificate is kept aside, revoked, and a new one issued
    shutil.copytree(tmp_path / certs, tmp_path / "old")
    fedloom.run("revoke", f"certs --out {certs} --revoke 2")
    fedloom.run("reissue", f"certs --out {certs} --server-host 127.0.0.1 --clients 2")
    server, port = _server(fedloom, "server", out="run", rounds=2, clients=3, min_clients=3)

    # Execute: the old certificate tries first, then the three clients with theirs
    stale = fedloom.start("stale", *_client(port, "2", 3, "--certs", "old", "--give-up", "2"))
    stale_status = fedloom.wait(stale, 30)
    clients = [
        fedloom.start(f"client{c}", *_client(port, str(c), 3, "--certs", certs)) for c in range(3)
    ]
    status = fedloom.wait(server, 60)

    # Assert
    assert stale_status == 2 and "client 2 is revoked" in stale.err(), fedloom.logs()
    assert status == 0, fedloom.logs()
    for client in clients:
        assert fedloom.wait(client, 30) == 0, fedloom.logs()
    assert [r["clients"] for r in rounds(tmp_path / "run") or []] == [3, 3]


def test_the_server_waits_until_every_client_still_there_has_heard_the_run_ended(
    service: Service,
) -> None:
    # Prepare: a and b joined; only a asks for its next instruction after the end
    a, _ = service.join("a"), service.join("b")
    service.fleet.finish()

    # Execute
    before = service.fleet.wait_told(0.2)
    signal = _pull(a).header.kind
    a_told = service.fleet.wait_told(0.2)
    service.fleet.told("b")  # as a Pull of b would

    # Assert: b, silent but within its heartbeat timeout, is waited for until it is told
    assert (before, signal, a_told, service.fleet.wait_told(0.2)) == (False, "done", False, True)
