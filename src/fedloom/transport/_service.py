"""The gRPC service in front of a :class:`~fedloom.transport._fleet.GrpcFleet`.

It runs on gRPC's asyncio server, in a thread of its own with its own event loop, so a
connected client costs no thread: a client waiting in a long Pull is a suspended coroutine,
and so is a reply whose bytes are slow to arrive (each of its chunks must come within
``stall_seconds``; only a client with an instruction outstanding, or just answered, may send
one; one client has at most ``pushes_per_client`` replies arriving at once, and the server at
most ``pushes_at_once``: a reply past that is turned away as UNAVAILABLE, and its client sends
it again).
The round loop runs in its own thread and talks to the service only through the fleet.

Who is calling comes from the TLS layer: the common name of the client certificate that the
federation's CA issued (mutual TLS). With ``insecure=True`` (for local experiments only) a
client names itself in the ``fedloom-client-id`` metadata and nothing checks it. A revoked
client, or a call with no identity, is refused with ``PERMISSION_DENIED`` or
``UNAUTHENTICATED`` and logged; it never reaches the fleet.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import math
import threading
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError

from fedloom.errors import ConfigError, DataError, WireError
from fedloom.transport._certs import Revocations, serial_of, valid_client_id
from fedloom.transport._fleet import GrpcFleet, Outstanding
from fedloom.transport._proto import fedloom_pb2 as pb
from fedloom.transport._wire import Message, Reassembler, encode_instruction, encode_signal

__all__ = ["Server", "ServerOptions", "start_server"]

log = logging.getLogger("fedloom.transport")

SERVICE = "fedloom.v1.Federation"
CLIENT_ID_METADATA = "fedloom-client-id"
FEATURES_METADATA = "fedloom-features"
"""Join metadata: how many features a client's examples have, checked against the model."""

BUSY = "the server is taking"
"""How the UNAVAILABLE starts that turns a reply away when the server takes no more at once;
a client sends that reply again."""

MAX_WAIT_SECONDS = 60.0
"""The longest one Pull waits for an instruction, whatever the client asks."""


@dataclass(frozen=True)
class ServerOptions:
    """How the server listens and what it accepts.

    ``tls`` is ``(server_cert_pem, server_key_pem, ca_pem)``, or ``None`` for an insecure
    server; ``revoked`` returns what is refused now, by client id or by certificate (re-read on
    every call, so revoking takes effect without a restart); ``max_message_bytes`` bounds one
    decoded message. A reply whose next chunk does not arrive within ``stall_seconds`` is
    dropped; a client may have at most ``pushes_per_client`` replies arriving at once, and the
    server at most ``pushes_at_once`` (each holds at most the reply limit its instruction
    allows, :meth:`~fedloom.transport.GrpcFleet.reply_limit`).
    """

    address: str
    tls: tuple[bytes, bytes, bytes] | None
    model: dict[str, Any]
    revoked: Callable[[], Revocations] = Revocations
    max_message_bytes: int = 1 << 31
    heartbeat_seconds: float = 3.0
    stall_seconds: float = 30.0
    pushes_per_client: int = 2
    pushes_at_once: int = 1024


