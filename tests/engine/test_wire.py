"""The frame codec: every message type round-trips; every malformed frame raises `WireError`, nothing else."""

from __future__ import annotations

import os
import pickle
import random
from dataclasses import dataclass

import msgpack
import numpy as np
import pytest
import torch

from helix.engine.sampling_params import SamplingParams
from helix.engine.wire import WIRE_VERSION, Codec, WireError
from helix.runtime.messages import (
    CODEC,
    WIRE_MESSAGES,
    Control,
    DecodeRows,
    HopBatch,
    ResultBatch,
    SampledTokens,
    StageItem,
    TokenResult,
    decode,
    encode,
)

PROMPT = StageItem(
    7,
    0,
    3,
    (11, 12, 13),
    ("w0", "w1"),
    SamplingParams(temperature=0.7, top_k=5, top_p=0.9, seed=3, max_tokens=9, stop_token_ids=(2,)),
    (1.25, 2.5),
)
DECODE = StageItem(8, 40, 1)
ROWS = DecodeRows.from_lists([9, 10], [17, 33], [1, 2], [5, 6])


def _examples() -> dict[type, list[object]]:
    """At least one instance of every wire message type (a new type must add one here)."""
    return {
        HopBatch: [
            HopBatch([PROMPT, DECODE], None, 12.5),
            HopBatch([PROMPT, DECODE], torch.randn(4, 8), 1.0),
            HopBatch([DECODE], torch.randn(1, 8).to(torch.bfloat16), 2.0),
            HopBatch([DECODE], torch.randn(1, 8).to(torch.float16), 2.0),
            HopBatch([], torch.empty(0, 8), 0.0),
            HopBatch([], None, 3.0, "coordinator", ROWS),
            HopBatch(
                [PROMPT], torch.randn(5, 8), 3.0, "w0", DecodeRows.from_lists([9, 10], [17, 33], [1, 2])
            ),
        ],
        ResultBatch: [
            ResultBatch(
                "w1",
                [
                    TokenResult(7, 42, -0.25, {42: -0.25, 3: -2.0}, None, (1.0, 2.0, 3.0)),
                    TokenResult(8, error="worker w1: out of KV blocks"),
                ],
            ),
            ResultBatch("w1", [], SampledTokens.of([9, 10], [101, 102], [1, 2])),
        ],
        Control: [Control("free", [1, 2, 3]), Control("stop")],
    }


def _same(a: object, b: object) -> bool:
    if isinstance(a, HopBatch):
        tensors_equal = (a.hidden is None and b.hidden is None) or (
            a.hidden is not None
            and b.hidden is not None
            and a.hidden.dtype == b.hidden.dtype
            and torch.equal(a.hidden, b.hidden)
        )
        return (
            a.items == b.items
            and a.sent_at_s == b.sent_at_s
            and tensors_equal
            and _same_columns(a.decodes, b.decodes)
        )
    if isinstance(a, ResultBatch):
        return a.worker == b.worker and a.results == b.results and _same_columns(a.tokens, b.tokens)
    return a == b


def _same_columns(a: object, b: object) -> bool:
    """Two `DecodeRows` / `SampledTokens` (or None) with equal columns."""
    if a is None or b is None:
        return a is b
    columns = [f for f in a.__slots__ if f != "__weakref__"]
    return all(
        (getattr(a, c) is None and getattr(b, c) is None) or torch.equal(getattr(a, c), getattr(b, c))
        for c in columns
    )


def test_every_message_type_has_an_example():
    assert set(_examples()) == set(WIRE_MESSAGES)


@pytest.mark.parametrize(
    "message", [m for ms in _examples().values() for m in ms], ids=lambda m: type(m).__name__
)
def test_round_trip(message):
    frames = [bytes(f) for f in encode(message)]
    back = decode(frames)
    assert type(back) is type(message)
    assert _same(back, message)


def test_pinned_decoding_gives_the_same_tensors():
    """A CUDA receiver decodes large tensors into page-locked memory (where CUDA exists); the values are
    the same either way."""
    message = HopBatch([], torch.randn(64, 1024).to(torch.bfloat16), 1.0, "w0", ROWS)
    frames = [bytes(f) for f in encode(message)]
    pinned, plain = decode(frames, pin_memory=True), decode(frames)
    assert torch.equal(pinned.hidden, plain.hidden) and pinned.hidden.dtype == torch.bfloat16
    assert pinned.hidden.is_pinned() == torch.cuda.is_available()


def test_no_pickle_in_frames():
    frames = encode(HopBatch([PROMPT], torch.randn(3, 8), 1.0))
    assert not bytes(frames[0]).startswith(b"\x80")  # a pickle stream starts with PROTO
    assert len(frames) == 2 and bytes(frames[1]) == frames[1].tobytes()


def test_new_dataclass_needs_only_registration():
    @dataclass(frozen=True, slots=True)
    class Heartbeat:
        worker: str
        epoch: int
        load: float
        seen: tuple[int, ...] = ()
        params: SamplingParams | None = None
        scores: dict[int, float] | None = None
        blob: torch.Tensor | None = None

    codec = Codec([Heartbeat])
    beat = Heartbeat("w0", 3, 0.5, (1, 2), SamplingParams(max_tokens=2), {1: 0.5}, torch.arange(4))
    back = codec.decode([bytes(f) for f in codec.encode(beat)])
    assert back.worker == "w0" and back.epoch == 3 and back.seen == (1, 2) and back.scores == {1: 0.5}
    assert back.params == beat.params and torch.equal(back.blob, beat.blob)


def test_register_rejects_unsupported_types():
    @dataclass
    class Bad:
        payload: object

    with pytest.raises(TypeError, match="cannot carry"):
        Codec([Bad])
    with pytest.raises(ValueError, match="already registered"):
        Codec([Control, Control])


