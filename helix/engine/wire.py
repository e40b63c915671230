"""The frame codec of the runtime's sockets: a versioned msgpack header plus raw tensor buffers. No pickle.

A message is a frozen set of dataclasses registered with a `Codec` (see `helix.runtime.messages`). On
the wire one message is one ZeroMQ multipart message:

    frame 0    msgpack array [WIRE_VERSION, type name, schema digest, [field values in field order]]
    frame 1..  one raw buffer per tensor field, in field order (C-contiguous bytes, no header)

A tensor field's value in the header is ``[dtype name, shape, buffer index]``; a nested dataclass (e.g.
`SamplingParams`) is the array of its field values. The schema digest is a CRC-32 of the type's field
names and types, so two hosts running different message definitions drop each other's frames with a
clear reason instead of misreading them.

What a field may hold is read from the dataclass's type hints, so a new message type needs no codec
code, only registration: ``int``, ``float``, ``str``, ``bool``, ``X | None``, ``tuple[X, ...]``,
``list[X]``, ``dict[K, V]``, a nested dataclass of such fields, and ``torch.Tensor`` (dtypes in
`TENSOR_DTYPES`). Decoding checks every value against its hint, every size against the frames
received, and builds the dataclass (which runs its own ``__post_init__`` checks); anything else raises
`WireError` with the reason, which the receiving socket logs with the peer's address before dropping
the frame.

Why msgpack for the header: it is binary (ints and float64s round-trip exactly, no text escaping), its
unpacker builds only plain containers and scalars (ext types come back as inert `ExtType` values that
the checks reject), it is several times faster than `json` on these small headers, and it is already
installed as a dependency of Ray.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import numpy as np
import torch

WIRE_VERSION = 1
PIN_MIN_BYTES = 64 << 10  # with `pin_memory`, tensors at least this large are decoded into pinned memory
MAX_HEADER_BYTES = 64 << 20  # a 128k-token prompt's ids are well under 1 MiB
MAX_TENSOR_DIMS = 8

# dtype name on the wire → (torch dtype, numpy dtype used to carry its bytes)
TENSOR_DTYPES: dict[str, tuple[torch.dtype, np.dtype]] = {
    "float32": (torch.float32, np.dtype(np.float32)),
    "float16": (torch.float16, np.dtype(np.float16)),
    "bfloat16": (torch.bfloat16, np.dtype(np.int16)),  # numpy has no bfloat16: ship the bits
    "float64": (torch.float64, np.dtype(np.float64)),
    "int64": (torch.int64, np.dtype(np.int64)),
    "int32": (torch.int32, np.dtype(np.int32)),
}
_DTYPE_NAMES = {torch_dtype: name for name, (torch_dtype, _) in TENSOR_DTYPES.items()}


class WireError(ValueError):
    """A frame that cannot be a valid message; `str(error)` says why."""


Encoder = Callable[[Any, list], Any]  # value, out-of-band buffers → header value
Decoder = Callable[[Any, Sequence], Any]  # header value, received buffers → value


@dataclasses.dataclass(frozen=True, slots=True)
class _Schema:
    cls: type
    digest: int
    encode_fields: tuple[tuple[str, Encoder], ...]
    decode_fields: tuple[tuple[str, Decoder], ...]


class Codec:
    """Encodes and decodes the registered message dataclasses (see the module docstring)."""

    def __init__(self, message_types: Sequence[type] = ()) -> None:
        self._by_name: dict[str, _Schema] = {}
        self._by_type: dict[type, _Schema] = {}
        for cls in message_types:
            self.register(cls)

    def register(self, cls: type) -> type:
        """Add a message type (its class name is its name on the wire); returns `cls`."""
        name = cls.__name__
        if name in self._by_name:
            raise ValueError(f"message type {name} is already registered")
        schema = _schema(cls)
        self._by_name[name] = schema
        self._by_type[cls] = schema
        return cls

    @property
    def message_types(self) -> tuple[type, ...]:
        return tuple(self._by_type)

    def encode(self, message: Any) -> list[Any]:
        """Frames for `send_multipart`: the msgpack header, then each tensor's raw buffer."""
        schema = self._by_type.get(type(message))
        if schema is None:
            raise TypeError(f"{type(message).__name__} is not a registered message type")
        buffers: list[Any] = []
        values = [encode(getattr(message, name), buffers) for name, encode in schema.encode_fields]
        header = msgpack.packb([WIRE_VERSION, schema.cls.__name__, schema.digest, values])
        return [header, *buffers]

    def decode(self, frames: Sequence[Any], *, pin_memory: bool = False) -> Any:
        """The message in `frames` (bytes-like); raises `WireError` for anything malformed. With
        `pin_memory` (a receiver on a CUDA device) large tensors land in page-locked host memory, so
        that their copy to the device is asynchronous (the one copy out of the frame is made anyway)."""
        if not frames:
            raise WireError("empty message")
        header = frames[0]
        if len(header) > MAX_HEADER_BYTES:
            raise WireError(f"header of {len(header)} bytes exceeds {MAX_HEADER_BYTES}")
        try:
            top = msgpack.unpackb(header, raw=False, strict_map_key=False, use_list=True)
        except Exception as exc:  # msgpack raises several types for garbage
            raise WireError(f"header is not msgpack ({type(exc).__name__}: {exc})") from None
        if not isinstance(top, list) or len(top) != 4:
            raise WireError("header is not [version, type, digest, fields]")
        version, name, digest, values = top
        if version != WIRE_VERSION:
            raise WireError(f"wire version {version!r}, expected {WIRE_VERSION}")
        schema = self._by_name.get(name) if isinstance(name, str) else None
        if schema is None:
            raise WireError(f"unknown message type {name!r}")
        if digest != schema.digest:
            raise WireError(f"schema digest of {name} differs (peer runs other message definitions)")
        buffers = _Buffers(frames[1:], pin_memory)
        message = _build(schema, values, buffers, name)
        if buffers.unused:
            raise WireError(f"{name}: {buffers.unused} tensor buffer(s) not described by the header")
        return message


