"""Response bytes written directly: ``BatchSelectArmsResponse`` for single-arm decisions as
one compiled loop, and one ``SelectArmResponse`` from ready-made pieces (:func:`select_response`).

Building a thousand ``SelectArmResponse`` messages through protobuf's Python API costs a
``responses.add(...)`` call and a loop step per decision (≈ 1 µs each); this loop writes the
same wire format in a few ns per decision, and the server merges the bytes into its response
message (``MergeFromString``: the decisions are appended in order). Reference:
:func:`select_responses_reference` (protobuf's own serialisation of the same messages).

The wire format written, per decision, is the ``responses`` field (1, length-delimited) of
``BatchSelectArmsResponse`` holding a ``SelectArmResponse`` with ``decision_id`` (1, string),
``arm_id`` (2, string), ``propensity`` (3, double) and ``model_version`` (5, varint), each
left out when it has its default value, as protobuf leaves it out.
"""

from __future__ import annotations

import functools
import math
import struct

import numpy as np
from numba import njit

from banditd.kernels.config import JIT

_TAG_RESPONSES = 0x0A  # field 1, length-delimited
_TAG_DECISION_ID = 0x0A  # field 1, length-delimited
_TAG_ARM_ID = 0x12  # field 2, length-delimited
_TAG_PROPENSITY = 0x19  # field 3, 64-bit
_TAG_RANKED_ARM_IDS = 0x22  # field 4, length-delimited (repeated)
_TAG_MODEL_VERSION = 0x28  # field 5, varint
_PROPENSITY = struct.Struct("<Bd")  # the propensity's tag and its 8 little-endian bytes


@njit(**JIT)
def _digit_count(value, bits):
    """Digits of ``value`` (>= 0) in base ``2**bits``, at least one: a varint's bytes for
    ``bits`` = 7, its lowercase hex for 4."""
    digits = 1
    while value >> bits:
        value >>= bits
        digits += 1
    return digits


@njit(**JIT)
def _put_varint(out, pos, value):
    while value >= 0x80:
        out[pos] = (value & 0x7F) | 0x80
        value >>= 7
        pos += 1
    out[pos] = value
    return pos + 1


@njit(**JIT)
def select_responses(prefix, first_counter, arms, arm_bytes, arm_starts, propensity_bytes,
                     version, out):
    """Write the responses of ``arms.shape[0]`` decisions into ``out``; returns the bytes
    written. Decision ``i`` has id ``<prefix>-<first_counter + i in lowercase hex>``
    (``prefix``: its UTF-8 bytes), arm ``arms[i]`` (whose UTF-8 id is
    ``arm_bytes[arm_starts[a]:arm_starts[a + 1]]``), the propensity whose 8 little-endian
    bytes are ``propensity_bytes[8 i: 8 i + 8]`` and model version ``version`` (>= 0).
    ``out`` must hold :func:`select_responses_bound` bytes."""
    pos = 0
    for i in range(arms.shape[0]):
        counter = first_counter + i
        digits = _digit_count(counter, 4)
        id_size = prefix.shape[0] + 1 + digits
        arm = arms[i]
        start = arm_starts[arm]
        arm_size = arm_starts[arm + 1] - start
        zero = True
        for b in range(8):
            if propensity_bytes[8 * i + b] != 0:
                zero = False
        size = 1 + _digit_count(id_size, 7) + id_size + 1 + _digit_count(arm_size, 7) + arm_size
        if not zero:
            size += 9
        if version != 0:
            size += 1 + _digit_count(version, 7)
        out[pos] = _TAG_RESPONSES
        pos = _put_varint(out, pos + 1, size)
        out[pos] = _TAG_DECISION_ID
        pos = _put_varint(out, pos + 1, id_size)
        for b in range(prefix.shape[0]):
            out[pos + b] = prefix[b]
        pos += prefix.shape[0]
        out[pos] = 0x2D  # "-"
        pos += 1
        for d in range(digits):
            nibble = (counter >> (4 * (digits - 1 - d))) & 0xF
            out[pos + d] = nibble + 0x30 if nibble < 10 else nibble + 0x57  # 0-9, a-f
        pos += digits
        out[pos] = _TAG_ARM_ID
        pos = _put_varint(out, pos + 1, arm_size)
        for b in range(arm_size):
            out[pos + b] = arm_bytes[start + b]
        pos += arm_size
        if not zero:
            out[pos] = _TAG_PROPENSITY
            for b in range(8):
                out[pos + 1 + b] = propensity_bytes[8 * i + b]
            pos += 9
        if version != 0:
            out[pos] = _TAG_MODEL_VERSION
            pos = _put_varint(out, pos + 1, version)
    return pos


def select_responses_bound(count: int, prefix_size: int, max_arm_size: int) -> int:
    """Bytes :func:`select_responses` may write for ``count`` decisions at most."""
    # tags and length varints (≤ 5 bytes each for sizes < 2**32), id with 16 hex digits,
    # the propensity and a 10-byte version varint
    return count * (5 + 6 + prefix_size + 17 + 6 + max_arm_size + 9 + 11)