def _header(frames: list) -> list:
    return msgpack.unpackb(bytes(frames[0]), strict_map_key=False)


def _with_header(header: list, buffers: list) -> list[bytes]:
    return [msgpack.packb(header), *buffers]


def _hop_frames() -> tuple[list, list[bytes]]:
    frames = encode(HopBatch([PROMPT, DECODE], torch.randn(4, 8), 1.0))
    return _header(frames), [bytes(f) for f in frames[1:]]


def _malformed() -> dict[str, list[bytes]]:
    header, buffers = _hop_frames()
    version, name, digest, (items, hidden, sent, sender, decodes) = header
    prompt = items[0]
    cases = {
        "empty message": [],
        "not msgpack": [b"\xc1\xc1\xc1"],
        "truncated header": [encode(Control("stop"))[0][:-3]],
        "header not an array": [msgpack.packb({"v": 1})],
        "wrong version": _with_header([WIRE_VERSION + 1, name, digest, header[3]], buffers),
        "unknown type": _with_header([version, "Exploit", digest, header[3]], buffers),
        "type not a string": _with_header([version, 3, digest, header[3]], buffers),
        "wrong digest": _with_header([version, name, digest ^ 1, header[3]], buffers),
        "too few fields": _with_header([version, name, digest, [items, hidden, sent, sender]], buffers),
        "too many fields": _with_header(
            [version, name, digest, [items, hidden, sent, sender, decodes, 1]], buffers
        ),
        "string for int": _with_header(
            [version, name, digest, [[["7", *prompt[1:]], items[1]], hidden, sent, sender, decodes]], buffers
        ),
        "bool for int": _with_header(
            [version, name, digest, [[[True, *prompt[1:]], items[1]], hidden, sent, sender, decodes]], buffers
        ),
        "map for tuple": _with_header(
            [
                version,
                name,
                digest,
                [[[*prompt[:3], {"a": 1}, *prompt[4:]], items[1]], hidden, sent, sender, decodes],
            ],
            buffers,
        ),
        "invalid nested sampling": _with_header(
            [
                version,
                name,
                digest,
                [
                    [[*prompt[:5], [-1.0, *prompt[5][1:]], *prompt[6:]], items[1]],
                    hidden,
                    sent,
                    sender,
                    decodes,
                ],
            ],
            buffers,
        ),
        "wrong buffer size": _with_header(header, [buffers[0][:-4]]),
        "missing buffer": _with_header(header, []),
        "extra buffer": _with_header(header, [*buffers, b"\x00" * 8]),
        "bad dtype": _with_header(
            [version, name, digest, [items, ["object", [4, 8], 0], sent, sender, decodes]], buffers
        ),
        "negative shape": _with_header(
            [version, name, digest, [items, ["float32", [-4, -8], 0], sent, sender, decodes]], buffers
        ),
        "huge shape": _with_header(
            [version, name, digest, [items, ["float32", [1 << 41, 1 << 41], 0], sent, sender, decodes]],
            buffers,
        ),
        "bad buffer index": _with_header(
            [version, name, digest, [items, ["float32", [4, 8], 5], sent, sender, decodes]], buffers
        ),
        "ext type": [msgpack.packb([version, name, digest, msgpack.ExtType(1, b"x")])],
        **_malformed_decode_rows(),
    }
    return cases


def _malformed_decode_rows() -> dict[str, list[bytes]]:
    """Decode rows whose table is not one: each must be dropped, not misread."""
    version, name, digest, fields = _header(encode(HopBatch([], None, 1.0, "n0", ROWS)))

    def rows(dtype: str, shape: list[int], data: bytes) -> list[bytes]:
        header = [version, name, digest, [*fields[:4], [[dtype, shape, 0]]]]
        return _with_header(header, [data])

    six = np.array([1, 2, 3, 4, 5, 6], dtype=np.int64)
    return {
        "decode rows of two rows": rows("int64", [2, 3], six.tobytes()),
        "decode rows not int64": rows("float32", [3, 2], np.zeros(6, np.float32).tobytes()),
        "decode rows without context": rows(
            "int64", [3, 2], np.array([1, 2, 0, 0, 1, 1], np.int64).tobytes()
        ),
        "decode rows one-dimensional": rows("int64", [6], six.tobytes()),
    }


@pytest.mark.parametrize("case", list(_malformed()))
def test_malformed_frames_raise_wire_error(case):
    with pytest.raises(WireError):
        decode(_malformed()[case])


def test_pickle_payload_is_never_executed(tmp_path):
    target = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(target), "w"))

    payload = pickle.dumps(Exploit())
    with pytest.raises(WireError):
        decode([payload])
    with pytest.raises(WireError):
        decode([msgpack.packb([WIRE_VERSION, "HopBatch", 0, [payload]]), payload])
    assert not target.exists()


def test_random_frames_raise_only_wire_error():
    rng = random.Random(0)
    valid = [bytes(f) for m in _examples().values() for x in m for f in encode(x) if len(f)]
    for _ in range(2000):
        kind = rng.random()
        if kind < 0.4:
            frames = [os.urandom(rng.randrange(0, 64)) for _ in range(rng.randrange(1, 4))]
        elif kind < 0.8:  # flip bytes of a valid header
            raw = bytearray(rng.choice(valid))
            for _ in range(rng.randrange(1, 4)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            frames = [bytes(raw)]
        else:  # truncate a valid header
            raw = rng.choice(valid)
            frames = [raw[: rng.randrange(len(raw) + 1)]]
        try:
            decode(frames)
        except WireError:
            pass


def test_codec_encodes_only_registered_types():
    with pytest.raises(TypeError, match="not a registered"):
        encode(PROMPT)
    assert CODEC.message_types == WIRE_MESSAGES