class _Buffers:
    """The received tensor frames; each may be referenced once."""

    def __init__(self, frames: Sequence[Any], pin_memory: bool = False) -> None:
        self.frames = frames
        self.used: set[int] = set()
        self.pin_memory = pin_memory

    def take(self, index: Any) -> memoryview:
        if type(index) is not int or not 0 <= index < len(self.frames) or index in self.used:
            raise WireError(f"tensor buffer index {index!r} is missing or reused")
        self.used.add(index)
        return memoryview(self.frames[index])

    @property
    def unused(self) -> int:
        return len(self.frames) - len(self.used)


def _build(schema: _Schema, values: Any, buffers: _Buffers, where: str) -> Any:
    fields = schema.decode_fields
    if not isinstance(values, list) or len(values) != len(fields):
        got = len(values) if isinstance(values, list) else type(values).__name__
        raise WireError(f"{where}: expected {len(fields)} fields, got {got}")
    decoded: list = []
    name = ""
    try:
        for (name, decode), value in zip(fields, values, strict=True):  # noqa: B007 (named on error)
            decoded.append(decode(value, buffers))
    except _Mismatch as exc:
        raise WireError(f"{where}.{name}: {exc}") from None
    try:
        return schema.cls(*decoded)
    except WireError:
        raise
    except Exception as exc:  # the dataclass's own checks (e.g. SamplingParams.__post_init__)
        raise WireError(f"{where}: {exc}") from None


class _Mismatch(Exception):
    """A value that does not match its field's type (turned into a `WireError` naming the field)."""


def _schema(cls: type) -> _Schema:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    fields = [f for f in dataclasses.fields(cls)]
    if any(not f.init for f in fields):
        raise TypeError(f"{cls.__name__}: every field must be an __init__ field")
    hints = typing.get_type_hints(cls)
    encoders, decoders, parts = [], [], []
    for f in fields:
        encode, decode, text = _field_codec(hints[f.name], f"{cls.__name__}.{f.name}")
        encoders.append((f.name, encode))
        decoders.append((f.name, decode))
        parts.append(f"{f.name}:{text}")
    digest = zlib.crc32(f"{cls.__name__}({','.join(parts)})".encode())
    return _Schema(cls, digest, tuple(encoders), tuple(decoders))


