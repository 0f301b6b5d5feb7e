"""Deployment over gRPC: the server's fleet, the client runtime, TLS credentials."""
