"""Instructions and replies as chunk streams, and back, with every field checked on the way in.

A message is a :class:`Header` chunk followed by its blobs' bytes (the float32 vector, then
each payload value) in pieces of at most :data:`CHUNK_BYTES`. Decoding never trusts the
sender: a stream that does not start with a header, declares more than the size limit, or
whose data does not add up to the declared sizes is refused with :class:`WireError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from fedloom.errors import WireError
from fedloom.messages import Instruction, Reply, Scalar
from fedloom.params import Vector
from fedloom.transport._proto import fedloom_pb2 as pb

__all__ = [
    "CHUNK_BYTES",
    "Message",
    "Reassembler",
    "decode",
    "encode_instruction",
    "encode_reply",
    "encode_signal",
]

CHUNK_BYTES = 1 << 20
"""The largest piece of a blob in one chunk: 1 MiB, far below gRPC's 4 MB message limit."""

VECTOR = "vector"


@dataclass(frozen=True)
class Message:
    """A decoded chunk stream: its header and where each blob lies in its data."""

    header: pb.Header
    data: memoryview
    spans: Mapping[str, tuple[int, int]]

    def blob(self, name: str) -> bytes | None:
        """A blob's bytes (a copy), or None when the message has no such blob."""
        span = self.spans.get(name)
        return None if span is None else bytes(self.data[span[0] : span[1]])

    @property
    def payload(self) -> dict[str, bytes]:
        return {k: bytes(self.data[a:b]) for k, (a, b) in self.spans.items() if k != VECTOR}

    def instruction(self) -> Instruction:
        h = self.header
        return Instruction(h.round, h.phase, self._vector(), _config(h.config), self.payload)

    def reply(self, client_id: str) -> Reply:
        h = self.header
        metrics = {k: float(v) for k, v in h.metrics.items()}
        return Reply(
            client_id, h.round, h.phase, self._vector(), int(h.num_examples), metrics,
            self.payload,
        )  # fmt: skip

    def _vector(self) -> Vector | None:
        span = self.spans.get(VECTOR)
        if span is None:
            return None
        start, end = span
        if (end - start) % 4:
            raise WireError(f"the vector has {end - start} bytes, not a whole number of float32")
        # a view of the received bytes, not a copy
        return np.frombuffer(self.data[start:end], dtype="<f4").astype(np.float32, copy=False)


def _config(entries: Mapping[str, pb.Scalar]) -> dict[str, Scalar]:
    out: dict[str, Scalar] = {}
    for key, scalar in entries.items():
        which = scalar.WhichOneof("value")
        if which is None:
            raise WireError(f"config {key!r} has no value")
        out[key] = getattr(scalar, which)
    return out


def _scalar(value: Scalar) -> pb.Scalar:
    if isinstance(value, bool):
        return pb.Scalar(flag=value)
    if isinstance(value, int):
        return pb.Scalar(integer=value)
    if isinstance(value, float):
        return pb.Scalar(real=value)
    return pb.Scalar(text=str(value))


def _stream(header: pb.Header, blobs: Mapping[str, bytes | memoryview]) -> Iterator[pb.Chunk]:
    for name, data in blobs.items():
        header.blobs.append(pb.Blob(name=name, size=memoryview(data).nbytes))
    yield pb.Chunk(header=header)
    for data in blobs.values():
        view = memoryview(data).cast("B")
        for start in range(0, len(view), CHUNK_BYTES):
            yield pb.Chunk(data=bytes(view[start : start + CHUNK_BYTES]))


def _blobs(vector: Vector | None, payload: Mapping[str, bytes]) -> dict[str, bytes | memoryview]:
    blobs: dict[str, bytes | memoryview] = {}
    if vector is not None:
        blobs[VECTOR] = np.ascontiguousarray(vector, dtype="<f4").data
    blobs.update(payload)
    return blobs


