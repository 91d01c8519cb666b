"""Pickled request bodies: plain data decodes, anything that could run code is refused before it
runs (asserted on a side effect: a file that must not appear)."""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import pickletools
import resource
import struct
import time
from pathlib import Path

import pytest

from firm_lite.server.safe_pickle import (
    UnsafePickleError,
    _PlainDataUnpickler,
    check_plain,
    dumps_plain,
    safe_loads,
)

SERVER_DIR = Path(__file__).resolve().parents[1] / "firm_lite" / "server"


def _touch(path: str) -> None:
    Path(path).write_text("pwned")


class Exploit:
    """What an attacker sends: unpickling it would call ``_touch(path)``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (_touch, (self.path,))


class SystemExploit:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def reference_like(with_bytes: bool = True) -> dict:
    images = [b"\xff\xd8edited", b""] if with_bytes else ["no bytes", ""]
    return {"images": images, "ref_images": images[::-1],
            "prompts": ["make the sky pink", "ünïcode ✓"], "metadatas": [{"requirement": "", "n": 3},
                                                                        {"tags": ("a", 1.5, None, True)}],
            "big": 2**80, "neg": -7, "nested": [[{"k": [1, 2, (3,)]}]], "empty": ((), [], {})}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_data_round_trips_in_every_protocol(protocol: int) -> None:
    data = reference_like(with_bytes=protocol >= 3)
    assert safe_loads(pickle.dumps(data, protocol=protocol)) == data


@pytest.mark.parametrize("protocol", [0, 1, 2])
def test_bytes_in_old_protocols_need_a_global_and_the_message_says_what_to_do(protocol: int) -> None:
    with pytest.raises(UnsafePickleError, match="protocol 3 or higher"):
        safe_loads(pickle.dumps({"images": [b"\xff\xd8"]}, protocol=protocol))


def test_memo_sharing_and_response_encoding() -> None:
    shared = b"same jpeg"
    data = {"images": [shared, shared], "ref_images": [shared, shared]}
    assert safe_loads(pickle.dumps(data)) == data
    response = {"scores": [5, 0], "reasonings": ["ok", ""], "parse_failures": [1]}
    assert safe_loads(dumps_plain(response)) == response


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("exploit", [Exploit, SystemExploit])
def test_reduce_payload_is_refused_and_never_runs(tmp_path: Path, protocol: int, exploit: type) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"images": [exploit(marker)]}, protocol=protocol)
    with pytest.raises(UnsafePickleError, match="refused: it references the global"):
        safe_loads(payload)
    assert not marker.exists()
    # the payload is real: plain pickle.loads would have run it
    pickle.loads(payload)
    assert marker.exists()


def test_message_names_the_global(tmp_path: Path) -> None:
    with pytest.raises(UnsafePickleError) as err:
        safe_loads(pickle.dumps(SystemExploit(tmp_path / "x"), protocol=4))
    assert "system" in str(err.value) and "only plain data" in str(err.value)


def test_second_wall_find_class_and_persistent_load_refuse(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Exploit(marker), protocol=2)
    with pytest.raises(UnsafePickleError, match="references"):
        _PlainDataUnpickler(io.BytesIO(payload)).load()  # even without the opcode scan

    class WithPid(pickle.Pickler):
        def persistent_id(self, obj):
            return "ref-1" if obj == "secret" else None

    buf = io.BytesIO()
    WithPid(buf, protocol=2).dump(["secret"])
    with pytest.raises(UnsafePickleError, match="PERSID"):
        safe_loads(buf.getvalue())
    with pytest.raises(UnsafePickleError, match="persistent"):
        _PlainDataUnpickler(io.BytesIO(buf.getvalue())).load()
    assert not marker.exists()


def test_extension_registry_codes_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    copyreg.add_extension(__name__, "_touch", 0xF00D)
    try:
        payload = pickle.dumps(Exploit(marker), protocol=2)
        assert any(op.name.startswith("EXT") for op, _, _ in pickletools.genops(payload))
        with pytest.raises(UnsafePickleError, match="extension registry"):
            safe_loads(payload)
    finally:
        copyreg.remove_extension(__name__, "_touch", 0xF00D)
    assert not marker.exists()


@pytest.mark.parametrize("value", [{1, 2}, frozenset({1}), bytearray(b"abc")])
def test_types_outside_plain_data_are_refused(value: object) -> None:
    with pytest.raises(UnsafePickleError, match="refused"):
        safe_loads(pickle.dumps({"x": value}, protocol=5))


@pytest.mark.parametrize("body", [b"", b"not a pickle", pickle.dumps({"a": 1})[:-3], b"\x80\x05\xff"])
def test_garbage_and_truncated_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(UnsafePickleError, match="pickle|empty"):
        safe_loads(body)


def test_opcode_cap_bounds_the_work() -> None:
    payload = pickle.dumps(list(range(5000)))
    assert safe_loads(payload, max_opcodes=100_000) == list(range(5000))
    with pytest.raises(UnsafePickleError, match="more than 1,000 opcodes"):
        safe_loads(payload, max_opcodes=1000)


def test_no_server_module_unpickles_with_plain_pickle() -> None:
    """Only safe_pickle may construct an unpickler; nothing calls pickle.load(s) on input."""
    for path in SERVER_DIR.glob("*.py"):
        src = path.read_text("utf-8")
        assert "pickle.loads(" not in src and "pickle.load(" not in src, path.name
        if path.name != "safe_pickle.py":
            assert "Unpickler" not in src, path.name


# -- every size an opcode can ask for is bounded (issue 14, rows 2 and 9) ----------------------------

MEMO_BOMB = b"\x80\x04]r" + struct.pack("<I", 2**28) + b"."  # 9 bytes that asked CPython for 4 GiB


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@pytest.mark.parametrize(("body", "needle"), [
    (MEMO_BOMB, "memo index 268,435,456"),
    (b"\x80\x04]r" + struct.pack("<I", 2**32 - 1) + b".", "memo index 4,294,967,295"),
    (b"(lp100000000000000000000\n.", "memo index 100,000,000,000,000,000,000"),  # was OverflowError -> 500
    (b"(lp1e20\n.", "is not a number"),
    (b"\x80\x04h\x05.", "never stored"),
    (b"F" + b"1" * 5_000_000 + b"\n.", "longer than 64 characters"),  # was OverflowError -> 500
    (b"I" + b"1" * 5_000_000 + b"\n.", "longer than 4,302 characters"),
    (b"\x80\x04\x8b" + struct.pack("<i", 10**8) + b"\x01" * 16 + b".", "integer of 100,000,000 bytes"),
    (b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"x.", "asks for 1,099,511,627,776 bytes"),
    (b"\x80\x04\x8d" + struct.pack("<Q", 2**63) + b"x.", "BINUNICODE8 asks for"),
    (b"\x80\x04B" + struct.pack("<I", 2**31) + b"x.", "BINBYTES asks for"),
    (b"T" + struct.pack("<i", -5) + b"abc.", "BINSTRING asks for -5 bytes"),
    (b"\x80\x04\x95" + struct.pack("<Q", 2**60) + b"N.", "FRAME of 1,152,921,504,606,846,976 bytes"),
    (b"\x80\x04N", "ends before the STOP opcode"),
])
def test_sizes_the_body_asks_for_are_bounded_before_anything_is_built(body: bytes, needle: str) -> None:
    before = _peak_rss_mb()
    started = time.perf_counter()
    with pytest.raises(UnsafePickleError) as err:
        safe_loads(body)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)
    assert time.perf_counter() - started < 2.0
    assert _peak_rss_mb() - before < 64  # the 9-byte memo bomb alone used to cost 4.96 GB


def test_memo_that_a_real_pickler_writes_still_loads() -> None:
    shared = [b"jpeg"] * 3
    data = {"images": shared, "ref_images": shared, "prompts": ["a"] * 3, "meta": [{"k": shared}] * 200}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        body = pickle.dumps(data if protocol >= 3 else {"a": [["x"] * 3] * 300}, protocol=protocol)
        assert any(op.name.endswith("PUT") or op.name == "MEMOIZE" for op, _, _ in pickletools.genops(body))
        safe_loads(body)
    assert check_plain(pickle.dumps(list(range(300)) * 2)) is None


def test_only_refusals_come_out_of_mutated_pickles() -> None:
    """A seeded fuzz: flipped, dropped and inserted bytes give a refusal or plain data, never another
    exception (which the app would answer with a 500)."""
    import random

    rng = random.Random(14)
    bases = [pickle.dumps(reference_like(with_bytes=p >= 3), protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1)]
    for _ in range(5000):
        body = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(body))
            roll = rng.random()
            if roll < 0.5:
                body[at] = rng.randrange(256)
            elif roll < 0.75:
                del body[at]
            else:
                body.insert(at, rng.randrange(256))
        try:
            safe_loads(bytes(body))
        except UnsafePickleError:
            pass
