from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class SubscribeRequest(_message.Message):
    __slots__ = ("worker_index", "decision_id_prefix")
    WORKER_INDEX_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_PREFIX_FIELD_NUMBER: _ClassVar[int]
    worker_index: int
    decision_id_prefix: str
    def __init__(self, worker_index: _Optional[int] = ..., decision_id_prefix: _Optional[str] = ...) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ("image", "records", "last_seq", "ack_requested", "sent")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    ACK_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    records: _containers.RepeatedScalarFieldContainer[bytes]
    last_seq: int
    ack_requested: bool
    sent: float
    def __init__(self, image: _Optional[bytes] = ..., records: _Optional[_Iterable[bytes]] = ..., last_seq: _Optional[int] = ..., ack_requested: _Optional[bool] = ..., sent: _Optional[float] = ...) -> None: ...

class PublishDecisionsRequest(_message.Message):
    __slots__ = ("worker_index", "records", "last_decision_counter", "applied_seq")
    WORKER_INDEX_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    LAST_DECISION_COUNTER_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    worker_index: int
    records: _containers.RepeatedScalarFieldContainer[bytes]
    last_decision_counter: int
    applied_seq: int
    def __init__(self, worker_index: _Optional[int] = ..., records: _Optional[_Iterable[bytes]] = ..., last_decision_counter: _Optional[int] = ..., applied_seq: _Optional[int] = ...) -> None: ...

class PublishDecisionsResponse(_message.Message):
    __slots__ = ("leader_seq",)
    LEADER_SEQ_FIELD_NUMBER: _ClassVar[int]
    leader_seq: int
    def __init__(self, leader_seq: _Optional[int] = ...) -> None: ...
