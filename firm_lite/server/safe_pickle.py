"""Reading the reference protocol's pickled request bodies without ever running code from them,
and without letting a few bytes ask for gigabytes.

The reference reward server calls ``pickle.loads`` on whatever arrives, so anyone who can reach
its port can run code there (a ``__reduce__`` payload names ``os.system`` and pickle calls it).
Trainer clients still send pickles, so this module owns the one way the server reads them:

1. **A bounded opcode scan, before anything is built** (:func:`check_plain`). Every opcode must
   be one that builds plain data (dict, list, tuple, str, bytes, int, float, bool, None) or moves
   it around (memo, mark, frame). Globals (``GLOBAL``, ``STACK_GLOBAL``), calls (``REDUCE``,
   ``BUILD``, ``INST``, ``OBJ``, ``NEWOBJ*``), the copyreg extension registry (``EXT1/2/4``: the C
   unpickler's extension cache can hand back a callable without asking ``find_class``),
   persistent ids and out-of-band buffers are refused. The scan also bounds **every size an
   opcode can ask the unpickler for**, because CPython's unpickler trusts them:

   - memo indices (``PUT``/``BINPUT``/``LONG_BINPUT``): CPython grows the memo to twice the
     index, so ``LONG_BINPUT 2**28`` in a 9-byte body costs 4 GiB. A real pickler numbers memo
     entries 0, 1, 2, ...; here an index may not exceed the number of opcodes seen so far, so
     the memo is at most ``max_opcodes`` slots. ``GET`` must name an index that was put.
   - counted lengths (``BINBYTES8``, ``BINUNICODE8``, ``BINSTRING``, ``FRAME``, ...): never more
     than the bytes left in the body (CPython allocates the buffer before reading into it).
   - numbers written as text: ``INT``/``LONG`` at most :data:`MAX_INT_DIGITS` digits, ``FLOAT``
     at most :data:`MAX_FLOAT_CHARS` characters (``repr`` of any float is under 25), and
     ``LONG4`` at most :data:`MAX_LONG_BYTES` bytes.
   - the walk itself: at most ``max_opcodes`` opcodes, each read in time linear in its bytes.

   So the memory a body can cost is a small multiple of its length, whatever it claims.
2. **A restricted unpickler as a second wall:** ``find_class`` and ``persistent_load`` always
   refuse, so even an opcode the scan missed cannot reach a global.

:func:`safe_loads` is the only function in firm-lite that turns network bytes into Python
objects; :func:`dumps_plain` writes the (plain-data) response the reference clients expect.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import struct
from typing import Any

# Opcodes that only build or shuffle plain data. Everything else is refused by name.
PLAIN_OPCODES: frozenset[str] = frozenset({
    # framing and stack/memo bookkeeping
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP",
    "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET", "BINGET", "LONG_BINGET",
    # None / bool / int / float
    "NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
    "FLOAT", "BINFLOAT",
    # str (protocol 0-2 strings decode to str) and bytes
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
    "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
    # containers
    "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS", "EMPTY_LIST", "LIST", "APPEND", "APPENDS",
    "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
})
PLAIN_TYPES = "dict, list, tuple, str, bytes, int, float, bool, None"

MAX_INT_DIGITS = 4300  # Python's own int/str conversion limit (sys.int_info.default_max_str_digits)
MAX_LONG_BYTES = 2048  # LONG4: ints up to 2**16384, far beyond any reward request field
MAX_FLOAT_CHARS = 64  # FLOAT text: repr() of any float is at most 24 characters
MAX_MEMO_TEXT = 24  # PUT/GET text index: 20 digits is already more than any memo may hold
MAX_NAME_CHARS = 1000  # GLOBAL/INST/PERSID names are only read to say what was refused

# Line-terminated arguments: the most characters each may have (None: up to the end of the body).
_LINE_CAPS: dict[str, int | None] = {
    "INT": MAX_INT_DIGITS + 2, "LONG": MAX_INT_DIGITS + 3, "FLOAT": MAX_FLOAT_CHARS, "PUT": MAX_MEMO_TEXT,
    "GET": MAX_MEMO_TEXT, "STRING": None, "UNICODE": None,
}
# Length-prefixed arguments: struct format of the prefix.
_PREFIX = {pickletools.TAKEN_FROM_ARGUMENT1: "<B", pickletools.TAKEN_FROM_ARGUMENT4: "<i",
           pickletools.TAKEN_FROM_ARGUMENT4U: "<I", pickletools.TAKEN_FROM_ARGUMENT8U: "<Q"}
_FIXED = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}  # fixed-width unsigned arguments read as numbers
_SIGNED = frozenset({"BININT", "EXT4"})
_STRING_OPCODES = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING",
                             "BINSTRING", "SHORT_BINSTRING"})
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MEMO_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_CODE2OP = {op.code.encode("latin-1"): op for op in pickletools.opcodes}


class UnsafePickleError(ValueError):
    """A pickle body that is not plain data (or not a pickle at all); ``str`` is the client message."""


class _PlainDataUnpickler(pickle.Unpickler):
    """Second wall behind the opcode scan: no class, function or persistent id is ever resolved."""

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(f"pickle body refused: it references {module}.{name}; only plain data "
                                f"({PLAIN_TYPES}) is accepted")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("pickle body refused: it uses persistent ids; only plain data is accepted")


def _describe_refused(name: str, arg: Any, recent_strings: list[str]) -> str:
    target = None
    if name == "GLOBAL" and isinstance(arg, str):
        target = arg.replace(" ", ".")
    elif name == "STACK_GLOBAL" and len(recent_strings) >= 2:
        target = f"{recent_strings[-2]}.{recent_strings[-1]}"
    if target == "_codecs.encode":
        return ("it references the global _codecs.encode (bytes pickled with protocol 0-2); pickle with "
                "protocol 3 or higher (Python's default)")
    if target:
        return f"it references the global {target}"
    if name in ("REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ", "INST", "BUILD"):
        return f"it calls or builds an object ({name})"
    if name.startswith("EXT"):
        return f"it uses the copyreg extension registry ({name})"
    return f"it uses the {name} opcode"


def _invalid(why: str) -> UnsafePickleError:
    return UnsafePickleError(f"request body is not a valid pickle ({why})")


class _Scan:
    """One pass over the opcodes of ``data``; every read is checked against the bytes left."""

    def __init__(self, data: bytes, max_opcodes: int) -> None:
        self.data = data
        self.view = memoryview(data)
        self.pos = 0
        self.max_opcodes = max_opcodes
        self.count = 0
        self.memo: set[int] = set()
        self.recent_strings: list[str] = []

    def _take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > len(self.data) - self.pos:
            left = len(self.data) - self.pos
            raise _invalid(f"{what} asks for {n:,} bytes at offset {self.pos}, {left:,} are left")
        out = self.view[self.pos:self.pos + n]
        self.pos += n
        return out

    def _line(self, name: str, cap: int | None) -> bytes:
        stop = len(self.data) if cap is None else min(len(self.data), self.pos + cap + 1)
        end = self.data.find(b"\n", self.pos, stop)
        if end < 0:
            if stop < len(self.data):
                raise _invalid(f"{name} argument at offset {self.pos} is longer than {cap:,} characters")
            raise _invalid(f"{name} argument at offset {self.pos} has no end of line")
        line = self.data[self.pos:end]
        self.pos = end + 1
        return line

    def _argument(self, op: pickletools.OpcodeInfo) -> Any:
        """Read (and bound) the argument of ``op``; small values are returned, large ones skipped."""
        arg = op.arg
        if arg is None:
            return None
        name = op.name
        if arg.n == pickletools.UP_TO_NEWLINE:
            if name in ("GLOBAL", "INST"):
                return " ".join(self._line(name, MAX_NAME_CHARS).decode("latin-1") for _ in range(2))
            line = self._line(name, _LINE_CAPS.get(name, MAX_NAME_CHARS))
            if name in ("PUT", "GET"):
                if not line.isdigit():
                    raise _invalid(f"{name} index {line[:MAX_MEMO_TEXT]!r} is not a number")
                return int(line)
            return line.decode("latin-1") if len(line) <= 200 else None
        if arg.n in _PREFIX:
            fmt = _PREFIX[arg.n]
            length = struct.unpack(fmt, self._take(struct.calcsize(fmt), name))[0]
            if name == "LONG4" and length > MAX_LONG_BYTES:
                raise UnsafePickleError(f"pickle body refused: an integer of {length:,} bytes (LONG4); the "
                                        f"limit is {MAX_LONG_BYTES:,}")
            value = self._take(length, name)
            if name in _STRING_OPCODES and length <= 200:
                return bytes(value).decode("utf-8", "replace")
            return None
        if arg.n in _FIXED:
            fmt = _FIXED[arg.n].lower() if name in _SIGNED else _FIXED[arg.n]
            return struct.unpack(fmt, self._take(arg.n, name))[0]
        self._take(arg.n, name)  # BINFLOAT: 8 bytes, nothing to bound
        return None

    def _check_memo(self, name: str, index: int) -> None:
        if name in _MEMO_PUTS:
            if index > self.count:
                raise UnsafePickleError(f"pickle body refused: memo index {index:,} ({name}) after only "
                                        f"{self.count:,} opcodes; a pickler numbers its memo from 0")
            self.memo.add(index)
        elif name in _MEMO_GETS and index not in self.memo:
            raise _invalid(f"{name} {index:,} reads a memo entry that was never stored")

    def run(self) -> None:
        while True:
            if self.pos >= len(self.data):
                raise _invalid("it ends before the STOP opcode")
            code = self.data[self.pos:self.pos + 1]
            op = _CODE2OP.get(code)
            if op is None:
                raise _invalid(f"unknown opcode {code!r} at offset {self.pos}")
            self.pos += 1
            self.count += 1
            if self.count > self.max_opcodes:
                raise UnsafePickleError(f"pickle body refused: more than {self.max_opcodes:,} opcodes "
                                        "(too many items for one request)")
            arg = self._argument(op)
            if op.name not in PLAIN_OPCODES:
                why = _describe_refused(op.name, arg, self.recent_strings)
                raise UnsafePickleError(f"pickle body refused: {why}; only plain data ({PLAIN_TYPES}) "
                                        "is accepted")
            if op.name == "FRAME" and arg > len(self.data) - self.pos:
                raise _invalid(f"FRAME of {arg:,} bytes at offset {self.pos}, "
                               f"{len(self.data) - self.pos:,} are left")
            if op.name in _MEMO_PUTS or op.name in _MEMO_GETS:
                self._check_memo(op.name, arg)
            elif op.name == "MEMOIZE":
                self.memo.add(len(self.memo))
            elif op.name in _STRING_OPCODES:
                self.recent_strings = [*self.recent_strings[-1:], (arg or "")[:80]]
            elif op.name == "STOP":
                return


def check_plain(data: bytes, max_opcodes: int = 100_000) -> None:
    """Raise :class:`UnsafePickleError` unless ``data`` is one pickle of plain data only, every size
    in it bounded (see the module docstring)."""
    _Scan(bytes(data), max_opcodes).run()


def safe_loads(data: bytes, max_opcodes: int = 100_000) -> Any:
    """Decode a pickled request body that may only hold plain data; never runs code from it."""
    if not data:
        raise UnsafePickleError("request body is empty: expected a pickled dict")
    check_plain(data, max_opcodes)
    try:
        return _PlainDataUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, ValueError, EOFError, UnicodeDecodeError, IndexError, KeyError,
            TypeError, AttributeError, OverflowError, RecursionError) as exc:
        raise UnsafePickleError(f"request body is not a valid pickle ({type(exc).__name__}: {exc})") from None


def dumps_plain(obj: Any) -> bytes:
    """Pickle a response made of plain data (protocol 4: readable by every Python >= 3.4)."""
    return pickle.dumps(obj, protocol=4)
