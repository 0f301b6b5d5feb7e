"""Deployment over gRPC: the server's fleet, the client runtime, TLS credentials.

``fedloom server`` and ``fedloom client`` (:mod:`fedloom.recipes`) use these; in Python, serve
any strategy with a :class:`GrpcFleet` behind :func:`start_server` and ``fedloom.run_rounds``,
and run any ``ClientApp`` and trainer with :func:`run_client`.
"""

from fedloom.transport._address import DEFAULT_PORT, check_address
from fedloom.transport._certs import (
    Credentials,
    Revocations,
    create_federation,
    credentials,
    revocations,
    revoke,
    revoked,
)
from fedloom.transport._client import ClientOptions, run_client
from fedloom.transport._fleet import GrpcFleet
from fedloom.transport._service import ServerOptions, start_server

__all__ = [
    "DEFAULT_PORT",
    "ClientOptions",
    "Credentials",
    "GrpcFleet",
    "Revocations",
    "ServerOptions",
    "check_address",
    "create_federation",
    "credentials",
    "revocations",
    "revoke",
    "revoked",
    "run_client",
    "start_server",
]
