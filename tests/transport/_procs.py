"""Real ``fedloom`` processes for the deployment tests: start them, watch them, kill them all.

Every process runs ``python -m fedloom ...`` in the test's folder with its stdout and stderr in
``<name>.out`` and ``<name>.err`` there; :meth:`Fedloom.logs` gathers them all for an
assertion message. :meth:`Fedloom.stop_all` kills whatever still runs (the fixture's teardown).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_ENV = {
    **os.environ,
    # one thread per process: the tests start several on a machine with few cores
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
_PORT = re.compile(r"serving run \w+ on port (\d+)")


@dataclass(frozen=True)
class Proc:
    """One ``fedloom`` process and the files that hold its output."""

    name: str
    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def out(self) -> str:
        return self.stdout.read_text(errors="replace")

    def err(self) -> str:
        return self.stderr.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()


class Fedloom:
    """Starts ``fedloom`` commands in ``cwd`` and keeps every process it started."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.procs: list[Proc] = []

    def start(self, name: str, command: str, *args: str) -> Proc:
        """Start ``fedloom COMMAND ARGS`` (``COMMAND`` split as a shell would, ``ARGS`` as
        they are); its output goes to ``NAME.out`` and ``NAME.err``."""
        if any(p.name == name for p in self.procs):
            raise ValueError(f"a process named {name!r} was already started")
        stdout, stderr = self.cwd / f"{name}.out", self.cwd / f"{name}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            popen = subprocess.Popen(
                [sys.executable, "-m", "fedloom", *shlex.split(command), *args],
                cwd=self.cwd,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=_ENV,
            )
        proc = Proc(name, popen, stdout, stderr)
        self.procs.append(proc)
        return proc

    def run(self, name: str, command: str, *args: str, timeout: float = 30.0) -> Proc:
        """Run ``fedloom COMMAND ARGS`` to its end; it must succeed."""
        proc = self.start(name, command, *args)
        assert self.wait(proc, timeout) == 0, self.logs()
        return proc

    def wait(self, proc: Proc, timeout: float) -> int:
        """``proc``'s exit status; an assertion error with every log if it runs past ``timeout``."""
        try:
            return proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{proc.name} still runs after {timeout} s\n{self.logs()}"
            ) from None

    def until(self, what: str, check: Callable[[], T | None], timeout: float) -> T:
        """Poll ``check`` until it returns something other than None, or fail naming ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            found = check()
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout} s\n{self.logs()}")
            time.sleep(0.02)

    def port(self, server: Proc, timeout: float = 20.0) -> int:
        """The port a ``fedloom server`` started with ``--address 127.0.0.1:0`` listens on."""

        def bound() -> int | None:
            match = _PORT.search(server.err())
            if match is None and server.returncode is not None:
                raise AssertionError(f"{server.name} exited before serving\n{self.logs()}")
            return None if match is None else int(match[1])

        return self.until(f"port from {server.name}", bound, timeout)

    def logs(self) -> str:
        """Every process's stdout and stderr, each under its name and exit status."""
        parts = []
        for p in self.procs:
            parts.append(f"===== {p.name} (exit {p.returncode})\n{p.out()}{p.err()}")
        return "\n".join(parts)

    def stop_all(self) -> None:
        """Kill every process still running."""
        for proc in self.procs:
            proc.kill()


def rounds(out: Path) -> list[dict[str, Any]] | None:
    """The rounds in ``OUT/history.json``, or None before the first is written."""
    try:
        history: dict[str, Any] = json.loads((out / "history.json").read_text())
    except FileNotFoundError:
        return None
    return list(history["rounds"])
