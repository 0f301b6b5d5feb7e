"""The gRPC service in front of a :class:`~fedloom.transport._fleet.GrpcFleet`.

Who is calling comes from the TLS layer: the common name of the client certificate that the
federation's CA issued (mutual TLS). With ``insecure=True`` (for local experiments only) a
client names itself in the ``fedloom-client-id`` metadata and nothing checks it. A revoked
client, or a call with no identity, is refused with ``PERMISSION_DENIED`` or
``UNAUTHENTICATED`` and logged; it never reaches the fleet.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from fedloom.errors import ConfigError, DataError, WireError
from fedloom.transport._certs import Revocations, serial_of, valid_client_id
from fedloom.transport._fleet import GrpcFleet
from fedloom.transport._proto import fedloom_pb2 as pb
from fedloom.transport._wire import decode, encode_instruction, encode_signal

__all__ = ["ServerOptions", "start_server"]

log = logging.getLogger("fedloom.transport")

SERVICE = "fedloom.v1.Federation"
CLIENT_ID_METADATA = "fedloom-client-id"
FEATURES_METADATA = "fedloom-features"
"""Join metadata: how many features a client's examples have, checked against the model."""


@dataclass(frozen=True)
class ServerOptions:
    """How the server listens and what it accepts.

    ``tls`` is ``(server_cert_pem, server_key_pem, ca_pem)``, or ``None`` for an insecure
    server; ``revoked`` returns what is refused now, by client id or by certificate (re-read on
    every call, so revoking takes effect without a restart); ``max_message_bytes`` bounds one
    decoded message.
    """

    address: str
    tls: tuple[bytes, bytes, bytes] | None
    model: dict[str, Any]
    revoked: Callable[[], Revocations] = Revocations
    max_message_bytes: int = 1 << 31
    heartbeat_seconds: float = 3.0
    max_workers: int = 64


class _Handlers:
    def __init__(self, fleet: GrpcFleet, options: ServerOptions) -> None:
        self.fleet = fleet
        self.options = options
        self._pins: dict[str, int] = {}  # client id -> the serial of the certificate it uses
        self._pin_lock = threading.Lock()

    def identity(self, context: grpc.ServicerContext) -> str:
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
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "no client identity")
        if not valid_client_id(client_id):
            log.warning("refused a call naming itself %r from %s", client_id, context.peer())
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "the identity is not a client id (1 to 64 of A-Z a-z 0-9 . _ -)",
            )
        refused = self.options.revoked()
        if refused.refuses(client_id, serial):
            log.warning("refused revoked client %s (%s)", client_id, context.peer())
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"client {client_id} is revoked")
        if serial is not None:
            with self._pin_lock:
                pinned = self._pins.setdefault(client_id, serial)
                if pinned != serial and refused.refuses(client_id, pinned):
                    self._pins[client_id] = pinned = serial  # re-issued after a revocation
            if pinned != serial:
                log.warning(
                    "refused a second certificate for client %s (%s)", client_id, context.peer()
                )
                context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"client {client_id} is connected with another certificate; revoke that "
                    "one first",
                )
        return client_id

    def join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        client_id = self.identity(context)
        problem = self.misfit(context)
        if problem is not None:
            log.warning("refused client %s: %s", client_id, problem)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        self.fleet.join(client_id)
        return pb.JoinReply(
            run_id=self.fleet.run_id,
            model_json=json.dumps(self.options.model),
            heartbeat_seconds=self.options.heartbeat_seconds,
        )

    def misfit(self, context: grpc.ServicerContext) -> str | None:
        """Why a joining client's data cannot train the server's built-in model (it says how
        many features its examples have), or None."""
        model = self.options.model
        said = dict(context.invocation_metadata()).get(FEATURES_METADATA)
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

    def pull(self, request: pb.PullRequest, context: grpc.ServicerContext) -> Iterator[pb.Chunk]:
        client_id = self.identity(context)
        if request.run_id != self.fleet.run_id:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "another run: join again")
        if self.fleet.finished:
            yield from encode_signal(self.fleet.run_id, self.fleet.outcome)
            return
        outstanding = self.fleet.pull(client_id, request.wait_seconds)
        if outstanding is None:
            kind = self.fleet.outcome if self.fleet.finished else "wait"
            yield from encode_signal(self.fleet.run_id, kind)
            return
        yield from encode_instruction(
            self.fleet.run_id, outstanding.message_id, outstanding.instruction
        )

    def push(self, raw: Iterator[bytes], context: grpc.ServicerContext) -> pb.PushReply:
        client_id = self.identity(context)
        try:
            message = decode(
                _parsed(raw),
                self.options.max_message_bytes,
                lambda header, size: self.fleet.admit(client_id, header.message_id, size),
            )
        except WireError as exc:
            log.warning("refused a reply from %s: %s", client_id, exc)
            return pb.PushReply(accepted=False, reason=str(exc))
        if message.header.run_id != self.fleet.run_id or message.header.kind != "reply":
            reason = "not a reply of this run"
        else:
            accepted, reason = self.fleet.push(client_id, message)
            if accepted:
                return pb.PushReply(accepted=True, reason=reason)
        log.warning("refused a reply from %s: %s", client_id, reason)
        return pb.PushReply(accepted=False, reason=reason)

    def heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.ServicerContext
    ) -> pb.HeartbeatReply:
        client_id = self.identity(context)
        known = request.run_id == self.fleet.run_id and self.fleet.heartbeat(client_id)
        return pb.HeartbeatReply(known=known, finished=self.fleet.finished)


def _parsed(raw: Iterator[bytes]) -> Iterator[pb.Chunk]:
    """Chunks from raw request bytes: garbage is a refusal with a reason, not a gRPC error."""
    for data in raw:
        try:
            yield pb.Chunk.FromString(data)
        except DecodeError as exc:
            raise WireError(f"bytes that are not a chunk: {exc}") from None


@functools.lru_cache(maxsize=1024)
def _serial(cert_pem: bytes) -> int | None:
    """The serial of a client's certificate (each connection presents the same few)."""
    try:
        return serial_of(cert_pem)
    except DataError:
        return None


def start_server(fleet: GrpcFleet, options: ServerOptions) -> tuple[grpc.Server, int]:
    """Start serving ``fleet``; returns the server and the port it bound."""
    h = _Handlers(fleet, options)
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
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=options.max_workers),
        handlers=[grpc.method_handlers_generic_handler(SERVICE, methods)],
    )
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
        server.stop(None)
        raise ConfigError(
            f"cannot listen on {options.address}: the port is in use, or the address is not one "
            "of this machine's; choose another --address"
        )
    server.start()
    return server, port
