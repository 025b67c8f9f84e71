from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Hello(_message.Message):
    __slots__ = ("protocol", "client_version")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CLIENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    protocol: int
    client_version: str
    def __init__(self, protocol: _Optional[int] = ..., client_version: _Optional[str] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("client", "config_toml", "protocol", "input_shape", "num_classes", "heartbeat_s")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_TOML_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_S_FIELD_NUMBER: _ClassVar[int]
    client: str
    config_toml: str
    protocol: int
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    num_classes: int
    heartbeat_s: float
    def __init__(self, client: _Optional[str] = ..., config_toml: _Optional[str] = ..., protocol: _Optional[int] = ..., input_shape: _Optional[_Iterable[int]] = ..., num_classes: _Optional[int] = ..., heartbeat_s: _Optional[float] = ...) -> None: ...

class PollRequest(_message.Message):
    __slots__ = ("first_personal",)
    FIRST_PERSONAL_FIELD_NUMBER: _ClassVar[int]
    first_personal: bool
    def __init__(self, first_personal: _Optional[bool] = ...) -> None: ...

class Beat(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TaskHeader(_message.Message):
    __slots__ = ("kind", "task_id", "round", "fit_config_json", "params_bytes", "deadline_s", "client_id", "protocol_stage", "protocol_request", "personal_json", "personal_bytes")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        WAIT: _ClassVar[TaskHeader.Kind]
        FIT: _ClassVar[TaskHeader.Kind]
        STOP: _ClassVar[TaskHeader.Kind]
        PROTOCOL: _ClassVar[TaskHeader.Kind]
        EVALUATE: _ClassVar[TaskHeader.Kind]
    WAIT: TaskHeader.Kind
    FIT: TaskHeader.Kind
    STOP: TaskHeader.Kind
    PROTOCOL: TaskHeader.Kind
    EVALUATE: TaskHeader.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    FIT_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    PARAMS_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_STAGE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_REQUEST_FIELD_NUMBER: _ClassVar[int]
    PERSONAL_JSON_FIELD_NUMBER: _ClassVar[int]
    PERSONAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    kind: TaskHeader.Kind
    task_id: int
    round: int
    fit_config_json: str
    params_bytes: int
    deadline_s: float
    client_id: int
    protocol_stage: str
    protocol_request: bytes
    personal_json: str
    personal_bytes: int
    def __init__(self, kind: _Optional[_Union[TaskHeader.Kind, str]] = ..., task_id: _Optional[int] = ..., round: _Optional[int] = ..., fit_config_json: _Optional[str] = ..., params_bytes: _Optional[int] = ..., deadline_s: _Optional[float] = ..., client_id: _Optional[int] = ..., protocol_stage: _Optional[str] = ..., protocol_request: _Optional[bytes] = ..., personal_json: _Optional[str] = ..., personal_bytes: _Optional[int] = ...) -> None: ...

class TaskChunk(_message.Message):
    __slots__ = ("header", "params", "personal")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    PERSONAL_FIELD_NUMBER: _ClassVar[int]
    header: TaskHeader
    params: bytes
    personal: bytes
    def __init__(self, header: _Optional[_Union[TaskHeader, _Mapping]] = ..., params: _Optional[bytes] = ..., personal: _Optional[bytes] = ...) -> None: ...

class UpdateHeader(_message.Message):
    __slots__ = ("task_id", "round", "num_examples", "metrics", "payload_bytes", "error")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    round: int
    num_examples: int
    metrics: _containers.ScalarMap[str, float]
    payload_bytes: int
    error: str
    def __init__(self, task_id: _Optional[int] = ..., round: _Optional[int] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., payload_bytes: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class UpdateChunk(_message.Message):
    __slots__ = ("header", "payload")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    header: UpdateHeader
    payload: bytes
    def __init__(self, header: _Optional[_Union[UpdateHeader, _Mapping]] = ..., payload: _Optional[bytes] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("accepted", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...
