"""The client's side of deployment: connect out, pull instructions, push replies.

The client runs the same :class:`~fedloom.client.ClientApp` as a simulated one. It keeps its
:class:`~fedloom.client.ClientContext` (and so its state, such as SCAFFOLD's control variate)
for its whole life, across server restarts: when the server goes away it retries every second
and joins again.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from fedloom.client import ClientApp, ClientContext
from fedloom.errors import ClientError, ConfigError, FedloomError, WireError
from fedloom.messages import Reply
from fedloom.transport._proto import fedloom_pb2 as pb
from fedloom.transport._service import BUSY, CLIENT_ID_METADATA, FEATURES_METADATA, SERVICE
from fedloom.transport._wire import decode, encode_reply

__all__ = ["ClientOptions", "permanent_failure", "run_client"]

log = logging.getLogger("fedloom.transport")

_RETRYABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.FAILED_PRECONDITION,
    # a call the server dropped unanswered: it is stopping, or too busy to take the call in
    grpc.StatusCode.CANCELLED,
)
_PERMANENT = (
    # gRPC says UNAVAILABLE for these too, but no retry mends them
    ("DNS resolution failed", "the server's host name does not resolve; check --server"),
    ("Domain name not found", "the server's host name does not resolve; check --server"),
    (
        "is not in peer certificate",
        "the server's certificate does not name the host in --server; issue it for that name "
        "with `fedloom certs --server-host HOST`, or dial a name it has",
    ),
    (
        "CERTIFICATE_VERIFY_FAILED",
        "the server's certificate is not from this client's CA (ca.pem), or does not name the "
        "host in --server; check --certs and --server",
    ),
    (
        "handshake failed",
        "the TLS handshake failed: this client's certificate or CA does not match the "
        "server's; check --certs",
    ),
)
_REPORT_EVERY = 10.0  # seconds between "still unavailable" lines


def permanent_failure(code: grpc.StatusCode, details: str) -> str | None:
    """Why an RPC error will not go away by retrying, or None for one that may (a server that
    is not up yet, or restarting)."""
    if code not in _RETRYABLE:
        return f"the server refused this client ({code.name}: {details})"
    for clue, reason in _PERMANENT:
        if clue.lower() in details.lower():
            return f"{reason} ({code.name}: {details})"
    return None


@dataclass(frozen=True)
class ClientOptions:
    """How to reach the server.

    ``tls`` is ``(client_cert_pem, client_key_pem, ca_pem)``, or ``None`` for an insecure
    channel, in which case ``client_id`` is sent as unauthenticated metadata. ``give_up`` is how
    long to keep retrying an unreachable server before exiting; ``poll_seconds``, how long one
    Pull waits for an instruction (the server holds a waiting Pull at no cost, and counts the
    client as present while it is open). ``features``, the width of
    this client's examples, is sent when joining, so that a server whose model takes another
    refuses the client at once and says why.
    """

    address: str
    tls: tuple[bytes, bytes, bytes] | None
    client_id: str = ""
    poll_seconds: float = 30.0
    give_up: float = 60.0
    max_message_bytes: int = 1 << 31
    features: int | None = None


class _Session:
    def __init__(self, options: ClientOptions) -> None:
        self.options = options
        if options.tls is not None:
            cert, key, ca = options.tls
            creds = grpc.ssl_channel_credentials(ca, key, cert)
            self.channel = grpc.secure_channel(options.address, creds)
        else:
            self.channel = grpc.insecure_channel(options.address)
        self.metadata = ((CLIENT_ID_METADATA, options.client_id),) if options.tls is None else None
        said = () if options.features is None else ((FEATURES_METADATA, str(options.features)),)
        self.join_metadata = (*(self.metadata or ()), *said) or None
        ser = lambda message: message.SerializeToString()  # noqa: E731
        path = f"/{SERVICE}/"
        self.join = self.channel.unary_unary(path + "Join", ser, pb.JoinReply.FromString)
        self.pull = self.channel.unary_stream(path + "Pull", ser, pb.Chunk.FromString)
        self.push = self.channel.stream_unary(path + "Push", ser, pb.PushReply.FromString)
        self.beat = self.channel.unary_unary(path + "Heartbeat", ser, pb.HeartbeatReply.FromString)
        self.pulling = False  # a Pull is open: the server sees this client, no heartbeat needed

    def close(self) -> None:
        self.channel.close()


def run_client(
    options: ClientOptions,
    make_context: Callable[[dict[str, Any]], ClientContext],
    app: ClientApp | None = None,
) -> int:
    """Serve the server's instructions until the run is over; returns how many were answered.

    ``make_context`` builds this client's context (its data and trainer) from the model
    description the server sends when the client joins; it is called once.
    """
    app = app or ClientApp()
    session = _Session(options)
    ctx: ClientContext | None = None
    answered = 0
    stop = threading.Event()
    failing_since: float | None = None
    reported = 0.0
    try:
        while True:
            stop.set()  # the previous session's heartbeats, if any
            stop = threading.Event()
            try:
                joined = session.join(
                    pb.JoinRequest(phases=list(app.phases)),
                    timeout=30,
                    metadata=session.join_metadata,
                )
                if ctx is None:
                    ctx = make_context(json.loads(joined.model_json))
                log.info("joined run %s as %s", joined.run_id, ctx.client_id)
                beats = threading.Thread(
                    target=_heartbeats, args=(session, joined, stop), daemon=True
                )
                beats.start()
                failing_since = None
                answered += _serve(session, joined.run_id, app, ctx)
                return answered
            except _Paused as paused:
                answered += paused.answered
                if failing_since is None:
                    log.warning(
                        "the server is pausing; waiting up to %g s for it to resume",
                        options.give_up,
                    )
                    failing_since = reported = time.monotonic()
                time.sleep(1.0)
            except grpc.RpcError as exc:
                code = exc.code()
                details = (exc.details() if hasattr(exc, "details") else "") or ""
                permanent = permanent_failure(code, details)
                if permanent is not None:
                    raise ConfigError(permanent) from None
                now = time.monotonic()
                if failing_since is None:
                    failing_since = reported = now
                    log.warning("server %s unavailable (%s); retrying", options.address, code.name)
                elif now - reported >= _REPORT_EVERY:
                    reported = now
                    log.warning("still retrying after %.0f s (%s)", now - failing_since, code.name)
                if now - failing_since > options.give_up:
                    raise FedloomError(
                        f"gave up after {options.give_up:g} s: the server at {options.address} is "
                        f"unreachable or refuses the connection ({code.name}: {details}); check "
                        "the address and that this client's certificate comes from its CA"
                    ) from None
                time.sleep(1.0)
    finally:
        stop.set()
        session.close()


class _Paused(Exception):
    """The server stopped for now (it said so): keep retrying until it comes back."""

    def __init__(self, answered: int) -> None:
        super().__init__(answered)
        self.answered = answered


def _heartbeats(session: _Session, joined: pb.JoinReply, stop: threading.Event) -> None:
    """Say this client is alive while it trains or sends (a waiting Pull says so itself)."""
    while not stop.wait(joined.heartbeat_seconds):
        if session.pulling:
            continue
        try:
            reply = session.beat(
                pb.HeartbeatRequest(run_id=joined.run_id), timeout=10, metadata=session.metadata
            )
            if reply.finished:
                return
        except grpc.RpcError:
            continue
        except ValueError:  # the session closed while this beat was being sent
            return


def _send(session: _Session, run_id: str, message_id: str, reply: Reply) -> pb.PushReply:
    """Push ``reply``; while the server says it is busy, send it again after a second or so
    (up to ``give_up`` seconds), rather than computing it again."""
    since = time.monotonic()
    while True:
        try:
            result: pb.PushReply = session.push(
                encode_reply(run_id, message_id, reply), timeout=600, metadata=session.metadata
            )
            return result
        except grpc.RpcError as exc:
            busy = exc.code() == grpc.StatusCode.UNAVAILABLE and BUSY in (exc.details() or "")
            if not busy or time.monotonic() - since > session.options.give_up:
                raise
            time.sleep(random.uniform(0.5, 1.5))


def _serve(session: _Session, run_id: str, app: ClientApp, ctx: ClientContext) -> int:
    answered = 0
    opts = session.options
    while True:
        chunks: Iterator[pb.Chunk] = session.pull(
            pb.PullRequest(run_id=run_id, wait_seconds=opts.poll_seconds),
            timeout=opts.poll_seconds + 60,
            metadata=session.metadata,
        )
        session.pulling = True
        try:
            message = decode(chunks, opts.max_message_bytes)
        except WireError as exc:
            log.warning("ignored a malformed instruction: %s", exc)
            continue
        finally:
            session.pulling = False
        kind = message.header.kind
        if kind == "done":
            log.info("the run is over; answered %d instructions", answered)
            return answered
        if kind == "failed":
            raise FedloomError(
                f"the server's run failed after this client answered {answered} instructions; "
                "see the server's log"
            )
        if kind == "paused":
            raise _Paused(answered)
        if kind != "instruction":
            continue
        ins = message.instruction()
        try:
            reply = app.handle(ctx, ins)
        except ClientError as exc:
            log.warning("%s", exc)
            continue
        result = _send(session, run_id, message.header.message_id, reply)
        if result.accepted:
            answered += 1
        else:
            log.warning("the server refused our reply: %s", result.reason)
