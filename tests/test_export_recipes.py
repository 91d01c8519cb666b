"""Recipes: every shipped recipe names what it quantizes and keeps; bad recipes are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from firm_lite.errors import UserError
from firm_lite.recipes import (
    DEFAULT_RECIPES,
    MODULE_GROUPS,
    load_recipe,
    recipe_for,
    shipped_recipes,
)

GPTQ_OK = """
name = "mine"
backend = "gptq"
bits = 4
group_size = 64
quantize = ["decoder"]
keep = ["vision", "embeddings", "lm_head"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(text, "utf-8")
    return path


def test_every_default_recipe_ships_and_keeps_vision_embeddings_and_lm_head() -> None:
    shipped = shipped_recipes()
    assert set(DEFAULT_RECIPES.values()) <= set(shipped)
    for name in DEFAULT_RECIPES.values():
        recipe = load_recipe(name)
        assert recipe.quantize == ("decoder",), name
        assert set(recipe.keep) == {"vision", "embeddings", "lm_head"}, name
        assert recipe.sha256 and recipe.source.endswith(f"{name}.toml")


def test_defaults_by_bits() -> None:
    assert recipe_for("gptq", None, 4).name == "gptq-w4-g128"
    assert recipe_for("gptq", None, 8).name == "gptq-w8"
    nf4 = recipe_for("bnb", None, 4)
    assert (nf4.name, nf4.quant_type, nf4.double_quant) == ("bnb-nf4", "nf4", True)
    assert recipe_for("bnb", None, 8).name == "bnb-int8"
    with pytest.raises(UserError, match="export bnb"):
        recipe_for("gptq", "bnb-nf4", None)


def test_a_recipe_file_by_path(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, GPTQ_OK))
    assert (recipe.name, recipe.group_size, recipe.act_order, recipe.sym) == ("mine", 64, False, True)


@pytest.mark.parametrize("extra, message", [
    ("grup_size = 32\n", "unknown key"),
    ("double_quant = true\n", "a bnb key"),
])
def test_unknown_keys_are_refused(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_recipe(write(tmp_path, GPTQ_OK + extra))


@pytest.mark.parametrize("old, new, message", [
    ('keep = ["vision", "embeddings", "lm_head"]', 'keep = ["vision", "lm_head"]', "embeddings"),
    ('quantize = ["decoder"]\nkeep = ["vision", ', 'quantize = ["decoder", "vision"]\nkeep = [', "cannot quantize"),
    ("bits = 4", "bits = 3", "bits must be 4 or 8"),
    ("bits = 4", 'bits = "4"', "bits must be int"),
    ("group_size = 64", "group_size = 0", "group_size"),
    ('keep = ["vision", "embeddings", "lm_head"]', 'keep = ["vision", "embeddings", "lm_head", "eyes"]', "eyes"),
])
def test_invalid_recipes_are_refused_with_the_reason(tmp_path: Path, old: str, new: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_recipe(write(tmp_path, GPTQ_OK.replace(old, new)))


def test_broken_toml_and_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not valid TOML"):
        load_recipe(write(tmp_path, "name = \n"))
    with pytest.raises(UserError, match="not a shipped recipe"):
        load_recipe("gptq-w3")


def test_bnb_may_quantize_vision_as_an_explicit_choice(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from firm_lite.recipes import warn_if_vision

    recipe = load_recipe(write(tmp_path, 'name = "v"\nbackend = "bnb"\nbits = 4\n'
                                         'quantize = ["decoder", "vision"]\nkeep = ["embeddings", "lm_head"]\n'))
    assert recipe.quantizes_vision and recipe.double_quant
    warn_if_vision(recipe)
    assert "quantizes the vision tower" in caplog.text


def test_overrides_are_validated_and_reported() -> None:
    recipe, changed = load_recipe("gptq-w4-g128").with_overrides(bits=8, group_size=None, act_order=True)
    assert (recipe.bits, recipe.act_order, changed) == (8, True, {"bits": 8, "act_order": True})
    with pytest.raises(UserError, match="cannot quantize"):
        load_recipe("gptq-w4-g128").with_overrides(quantize=("decoder", "vision"))


def test_module_groups_cover_the_qwen3_vl_layout() -> None:
    assert MODULE_GROUPS == {"decoder": "model.language_model.layers", "vision": "model.visual",
                             "embeddings": "model.language_model.embed_tokens", "lm_head": "lm_head"}
