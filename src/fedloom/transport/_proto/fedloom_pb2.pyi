from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JoinRequest(_message.Message):
    __slots__ = ("phases",)
    PHASES_FIELD_NUMBER: _ClassVar[int]
    phases: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, phases: _Optional[_Iterable[str]] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("run_id", "heartbeat_seconds", "model_json")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_JSON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    heartbeat_seconds: float
    model_json: str
    def __init__(
        self,
        run_id: _Optional[str] = ...,
        heartbeat_seconds: _Optional[float] = ...,
        model_json: _Optional[str] = ...,
    ) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("run_id", "wait_seconds")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    wait_seconds: float
    def __init__(
        self, run_id: _Optional[str] = ..., wait_seconds: _Optional[float] = ...
    ) -> None: ...

class PushReply(_message.Message):
    __slots__ = ("accepted", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("known", "finished")
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    known: bool
    finished: bool
    def __init__(self, known: _Optional[bool] = ..., finished: _Optional[bool] = ...) -> None: ...

class Scalar(_message.Message):
    __slots__ = ("real", "integer", "text", "flag")
    REAL_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FLAG_FIELD_NUMBER: _ClassVar[int]
    real: float
    integer: int
    text: str
    flag: bool
    def __init__(
        self,
        real: _Optional[float] = ...,
        integer: _Optional[int] = ...,
        text: _Optional[str] = ...,
        flag: _Optional[bool] = ...,
    ) -> None: ...

class Blob(_message.Message):
    __slots__ = ("name", "size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class Header(_message.Message):
    __slots__ = (
        "run_id",
        "message_id",
        "kind",
        "round",
        "phase",
        "config",
        "metrics",
        "num_examples",
        "blobs",
    )
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Scalar
        def __init__(
            self, key: _Optional[str] = ..., value: _Optional[_Union[Scalar, _Mapping]] = ...
        ) -> None: ...

    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    message_id: str
    kind: str
    round: int
    phase: str
    config: _containers.MessageMap[str, Scalar]
    metrics: _containers.ScalarMap[str, float]
    num_examples: int
    blobs: _containers.RepeatedCompositeFieldContainer[Blob]
    def __init__(
        self,
        run_id: _Optional[str] = ...,
        message_id: _Optional[str] = ...,
        kind: _Optional[str] = ...,
        round: _Optional[int] = ...,
        phase: _Optional[str] = ...,
        config: _Optional[_Mapping[str, Scalar]] = ...,
        metrics: _Optional[_Mapping[str, float]] = ...,
        num_examples: _Optional[int] = ...,
        blobs: _Optional[_Iterable[_Union[Blob, _Mapping]]] = ...,
    ) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: Header
    data: bytes
    def __init__(
        self, header: _Optional[_Union[Header, _Mapping]] = ..., data: _Optional[bytes] = ...
    ) -> None: ...