def _field_codec(hint: Any, where: str) -> tuple[Encoder, Decoder, str]:
    """Encoder, decoder and a canonical text of the type (for the digest) for one type hint."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in (int, float, str, bool):
        return _same, _scalar_decoder(hint), hint.__name__
    if hint is type(None):
        return _same, _none_decoder, "None"
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) != 1 or len(args) != 2:
            raise TypeError(f"{where}: only `X | None` unions are supported, not {hint}")
        enc, dec, text = _field_codec(options[0], where)
        return _optional(enc), _optional_decoder(dec), f"{text}?"
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        enc, dec, text = _field_codec(args[0], where)
        return _sequence_encoder(enc), _sequence_decoder(dec, tuple), f"tuple[{text}]"
    if origin is list and len(args) == 1:
        enc, dec, text = _field_codec(args[0], where)
        return _sequence_encoder(enc), _sequence_decoder(dec, list), f"list[{text}]"
    if origin is dict and len(args) == 2:
        kenc, kdec, ktext = _field_codec(args[0], where)
        venc, vdec, vtext = _field_codec(args[1], where)
        return _dict_encoder(kenc, venc), _dict_decoder(kdec, vdec), f"dict[{ktext},{vtext}]"
    if hint is torch.Tensor:
        return _encode_tensor, _decode_tensor, "tensor"
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        schema = _schema(hint)
        return _nested_encoder(schema), _nested_decoder(schema), f"{hint.__name__}#{schema.digest}"
    raise TypeError(f"{where}: the wire cannot carry type {hint}")


def _same(value: Any, buffers: list) -> Any:
    return value


def _scalar_decoder(kind: type) -> Decoder:
    if kind is float:

        def decode_float(value: Any, buffers: Sequence) -> float:
            if type(value) is float or type(value) is int:
                return float(value)
            raise _Mismatch(f"expected a float, got {type(value).__name__}")

        return decode_float

    def decode_exact(value: Any, buffers: Sequence) -> Any:
        if type(value) is kind:
            return value
        raise _Mismatch(f"expected {kind.__name__}, got {type(value).__name__}")

    return decode_exact


def _none_decoder(value: Any, buffers: Sequence) -> None:
    if value is not None:
        raise _Mismatch(f"expected None, got {type(value).__name__}")
    return None


def _optional(encode: Encoder) -> Encoder:
    if encode is _same:
        return _same
    return lambda value, buffers: None if value is None else encode(value, buffers)


def _optional_decoder(decode: Decoder) -> Decoder:
    return lambda value, buffers: None if value is None else decode(value, buffers)


def _sequence_encoder(encode: Encoder) -> Encoder:
    if encode is _same:
        return _same  # msgpack packs tuples and lists as arrays
    return lambda value, buffers: [encode(v, buffers) for v in value]


def _sequence_decoder(decode: Decoder, kind: type) -> Decoder:
    def decode_sequence(value: Any, buffers: Sequence) -> Any:
        if type(value) is not list:
            raise _Mismatch(f"expected an array, got {type(value).__name__}")
        return kind([decode(v, buffers) for v in value])

    return decode_sequence


def _dict_encoder(kenc: Encoder, venc: Encoder) -> Encoder:
    if kenc is _same and venc is _same:
        return _same
    return lambda value, buffers: {kenc(k, buffers): venc(v, buffers) for k, v in value.items()}


def _dict_decoder(kdec: Decoder, vdec: Decoder) -> Decoder:
    def decode_dict(value: Any, buffers: Sequence) -> dict:
        if type(value) is not dict:
            raise _Mismatch(f"expected a map, got {type(value).__name__}")
        return {kdec(k, buffers): vdec(v, buffers) for k, v in value.items()}

    return decode_dict


def _nested_encoder(schema: _Schema) -> Encoder:
    fields = schema.encode_fields
    return lambda value, buffers: [enc(getattr(value, name), buffers) for name, enc in fields]


def _nested_decoder(schema: _Schema) -> Decoder:
    def decode_nested(value: Any, buffers: Any) -> Any:
        try:
            return _build(schema, value, buffers, schema.cls.__name__)
        except WireError as exc:
            raise _Mismatch(str(exc)) from None

    return decode_nested


def _encode_tensor(tensor: torch.Tensor, buffers: list) -> list:
    name = _DTYPE_NAMES.get(tensor.dtype)
    if name is None:
        raise TypeError(f"the wire cannot carry tensors of dtype {tensor.dtype}")
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    tensor = tensor.contiguous()
    carrier = tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor
    buffers.append(carrier.numpy())
    return [name, list(tensor.shape), len(buffers) - 1]


def _decode_tensor(value: Any, buffers: Any) -> torch.Tensor:
    if type(value) is not list or len(value) != 3:
        raise _Mismatch("a tensor is [dtype, shape, buffer index]")
    name, shape, index = value
    if not isinstance(name, str) or name not in TENSOR_DTYPES:
        raise _Mismatch(f"unsupported tensor dtype {name!r}")
    if (
        type(shape) is not list
        or len(shape) > MAX_TENSOR_DIMS
        or not all(type(d) is int and 0 <= d < 1 << 40 for d in shape)
    ):
        raise _Mismatch(f"bad tensor shape {shape!r}")
    torch_dtype, carrier = TENSOR_DTYPES[name]
    try:
        buffer = buffers.take(index)
    except WireError as exc:
        raise _Mismatch(str(exc)) from None
    expected = math.prod(shape) * carrier.itemsize
    if buffer.nbytes != expected:
        raise _Mismatch(f"tensor {name}{shape} needs {expected} bytes, its buffer has {buffer.nbytes}")
    received = np.frombuffer(buffer, dtype=carrier).reshape(shape)
    if buffers.pin_memory and expected >= PIN_MIN_BYTES and torch.cuda.is_available():
        carried = torch.int16 if torch_dtype == torch.bfloat16 else torch_dtype  # as `received` holds it
        tensor = torch.empty(shape, dtype=carried, pin_memory=True)
        np.copyto(tensor.numpy(), received)
    else:
        tensor = torch.from_numpy(received.copy())  # received frames are read-only
    return tensor.view(torch.bfloat16) if torch_dtype == torch.bfloat16 else tensor