def encode_arm_ids(arm_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``arm_ids`` as the (bytes, starts) pair :func:`select_responses` takes."""
    encoded = [a.encode() for a in arm_ids]
    starts = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=starts[1:])
    return np.frombuffer(b"".join(encoded) or b"\0", dtype=np.uint8).copy(), starts


def select_responses_reference(prefix: str, first_counter: int, arms: np.ndarray,
                               arm_ids: list[str], propensity: np.ndarray,
                               version: int) -> bytes:
    """The same bytes through protobuf's API: the messages built one by one, serialised."""
    from banditd.decision.v1 import decision_pb2 as pb

    response = pb.BatchSelectArmsResponse()
    for i, arm in enumerate(arms.tolist()):
        response.responses.add(decision_id=f"{prefix}-{first_counter + i:x}",
                               arm_id=arm_ids[arm], propensity=float(propensity[i]),
                               model_version=version)
    return response.SerializeToString()


# -- one SelectArmResponse, in Python ----------------------------------------------------------
# SelectArm's response through protobuf's API (a message built from keyword arguments,
# serialised, freed) costs about four times a join of pieces kept ready: each arm's
# ``arm_id`` field (:func:`arm_field`, kept per experiment in :class:`ArmWire`), the model
# version's field
# (cached), the propensity's 9 bytes. Reference: protobuf's own serialisation (the tests
# compare the bytes).

def varint(value: int) -> bytes:
    """``value`` (>= 0) as a protobuf varint."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(tag: int, data: bytes) -> bytes:
    """``tag`` (one byte), the size of ``data`` as a varint, ``data``."""
    return bytes((tag,)) + varint(len(data)) + data


def string_field(tag: int, text: str) -> bytes:
    """A length-delimited field of ``text``'s UTF-8; nothing for an empty text (protobuf
    leaves out a default string)."""
    return _length_delimited(tag, text.encode()) if text else b""


def arm_field(arm_id: str) -> bytes:
    """``SelectArmResponse.arm_id`` = ``arm_id`` on the wire."""
    return string_field(_TAG_ARM_ID, arm_id)


def ranked_field(arm_id: str) -> bytes:
    """One ``SelectArmResponse.ranked_arm_ids`` entry on the wire (an empty id is kept)."""
    return _length_delimited(_TAG_RANKED_ARM_IDS, arm_id.encode())


@functools.lru_cache(maxsize=4096)
def version_field(version: int) -> bytes:
    """``SelectArmResponse.model_version`` = ``version`` on the wire (nothing for 0)."""
    return bytes((_TAG_MODEL_VERSION,)) + varint(version) if version else b""


# the decision id's tag and size for ids of fewer than 128 bytes (every id the server makes)
_ID_HEADS = tuple(bytes((_TAG_DECISION_ID, size)) for size in range(128))


def select_response(decision_id: str, arm: bytes, propensity: float, version: int,
                    ranked: bytes = b"") -> bytes:
    """``SelectArmResponse(decision_id, arm_id, propensity, ranked_arm_ids, model_version)``
    serialised, byte for byte as protobuf writes it; ``arm`` is the arm's :func:`arm_field`
    and ``ranked`` the slate's :func:`ranked_field` entries joined (b"" for none)."""
    data = decision_id.encode()
    size = len(data)
    if 0 < size < 128:
        head = _ID_HEADS[size]
    else:
        head, data = string_field(_TAG_DECISION_ID, decision_id), b""
    if propensity or math.copysign(1.0, propensity) < 0:  # protobuf keeps -0.0, drops 0.0
        weight = _PROPENSITY.pack(_TAG_PROPENSITY, propensity)
    else:
        weight = b""
    return b"".join((head, data, arm, weight, ranked, version_field(version)))


def select_response_reference(decision_id: str, arm_id: str, propensity: float, version: int,
                              ranked_arm_ids: list[str] | None = None) -> bytes:
    """The same bytes through protobuf's API."""
    from banditd.decision.v1 import decision_pb2 as pb

    return pb.SelectArmResponse(decision_id=decision_id, arm_id=arm_id, propensity=propensity,
                                ranked_arm_ids=ranked_arm_ids or [],
                                model_version=version).SerializeToString()


class ArmWire:
    """An experiment's arms as SelectArm's responses carry them, encoded once per arm list:
    each arm as ``arm_id`` and as a ``ranked_arm_ids`` entry, and the (bytes, starts) pair
    :func:`select_responses` takes."""

    __slots__ = ("arms_version", "arm_fields", "ranked_fields", "arm_bytes", "arm_starts",
                 "max_arm_bytes")

    def __init__(self, arm_ids: list[str], arms_version: int) -> None:
        self.arms_version = arms_version
        self.arm_fields = [arm_field(arm_id) for arm_id in arm_ids]
        self.ranked_fields = [ranked_field(arm_id) for arm_id in arm_ids]
        self.arm_bytes, self.arm_starts = encode_arm_ids(arm_ids)
        self.max_arm_bytes = int(np.diff(self.arm_starts).max(initial=0))