def encode_instruction(run_id: str, message_id: str, ins: Instruction) -> Iterator[pb.Chunk]:
    """An instruction as chunks."""
    header = pb.Header(
        run_id=run_id, message_id=message_id, kind="instruction", round=ins.round, phase=ins.phase
    )
    for key, value in ins.config.items():
        header.config[key].CopyFrom(_scalar(value))
    return _stream(header, _blobs(ins.parameters, ins.payload))


def encode_reply(run_id: str, message_id: str, reply: Reply) -> Iterator[pb.Chunk]:
    """A reply to the instruction ``message_id`` as chunks."""
    header = pb.Header(
        run_id=run_id,
        message_id=message_id,
        kind="reply",
        round=reply.round,
        phase=reply.phase,
        num_examples=max(reply.num_examples, 0),
    )
    for key, value in reply.metrics.items():
        header.metrics[key] = float(value)
    return _stream(header, _blobs(reply.vector, reply.payload))


def encode_signal(run_id: str, kind: str) -> Iterator[pb.Chunk]:
    """A bodiless message: ``wait`` (nothing to do yet), or how the run ended: ``done``,
    ``failed``, or ``paused`` (the server stops for now and will resume)."""
    yield pb.Chunk(header=pb.Header(run_id=run_id, kind=kind))


class Reassembler:
    """A chunk stream reassembled one chunk at a time, so that the caller decides how chunks
    arrive (a blocking iterator, or an asynchronous stream with a deadline on each chunk).

    ``admit(header, declared_bytes)``, when given, is asked before any blob byte is read: it
    returns why the message must be refused (a sender with nothing to answer, more bytes than
    its answer can need), or None. Every refusal is a :class:`WireError`.
    """

    def __init__(
        self, max_bytes: int, admit: Callable[[pb.Header, int], str | None] | None = None
    ) -> None:
        self._max_bytes = max_bytes
        self._admit = admit
        self._header: pb.Header | None = None
        self._sizes: list[tuple[str, int]] = []
        self._total = 0
        self._buffer = bytearray()  # grows as bytes arrive: nothing is reserved for a size

    def feed(self, chunk: pb.Chunk) -> None:
        """Take the next chunk."""
        if self._header is None:
            if chunk.WhichOneof("part") != "header":
                raise WireError("the stream does not start with a header")
            self._start(chunk.header)
            return
        if chunk.WhichOneof("part") != "data":
            raise WireError("a second header inside one message")
        data = chunk.data  # each read of the field builds a new bytes object
        if len(self._buffer) + len(data) > self._total:
            raise WireError(f"more data than the {self._total} bytes the header declares")
        self._buffer += data

    def _start(self, header: pb.Header) -> None:
        sizes = [(b.name, int(b.size)) for b in header.blobs]
        total = sum(size for _, size in sizes)
        if total > self._max_bytes:
            raise WireError(
                f"the message declares {total} bytes, more than the limit {self._max_bytes}"
            )
        refusal = self._admit(header, total) if self._admit is not None else None
        if refusal is not None:
            raise WireError(refusal)
        if len({name for name, _ in sizes}) != len(sizes):
            raise WireError("a blob name repeats")
        self._header, self._sizes, self._total = header, sizes, total

    def message(self) -> Message:
        """The message, once the stream has ended."""
        if self._header is None:
            raise WireError("the stream does not start with a header")
        got, total = len(self._buffer), self._total
        if got != total:
            raise WireError(f"truncated: {got} of {total} declared bytes arrived")
        spans: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, size in self._sizes:
            spans[name] = (offset, offset + size)
            offset += size
        return Message(self._header, memoryview(self._buffer), spans)


def decode(
    chunks: Iterable[pb.Chunk],
    max_bytes: int,
    admit: Callable[[pb.Header, int], str | None] | None = None,
) -> Message:
    """Reassemble a chunk stream; :class:`WireError` when it is malformed or over ``max_bytes``
    (``admit`` as for :class:`Reassembler`)."""
    assembler = Reassembler(max_bytes, admit)
    for chunk in chunks:
        assembler.feed(chunk)
    return assembler.message()
