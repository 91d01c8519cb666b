"""Variant registry: the quantized backends are registered with the common load signature,
resolve by name, ``backend:DIR`` or folder, and a missing extra is a one-line error."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from firm_lite.errors import UserError
from firm_lite.variants.registry import LoadRequest, registry, resolve_variant


def test_quantized_backends_are_registered() -> None:
    specs = registry()
    assert {"int8", "nf4", "gptq", "bnb"} <= set(specs)
    assert not specs["int8"].from_folder and not specs["nf4"].from_folder
    assert specs["gptq"].from_folder and specs["bnb"].from_folder
    assert (specs["int8"].extra, specs["gptq"].extra) == ("bnb", "gptq")
    assert specs["bf16"].accuracy_rank < specs["int8"].accuracy_rank < specs["nf4"].accuracy_rank
    for name in ("int8", "nf4", "gptq", "bnb"):
        params = list(inspect.signature(specs[name].load).parameters)
        assert len(params) == 1, name  # load(request: LoadRequest), like every backend


def test_load_time_variants_are_defined_by_the_shipped_recipes() -> None:
    from firm_lite.recipes import LOAD_TIME_RECIPES, load_recipe
    from firm_lite.variants.bnb import bnb_config

    nf4 = bnb_config(load_recipe(LOAD_TIME_RECIPES["nf4"]), "bfloat16")
    assert nf4.load_in_4bit and nf4.bnb_4bit_quant_type == "nf4" and nf4.bnb_4bit_use_double_quant
    assert {"model.visual", "lm_head"} <= set(nf4.llm_int8_skip_modules)
    int8 = bnb_config(load_recipe(LOAD_TIME_RECIPES["int8"]), "bfloat16")
    assert int8.load_in_8bit and {"model.visual", "lm_head"} <= set(int8.llm_int8_skip_modules)


def test_backend_prefix_and_folder_resolution(tmp_path: Path) -> None:
    spec, folder = resolve_variant(f"gptq:{tmp_path}")
    assert (spec.name, folder) == ("gptq", tmp_path)
    assert resolve_variant("nf4") == (registry()["nf4"], None)
    with pytest.raises(UserError, match="not a variant name"):
        resolve_variant("gptq-w5")


def test_a_folder_without_manifest_loads_only_by_explicit_backend_with_a_warning(tmp_path: Path,
                                                                                   caplog) -> None:
    from firm_lite.artifact import check_exported_folder

    assert check_exported_folder(tmp_path, "gptq") is None
    assert "not exported by firm-lite" in caplog.text
    with pytest.raises(UserError, match="no such folder"):
        check_exported_folder(tmp_path / "absent", "gptq")


@pytest.mark.parametrize("backend, package, extra", [("gptq", "gptqmodel", "gptq"), ("bnb", "bitsandbytes", "bnb")])
def test_a_missing_extra_is_one_line_naming_the_install(monkeypatch, tmp_path: Path, backend: str, package: str,
                                                        extra: str) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    spec = registry()[backend]
    request = LoadRequest(source=None, device=None, dtype=None, folder=tmp_path)
    with pytest.raises(UserError) as err:
        spec.load(request)
    assert str(err.value) == f'{package} is not installed: pip install "firm-lite[{extra}]"'


def test_auto_on_the_tiny_critic_says_what_it_picked(caplog) -> None:
    from firm_lite.critic import load_critic

    caplog.set_level("INFO", logger="firm_lite")  # the choice is an INFO line (the CLI shows INFO)
    critic = load_critic(model="tiny", variant="auto", device="cpu")
    assert critic.variant == "fp32"
    assert critic.provenance["variant_choice"].startswith("variant auto -> fp32: needs ~")
    assert "variant auto -> fp32" in caplog.text


def test_help_does_not_import_heavy_libraries() -> None:
    code = ("import sys\nfrom firm_lite.cli import main\n"
            "for args in (['--help'], ['export', '--help'], ['export', 'gptq', '--help'], ['plan', '--help']):\n"
            "    try:\n        main(args, standalone_mode=False)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'gptqmodel', 'bitsandbytes', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
