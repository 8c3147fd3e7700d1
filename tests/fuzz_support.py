"""Hostile-input strategies and reply checks shared by the per-service fuzz tests (tests/test_fuzz_*.py).

Every RPC is fuzzed twice: with typed messages (what a buggy or hostile client can build with the
generated classes) and with raw wire bytes (what no client library would send: invalid UTF-8 in string
fields, lone surrogates encoded CESU-style, truncated and mutated messages, varints out of range).
A reply must be a valid response or one of the clear statuses in ALLOWED; never INTERNAL or UNKNOWN.
"""
from __future__ import annotations

import math
import os
import struct
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, settings, strategies as st

from nlpsuite.shared.local_run import ServerThread

EXAMPLES = int(os.environ.get("NLPSUITE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example, HealthCheck.filter_too_much])
ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
TIMEOUT_S = 60.0  # generous: the point is the status, not the speed (the machine is shared and slow)

# Limits the fuzzed servers run with: small enough that "huge" inputs cross them cheaply.
MAX_ITEMS = 64
MAX_TEXT_CHARS = 5_000
MAX_MESSAGE_BYTES = 256 * 1024

PREBUILT = os.environ.get("NLPSUITE_FUZZ_MODELS")  # a repository with tiny, tiny-embed, tiny-intent: skip building

CASES: Counter[str] = Counter()  # examples run per RPC (typed and raw), printed by each module at the end

ADVERSARIAL = [
    "", " ", "\t\n\r", "\x00", "\x00" * 50, "\u200b\u200c\u200d\ufeff", "\u202e\u202dabc", "\ufffd",
    "[CLS]", "[SEP] [PAD] [MASK] [UNK]", "##", "a" * MAX_TEXT_CHARS, "a" * (MAX_TEXT_CHARS + 1),
    " " * MAX_TEXT_CHARS, "\U0001f600" * 3000, "é" * 4000, "e\u0301" * 2000, "Ж中عक🙂ä" * 300,
    "\U000e0041\U000e0042", "\x1b[31mred\x1b[0m", "\\x00\\u0000", "%s%n%x{0}${jndi:x}", "<script>",
    "Norvale Mining NVM " * 250, "NVM" * 1666,
]
_MIXED = "aZ09 .,!?-'\"ÄéßЖжзعربيक्षि中文日本語한국어🙂🚀\u0301\u200b\u200f\u202e\ufeff\x00\x07\x1b\x7f\x85\u2028"


def _repeated(unit: str, n: int) -> str:
    return (unit * n)[: MAX_TEXT_CHARS + 10]


def texts() -> st.SearchStrategy[str]:
    """Random and adversarial text: control characters, mixed scripts, repeats, near and over the limits."""
    return st.one_of(
        st.text(max_size=64),
        st.text(st.characters(codec="utf-8", categories=("Cc", "Cf", "Zs", "Zl", "Zp", "Mn", "So", "Lo")),
                max_size=64),
        st.text(st.sampled_from(_MIXED), min_size=1, max_size=200),
        st.sampled_from(ADVERSARIAL),
        st.builds(_repeated, st.text(min_size=1, max_size=6), st.integers(1, 3000)),
    )


def short_texts() -> st.SearchStrategy[str]:
    return st.one_of(st.text(max_size=16), st.sampled_from(["", " ", "\x00", "x" * 200, "\u202e", "🙂"]))


def text_lists() -> st.SearchStrategy[list[str]]:
    """Lists of texts: empty, normal, at and over max_items, and huge repeated ones (over the byte limit)."""
    return st.one_of(
        st.lists(texts(), max_size=6),
        st.builds(lambda t, n: [t] * n, texts(), st.sampled_from([MAX_ITEMS, MAX_ITEMS + 1, 500, 5000])),
        st.builds(lambda n: ["x" * (MAX_TEXT_CHARS - 1)] * n, st.sampled_from([40, 60, 120])),
    )


FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.0, -0.0, 1e-45, -1.0, 5.0, 3.4e38, -3.4e38, 1e308, -1e308, 2.0**31]))


# -- raw wire bytes ----------------------------------------------------------------------------------
def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative numbers: ten bytes, as protobuf encodes int64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number: int, wire_type: int, payload: bytes | int) -> bytes:
    key = varint((number << 3) | wire_type)
    if wire_type == 0:
        return key + varint(int(payload))
    if wire_type == 1:
        return key + bytes(payload)[:8].ljust(8, b"\0")
    if wire_type == 5:
        return key + bytes(payload)[:4].ljust(4, b"\0")
    return key + varint(len(payload)) + bytes(payload)


BAD_UTF8 = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"a\x80b",
            b"\xf0\x9f\x98", b"\xe2\x82"]


def string_payloads() -> st.SearchStrategy[bytes]:
    """Bytes for a string field: invalid UTF-8 (lone surrogates CESU-encoded, overlongs, cut sequences) or random."""
    return st.one_of(
        st.builds(lambda pre, bad, post: pre.encode() + bad + post.encode(),
                  st.text(max_size=8), st.sampled_from(BAD_UTF8), st.text(max_size=8)),
        st.binary(max_size=64),
        st.text(max_size=32).map(str.encode),
    )


