"""Pickled request bodies: plain data decodes, anything that could run code is refused before it
runs (asserted on a side effect: a file that must not appear)."""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import pickletools
from pathlib import Path

import pytest

from firm_lite.server.safe_pickle import UnsafePickleError, _PlainDataUnpickler, dumps_plain, safe_loads

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
