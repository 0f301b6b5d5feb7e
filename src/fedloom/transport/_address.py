"""``host:port`` as an operator types it, checked before anything dials or listens.

A typo (``127.0.0.1:8O80``, a missing port, ``https://``, port 80800) is a setting that is
wrong, not a server that is down: it is refused at once with one line that says what is
accepted, never retried.
"""

from __future__ import annotations

import ipaddress
import re

from fedloom.errors import ConfigError

__all__ = ["DEFAULT_PORT", "check_address"]

DEFAULT_PORT = 8080
"""The port ``fedloom server`` listens on when ``--address`` is not given."""

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_FORM = "HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080"


def check_address(text: str, *, flag: str, listening: bool = False) -> str:
    """``text`` if it is ``HOST:PORT`` with a port from 1 to 65535 (0 too when ``listening``:
    any free port); a :class:`~fedloom.errors.ConfigError` naming ``flag`` otherwise.

    HOST is an IPv4 address, an IPv6 address in brackets, or a host name (not resolved here).

    Examples
    --------
    >>> check_address("127.0.0.1:8080", flag="--server")
    '127.0.0.1:8080'
    >>> check_address("127.0.0.1", flag="--server")
    Traceback (most recent call last):
    ...
    fedloom.errors.ConfigError: --server '127.0.0.1' has no port; write HOST:PORT, e.g. \
127.0.0.1:8080 or [::1]:8080
    """
    if "://" in text:
        raise ConfigError(f"{flag} {text!r}: give {_FORM}, without a scheme such as https://")
    if text.startswith("["):
        host, _, rest = text.partition("]")
        host += "]"
        if not rest.startswith(":"):
            raise ConfigError(f"{flag} {text!r} has no port; write {_FORM}")
        port = rest[1:]
    elif text.count(":") > 1:
        raise ConfigError(f"{flag} {text!r}: put an IPv6 address in brackets; write {_FORM}")
    else:
        host, sep, port = text.partition(":")
        if not sep:
            raise ConfigError(f"{flag} {text!r} has no port; write {_FORM}")
    if not host:
        raise ConfigError(f"{flag} {text!r} has no host; write {_FORM}")
    if not (port.isascii() and port.isdigit()):
        raise ConfigError(f"{flag} {text!r}: the port {port!r} is not a number; write {_FORM}")
    number = int(port)
    lowest = 0 if listening else 1
    if not lowest <= number <= 65535:
        raise ConfigError(f"{flag} {text!r}: the port must be from {lowest} to 65535, got {number}")
    _check_host(host, text, flag)
    return text


def _check_host(host: str, text: str, flag: str) -> None:
    if host.startswith("["):
        if not host.endswith("]"):
            raise ConfigError(f"{flag} {text!r}: an IPv6 address needs its closing bracket")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ConfigError(f"{flag} {text!r}: {host[1:-1]!r} is not an IPv6 address") from None
        return
    labels = host.split(".")
    if len(labels) == 4 and all(part.isdigit() for part in labels[:3]):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ConfigError(f"{flag} {text!r}: {host!r} is not an IPv4 address") from None
        return
    if not _HOSTNAME.match(host) or host.replace(".", "").isdigit():
        raise ConfigError(
            f"{flag} {text!r}: {host!r} is neither an IP address nor a host name; {_FORM}"
        )