def wire_fields(schema: dict[int, str], depth: int = 0) -> st.SearchStrategy[bytes]:
    """One field of a message, typed as `schema` says ("str", "uint", "float", "double", "msg:<schema>") or not."""
    number = st.one_of(st.sampled_from(sorted(schema)), st.integers(1, 40), st.sampled_from([0, 536870911]))

    def encode(draw_number: int, data: st.DataObject) -> bytes:
        kind = schema.get(draw_number, "any")
        if kind == "str":
            return field(draw_number, 2, data.draw(string_payloads()))
        if kind == "uint":
            return field(draw_number, 0, data.draw(st.sampled_from([0, 1, 2**31 - 1, 2**32 - 1, 2**32, 2**63, -1, -2**31])))
        if kind in ("float", "double"):
            value = data.draw(FLOATS)
            if kind == "double":
                return field(draw_number, 1, struct.pack("<d", value))
            try:
                return field(draw_number, 5, struct.pack("<f", value))
            except OverflowError:  # beyond float32: what a client that casts would send
                return field(draw_number, 5, struct.pack("<f", math.copysign(math.inf, value)))
        if kind.startswith("msg:") and depth < 2:
            inner = SCHEMAS[kind[4:]]
            return field(draw_number, 2, b"".join(data.draw(st.lists(wire_fields(inner, depth + 1), max_size=5))))
        wire_type = data.draw(st.sampled_from([0, 1, 2, 5]))
        return field(draw_number, wire_type, data.draw(st.binary(max_size=16)) if wire_type else data.draw(
            st.integers(-2**63, 2**64 - 1)))

    return st.builds(encode, number, st.data())


SCHEMAS: dict[str, dict[int, str]] = {
    "texts": {1: "str"},
    "stream_item": {1: "str", 2: "str"},
    "reply": {1: "str", 2: "str"},
    "history": {1: "str", 2: "float"},
    "user": {1: "str", 2: "msg:history", 3: "str"},
    "entry": {1: "str", 2: "double"},
    "candidate": {1: "str", 2: "str", 3: "msg:entry"},
    "score": {1: "msg:user", 2: "msg:candidate"},
    "rank": {1: "msg:user", 2: "msg:candidate", 3: "uint"},
}


def wire_messages(schema: str) -> st.SearchStrategy[bytes]:
    """Raw request bytes: well-formed-ish field soup, random bytes, or a prefix of either (truncated)."""
    soup = st.lists(wire_fields(SCHEMAS[schema]), max_size=8).map(b"".join)
    return st.one_of(
        soup,
        st.binary(max_size=256),
        st.builds(lambda raw, cut: raw[: max(0, len(raw) - cut)], soup, st.integers(1, 6)),
        st.builds(lambda raw, n: raw * n, soup, st.integers(1, 2000)),
    )


def serve(service) -> Iterator[ServerThread]:
    """A module's fuzz target: the real server on loopback; when the module is done, how many cases each RPC ran."""
    with ServerThread(service).start() as srv:
        yield srv
    print(f"\nfuzz cases run: {dict(CASES)}")


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    """A channel to the module's `server` fixture (fuzz modules import this fixture)."""
    with grpc.insecure_channel(server.target) as chan:
        yield chan


def typed_case(channel: grpc.Channel, service: str, method: str, calls: Sequence[Callable[[], object]],
               check_reply: Callable[[object], None]) -> None:
    """One typed example of one or more calls: each reply goes to `check_reply`, each refusal must be an ALLOWED
    status with a message; then the server must still be SERVING."""
    CASES[method] += 1
    for call in calls:
        try:
            reply = call()
        except grpc.RpcError as err:
            check_status(err.code(), err.details(), method)
        else:
            check_reply(reply)
    assert_serving(channel, service)


def raw_case(channel: grpc.Channel, service: str, method: str, payload: bytes,
             check_reply: Callable[[bytes], None]) -> None:
    """One raw-wire example: an OK reply's bytes go to `check_reply`, any other answer must be an ALLOWED status
    with a message; either way the server must still be SERVING."""
    CASES[f"{method}.raw"] += 1
    code, raw, details = raw_call(channel, f"/{service}/{method}", payload)
    if code == grpc.StatusCode.OK:
        check_reply(raw)
    else:
        check_status(code, details, f"{method} (raw)")
    assert_serving(channel, service)


def raw_call(channel: grpc.Channel, method: str, payload: bytes, timeout: float = TIMEOUT_S):
    """Unary call with pre-encoded request bytes; returns (code, response bytes or None, details)."""
    call = channel.unary_unary(method)  # no serializers: bytes go out and come back as they are
    try:
        return grpc.StatusCode.OK, call(payload, timeout=timeout), ""
    except grpc.RpcError as err:
        return err.code(), None, err.details()


def check_status(code: grpc.StatusCode, details: str | None, what: str) -> None:
    assert code in ALLOWED, f"{what}: {code.name} {details!r}"
    assert details, f"{what}: {code.name} without a message"


def assert_serving(channel: grpc.Channel, service: str) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=30).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def probabilities_ok(scores: list[float], tolerance: float = 1e-3) -> bool:
    return all(0.0 <= s <= 1.0 + 1e-6 and math.isfinite(s) for s in scores) and abs(sum(scores) - 1.0) < tolerance


def model_info_ok(info) -> bool:
    return bool(info.name and info.version and info.variant and info.provider)


def model_version(request, fixture: str, name: str):
    """The conftest fixture's model, or the same-named one from NLPSUITE_FUZZ_MODELS (long runs reuse it)."""
    if PREBUILT:
        from nlpsuite.shared.model_repo import ModelRepository

        return ModelRepository(PREBUILT).resolve(name)
    return request.getfixturevalue(fixture)
