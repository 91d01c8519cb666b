"""Reading the reference protocol's pickled request bodies without ever running code from them.

The reference reward server calls ``pickle.loads`` on whatever arrives, so anyone who can reach
its port can run code there (a ``__reduce__`` payload names ``os.system`` and pickle calls it).
Trainer clients still send pickles, so this module owns the one way the server reads them:

1. **Opcode allowlist, before anything is built.** :func:`pickletools.genops` walks the stream
   and every opcode must be one that builds plain data (dict, list, tuple, str, bytes, int,
   float, bool, None) or moves it around (memo, mark, frame). Globals (``GLOBAL``,
   ``STACK_GLOBAL``), calls (``REDUCE``, ``BUILD``, ``INST``, ``OBJ``, ``NEWOBJ*``), the
   copyreg extension registry (``EXT1/2/4``: the C unpickler's extension cache can hand back a
   callable without asking ``find_class``), persistent ids and out-of-band buffers are refused.
   The walk is capped at ``max_opcodes`` so a body of a million one-byte opcodes costs little.
2. **A restricted unpickler as a second wall:** ``find_class`` and ``persistent_load`` always
   refuse, so even an opcode the allowlist missed cannot reach a global.

:func:`safe_loads` is the only function in firm-lite that turns network bytes into Python
objects; :func:`dumps_plain` writes the (plain-data) response the reference clients expect.
"""

from __future__ import annotations

import io
import pickle
import pickletools
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
_STRING_OPCODES = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING",
                             "BINSTRING", "SHORT_BINSTRING"})


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


def check_plain(data: bytes, max_opcodes: int = 100_000) -> None:
    """Raise :class:`UnsafePickleError` unless ``data`` is one pickle of plain data only."""
    recent_strings: list[str] = []
    count = 0
    try:
        for opcode, arg, _pos in pickletools.genops(io.BytesIO(data)):
            count += 1
            if count > max_opcodes:
                raise UnsafePickleError(f"pickle body refused: more than {max_opcodes:,} opcodes "
                                        "(too many items for one request)")
            if opcode.name not in PLAIN_OPCODES:
                why = _describe_refused(opcode.name, arg, recent_strings)
                raise UnsafePickleError(f"pickle body refused: {why}; only plain data ({PLAIN_TYPES}) "
                                        "is accepted")
            if opcode.name in _STRING_OPCODES and isinstance(arg, str):
                recent_strings = [*recent_strings[-1:], arg[:80]]
    except UnsafePickleError:
        raise
    except (ValueError, EOFError, UnicodeDecodeError, pickle.UnpicklingError) as exc:
        raise UnsafePickleError(f"request body is not a valid pickle ({exc})") from None


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
            TypeError, RecursionError) as exc:
        raise UnsafePickleError(f"request body is not a valid pickle ({type(exc).__name__}: {exc})") from None


def dumps_plain(obj: Any) -> bytes:
    """Pickle a response made of plain data (protocol 4: readable by every Python >= 3.4)."""
    return pickle.dumps(obj, protocol=4)
