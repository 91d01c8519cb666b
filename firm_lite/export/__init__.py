"""Exported variants: quantize the critic once, write a standard folder with its provenance.

``export_gptq`` (gptqmodel) and ``export_bnb`` (bitsandbytes) are what ``firm-lite export gptq``
/ ``export bnb`` run; recipes (:mod:`.recipes`) say what is quantized and kept; every folder
carries ``firm_lite_variant.json`` (the format is :mod:`firm_lite.artifact`, shared with the
backends that load folders; :mod:`.provenance` writes it). Importing this package imports
neither torch nor a quantization library.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_bnb", "export_gptq"]


def export_gptq(**kwargs: Any) -> Any:
    """See :func:`firm_lite.export.gptq.export_gptq`."""
    from firm_lite.export.gptq import export_gptq as run

    return run(**kwargs)


def export_bnb(**kwargs: Any) -> Any:
    """See :func:`firm_lite.export.bnb.export_bnb`."""
    from firm_lite.export.bnb import export_bnb as run

    return run(**kwargs)