class Refused(Exception):
    """A call refused before it reaches the fleet, with the status code it ends with."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Waiters:
    """The Pulls waiting for their client's next instruction, woken from any thread.

    Only the event loop's thread touches the events; :meth:`wake` hands the work to it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._events: dict[str, set[asyncio.Event]] = {}

    def wake(self, client_ids: Collection[str] | None) -> None:
        """Wake the Pulls of ``client_ids`` (every Pull when None); safe from any thread."""
        with contextlib.suppress(RuntimeError):  # a stopped service: nobody is waiting
            self._loop.call_soon_threadsafe(self._set, client_ids)

    def _set(self, client_ids: Collection[str] | None) -> None:
        groups: Iterable[set[asyncio.Event]] = (
            list(self._events.values())
            if client_ids is None
            else [self._events[c] for c in client_ids if c in self._events]
        )
        for events in groups:
            for event in events:
                event.set()

    def add(self, client_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._events.setdefault(client_id, set()).add(event)
        return event

    def discard(self, client_id: str, event: asyncio.Event) -> None:
        events = self._events.get(client_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self._events[client_id]


class _Handlers:
    def __init__(
        self, fleet: GrpcFleet, options: ServerOptions, waiters: _Waiters | None = None
    ) -> None:
        self.fleet = fleet
        self.options = options
        self.waiters = waiters
        self._pins: dict[str, int] = {}  # client id -> the serial of the certificate it uses
        self._pin_lock = threading.Lock()
        self._arriving: collections.Counter[str] = collections.Counter()  # replies in flight

    def identity(self, context: Any) -> str:
        """The caller's client id; :class:`Refused` when it has none, a malformed one, or a
        revoked or second certificate."""
        serial = None
        if self.options.tls is not None:
            auth = context.auth_context()
            names = auth.get("x509_common_name") or []
            client_id = names[0].decode() if names else ""
            pems = auth.get("x509_pem_cert") or []
            serial = _serial(pems[0]) if pems else None
        else:
            client_id = dict(context.invocation_metadata()).get(CLIENT_ID_METADATA, "")
            client_id = client_id if isinstance(client_id, str) else ""
        if not client_id:
            log.warning("refused a call with no client identity from %s", context.peer())
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, "no client identity")
        if not valid_client_id(client_id):
            log.warning("refused a call naming itself %r from %s", client_id, context.peer())
            raise Refused(
                grpc.StatusCode.UNAUTHENTICATED,
                "the identity is not a client id (1 to 64 of A-Z a-z 0-9 . _ -)",
            )
        refused = self.options.revoked()
        if refused.refuses(client_id, serial):
            log.warning("refused revoked client %s (%s)", client_id, context.peer())
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"client {client_id} is revoked")
        if serial is not None:
            with self._pin_lock:
                pinned = self._pins.setdefault(client_id, serial)
                if pinned != serial and refused.refuses(client_id, pinned):
                    self._pins[client_id] = pinned = serial  # re-issued after a revocation
            if pinned != serial:
                log.warning(
                    "refused a second certificate for client %s (%s)", client_id, context.peer()
                )
                raise Refused(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"client {client_id} is connected with another certificate; revoke that "
                    "one first",
                )
        return client_id

    async def caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """The caller's client id; a refused caller's call ends here with its status."""
        try:
            return self.identity(context)
        except Refused as refused:
            await _abort(context, refused)

    async def join(
        self, request: pb.JoinRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.JoinReply:
        client_id = await self.caller(context)
        problem = self.misfit(context)
        if problem is not None:
            log.warning("refused client %s: %s", client_id, problem)
            await _abort(context, Refused(grpc.StatusCode.INVALID_ARGUMENT, problem))
        self.fleet.join(client_id)
        return pb.JoinReply(
            run_id=self.fleet.run_id,
            model_json=json.dumps(self.options.model),
            heartbeat_seconds=self.options.heartbeat_seconds,
        )

    def misfit(self, context: Any) -> str | None:
        """Why a joining client's data cannot train the server's built-in model (it says how
        many features its examples have), or None."""
        model = self.options.model
        said = _metadata(context).get(FEATURES_METADATA)
        if "trainer" in model or "input_shape" not in model or not isinstance(said, str):
            return None
        width = math.prod(int(x) for x in model["input_shape"])
        if not (said.isascii() and said.isdigit()) or int(said) == width:
            return None
        source = model.get("built_from", "the server's data")
        return (
            f"this client's examples have {said} features; the server's model takes {width} "
            f"(built from {source}): give the client data of {width} features, or start the "
            "server with --test-data FILE of the clients' kind"
        )

    async def pull(
        self, request: pb.PullRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.Chunk]:
        client_id = await self.caller(context)
        if request.run_id != self.fleet.run_id:
            await _abort(
                context, Refused(grpc.StatusCode.FAILED_PRECONDITION, "another run: join again")
            )
        outstanding = await self.next_instruction(client_id, request.wait_seconds)
        if outstanding is None:
            finished = self.fleet.finished
            kind = self.fleet.outcome if finished else "wait"
            for chunk in encode_signal(self.fleet.run_id, kind):
                yield chunk
            if finished:
                self.fleet.told(client_id)
            return
        for chunk in encode_instruction(
            self.fleet.run_id, outstanding.message_id, outstanding.instruction
        ):
            yield chunk

    async def next_instruction(self, client_id: str, wait: float) -> Outstanding | None:
        """The client's outstanding instruction, waiting up to ``wait`` seconds (at most
        :data:`MAX_WAIT_SECONDS`) for one; None when none came, or the run is over."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, min(wait, MAX_WAIT_SECONDS))  # NaN waits 0 s
        assert self.waiters is not None, "the service waits through its event loop's waiters"
        with self.fleet.listening(client_id):
            while True:
                event = self.waiters.add(client_id)  # before looking: a post after it wakes it
                try:
                    found = None if self.fleet.finished else self.fleet.pending(client_id)
                    left = deadline - loop.time()
                    if found is not None or left <= 0 or self.fleet.finished:
                        return found
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(event.wait(), left)
                finally:
                    self.waiters.discard(client_id, event)

    async def push(
        self, raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PushReply:
        client_id = await self.caller(context)
        unexpected = self.fleet.expects_reply(client_id)
        if unexpected is not None:  # before any byte: a client the round is not waiting for
            log.warning("refused a reply from %s: %s", client_id, unexpected)
            return pb.PushReply(accepted=False, reason=unexpected)
        limit = self.options.pushes_per_client
        if self._arriving[client_id] >= limit:
            reason = f"{limit} replies from this client are already arriving; send one at a time"
            log.warning("refused a reply from %s: %s", client_id, reason)
            return pb.PushReply(accepted=False, reason=reason)
        arriving = self._arriving.total()
        if arriving >= self.options.pushes_at_once:
            log.warning("turned away a reply from %s: %d are arriving", client_id, arriving)
            await _abort(
                context,
                Refused(
                    grpc.StatusCode.UNAVAILABLE, f"{BUSY} {arriving} replies; send again shortly"
                ),
            )
        self._arriving[client_id] += 1
        try:
            message = await self.received(client_id, raw)
        except WireError as exc:
            log.warning("refused a reply from %s: %s", client_id, exc)
            return pb.PushReply(accepted=False, reason=str(exc))
        finally:
            self._arriving[client_id] -= 1
            if not self._arriving[client_id]:
                del self._arriving[client_id]
        if message.header.run_id != self.fleet.run_id or message.header.kind != "reply":
            reason = "not a reply of this run"
        else:
            # the update's checks read every value: off the event loop, which serves the rest
            accepted, reason = await asyncio.to_thread(self.fleet.push, client_id, message)
            if accepted:
                return pb.PushReply(accepted=True, reason=reason)
        log.warning("refused a reply from %s: %s", client_id, reason)
        return pb.PushReply(accepted=False, reason=reason)

    async def received(self, client_id: str, raw: AsyncIterator[bytes]) -> Message:
        """A reply's chunks reassembled: refused at its header when the fleet does not admit
        it, and dropped when a chunk is more than ``stall_seconds`` late."""
        assembler = Reassembler(
            self.options.max_message_bytes,
            lambda header, size: self.fleet.admit(client_id, header.message_id, size),
        )
        chunks = aiter(raw)
        stall = self.options.stall_seconds
        while True:
            try:
                data = await asyncio.wait_for(anext(chunks), stall)
            except StopAsyncIteration:
                return assembler.message()
            except TimeoutError:
                raise WireError(f"no bytes for {stall:g} s: a stalled reply is dropped") from None
            try:
                chunk = pb.Chunk.FromString(data)
            except DecodeError as exc:
                raise WireError(f"bytes that are not a chunk: {exc}") from None
            assembler.feed(chunk)

    async def heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.HeartbeatReply:
        client_id = await self.caller(context)
        known = request.run_id == self.fleet.run_id and self.fleet.heartbeat(client_id)
        return pb.HeartbeatReply(known=known, finished=self.fleet.finished)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], refused: Refused) -> NoReturn:
    await context.abort(refused.code, refused.details)
    raise AssertionError("unreachable: abort ends the call")  # pragma: no cover


def _metadata(context: Any) -> dict[str, Any]:
    return {key: value for key, value in (context.invocation_metadata() or ())}


@functools.lru_cache(maxsize=1024)
def _serial(cert_pem: bytes) -> int | None:
    """The serial of a client's certificate (each connection presents the same few)."""
    try:
        return serial_of(cert_pem)
    except DataError:
        return None


class Server:
    """A running service: gRPC's asyncio server on an event loop in a thread of its own."""

    def __init__(self, loop: asyncio.AbstractEventLoop, closed: threading.Event) -> None:
        self._loop = loop
        self._closed = closed
        self.server: grpc.aio.Server | None = None

    def stop(self, grace: float | None) -> threading.Event:
        """Stop serving (calls in progress get ``grace`` seconds); the event is set once the
        service's thread has ended."""
        if not self._closed.is_set() and self.server is not None:
            future = asyncio.run_coroutine_threadsafe(self.server.stop(grace), self._loop)
            future.add_done_callback(lambda _: self._loop.call_soon_threadsafe(self._loop.stop))
        return self._closed


def _run_loop(loop: asyncio.AbstractEventLoop, closed: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        closed.set()


def start_server(fleet: GrpcFleet, options: ServerOptions) -> tuple[Server, int]:
    """Start serving ``fleet``; returns the server and the port it bound."""
    loop = asyncio.new_event_loop()
    closed = threading.Event()
    thread = threading.Thread(
        target=_run_loop, args=(loop, closed), name="fedloom-grpc", daemon=True
    )
    thread.start()
    running = Server(loop, closed)
    try:
        running.server, port = asyncio.run_coroutine_threadsafe(
            _serve(fleet, options, loop), loop
        ).result()
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        raise
    return running, port


async def _serve(
    fleet: GrpcFleet, options: ServerOptions, loop: asyncio.AbstractEventLoop
) -> tuple[grpc.aio.Server, int]:
    waiters = _Waiters(loop)
    h = _Handlers(fleet, options, waiters)
    fleet.on_post(waiters.wake)
    ser = lambda message: message.SerializeToString()  # noqa: E731
    methods = {
        "Join": grpc.unary_unary_rpc_method_handler(
            h.join, request_deserializer=pb.JoinRequest.FromString, response_serializer=ser
        ),
        "Pull": grpc.unary_stream_rpc_method_handler(
            h.pull, request_deserializer=pb.PullRequest.FromString, response_serializer=ser
        ),
        "Push": grpc.stream_unary_rpc_method_handler(h.push, response_serializer=ser),
        "Heartbeat": grpc.unary_unary_rpc_method_handler(
            h.heartbeat,
            request_deserializer=pb.HeartbeatRequest.FromString,
            response_serializer=ser,
        ),
    }
    server = grpc.aio.server(handlers=[grpc.method_handlers_generic_handler(SERVICE, methods)])
    try:
        if options.tls is not None:
            cert, key, ca = options.tls
            creds = grpc.ssl_server_credentials(
                [(key, cert)], root_certificates=ca, require_client_auth=True
            )
            port = server.add_secure_port(options.address, creds)
        else:
            port = server.add_insecure_port(options.address)
    except RuntimeError:  # gRPC's "Failed to bind"
        port = 0
    if port == 0:
        await server.stop(None)
        raise ConfigError(
            f"cannot listen on {options.address}: the port is in use, or the address is not one "
            "of this machine's; choose another --address"
        )
    await server.start()
    return server, port
