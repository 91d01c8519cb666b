"""Package data: the FIRM-Edit prompts (verbatim), the bundled demo pair, the shipped recipes."""

from __future__ import annotations

from pathlib import Path

from firm_lite.records import EditPair


def demo_pair() -> EditPair:
    """The bundled demo edit (a real photo and its exact greyscale version)."""
    import json
    from importlib import resources

    folder = resources.files("firm_lite.data") / "demo"
    meta = json.loads((folder / "demo.json").read_text("utf-8"))
    return EditPair(meta["id"], Path(str(folder / meta["source"])), Path(str(folder / meta["edited"])),
                    meta["instruction"])
