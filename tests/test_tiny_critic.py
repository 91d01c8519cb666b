"""The shipped tiny critic loads like the real one, renders the real prompt and answers in format."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from firm_lite.dev.editset.synthetic import synthetic_pair
from firm_lite.dev.examples import EditExample, generate_answer
from firm_lite.dev.tiny_architecture import check_tokenizer
from firm_lite.dev.tiny_critic import PROVENANCE_FILE, TINY_CRITIC_DIR, build_tiny_critic
from firm_lite.parsing import parse_answer
from firm_lite.prompts import MODES, build_messages, render_prompt

IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def processor():
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(TINY_CRITIC_DIR)


@pytest.fixture(scope="module")
def model():
    from transformers import Qwen3VLForConditionalGeneration

    return Qwen3VLForConditionalGeneration.from_pretrained(TINY_CRITIC_DIR).eval()


@pytest.fixture(scope="module")
def pair():
    source, edited, _, _ = synthetic_pair(np.random.default_rng(2024))
    return source, edited


def test_shipped_folder_loads_as_qwen3_vl(processor, model):
    assert type(processor).__name__ == "Qwen3VLProcessor"
    assert model.config.model_type == "qwen3_vl"
    assert not model.config.tie_word_embeddings
    tok = processor.tokenizer
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert model.config.text_config.vocab_size == len(tok)
    assert model.generation_config.do_sample is False
    assert tok.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id
    provenance = json.loads((TINY_CRITIC_DIR / PROVENANCE_FILE).read_text("utf-8"))
    weights = (TINY_CRITIC_DIR / "model.safetensors").read_bytes()
    assert provenance["model_sha256"] == hashlib.sha256(weights).hexdigest()


def test_shipped_critic_is_what_the_default_recipe_builds():
    """``python -m firm_lite.dev.tiny_critic`` must rebuild the shipped folder: its recorded recipe and
    sizes are the defaults (recipe keys added later must default to what the shipped run did)."""
    from dataclasses import asdict

    from firm_lite.dev.tiny_critic import TinyCriticDims, TrainingRecipe

    provenance = json.loads((TINY_CRITIC_DIR / PROVENANCE_FILE).read_text("utf-8"))
    recipe, defaults = provenance["recipe"], json.loads(json.dumps(asdict(TrainingRecipe())))
    if provenance["builder_version"] == "3":  # what builder 3 did without a key for it
        recipe = {"vision_steps": 0, "describe_lr": recipe["lr"], "describe_every": 0, "self_seen": False,
                  "frozen_seer": False, "score_loss": "ce", **recipe}
    assert {k: defaults[k] for k in recipe} == recipe
    assert set(defaults) - set(recipe) <= {"vision_batch_size", "vision_lr"}  # unused without vision_steps
    assert provenance["dims"] == json.loads(json.dumps(asdict(TinyCriticDims())))


def test_digits_are_single_tokens_in_any_context(processor):
    tok = processor.tokenizer
    check_tokenizer(tok)  # raises on a merged digit or a split special token
    for digit in "12345":
        (digit_id,) = tok.encode(digit, add_special_tokens=False)
        assert digit_id in tok.encode(f'"score" : [{digit}]', add_special_tokens=False)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


@pytest.mark.parametrize("mode", MODES)
def test_chat_template_matches_qwen3_vl(processor, pair, mode):
    instruction = "Make the sky purple."
    text = processor.apply_chat_template(build_messages(mode, instruction, *pair),
                                         tokenize=False, add_generation_prompt=True)
    expected = (f"<|im_start|>user\n{IMAGE}{IMAGE}{render_prompt(mode, instruction)}"
                "<|im_end|>\n<|im_start|>assistant\n")
    assert text == expected


def test_per_call_pixel_budget_overrides_default(processor, pair):
    text = processor.apply_chat_template(build_messages("execution", "x", *pair),
                                         tokenize=False, add_generation_prompt=True)
    small = processor(text=[text], images=[list(pair)], return_tensors="pt")
    big = processor(text=[text], images=[list(pair)], return_tensors="pt",
                    images_kwargs={"size": {"shortest_edge": 256 * 256,
                                            "longest_edge": 256 * 256}})
    assert int(big["image_grid_thw"].prod(-1).sum()) > int(small["image_grid_thw"].prod(-1).sum())
    assert big["input_ids"].shape[1] > small["input_ids"].shape[1]


def test_greedy_answer_parses_as_firm_json(processor, model, pair):
    example = EditExample("execution", "Add a red hat on the left.", *pair, score=0, answer="")
    text = generate_answer(model, processor, example, max_new_tokens=256)
    blob = json.loads(text[text.index("{"):text.rindex("}") + 1])
    assert set(blob) == {"reasoning", "score"}
    parsed = parse_answer(text)
    assert parsed.parse_ok and parsed.score in range(1, 6)


@pytest.mark.slow
@pytest.mark.requires_extra("calib")
@pytest.mark.parametrize("settings", [[], ["vision_steps=1000", "describe_every=1", "self_seen=true"],
                                      ["describe_every=1", "self_seen=true", "frozen_seer=true"]],
                         ids=["default", "all-phases", "frozen-seer"])
def test_same_seed_builds_identical_weights(tmp_path, settings):
    from firm_lite.dev.tiny_critic import TrainingRecipe, override

    recipe = override(TrainingRecipe, settings)
    shas = [build_tiny_critic(tmp_path / name, seed=0, steps=8, progress=False, recipe=recipe,
                              check_pairs_per_mode=1)["provenance"]["model_sha256"]
            for name in ("a", "b")]
    assert shas[0] == shas[1]


@pytest.mark.slow
@pytest.mark.requires_extra("calib")
def test_full_rebuild_answers_in_format(tmp_path):
    summary = build_tiny_critic(tmp_path / "critic", seed=0, progress=False)
    assert summary["parse_rate"] >= 0.9
    assert summary["total_bytes"] < 5_000_000


@pytest.mark.requires_extra("calib")
def test_a_quick_build_writes_the_shipped_layout_and_its_check_scores_through_the_runtime(tmp_path):
    """Smoke of the builder in the default run (the default recipe, every phase a step or so; the
    recipe options and the full rebuild are ``slow``): the folder it writes has the shipped critic's
    tokenizer, chat template and configs (only the weights differ), a provenance that names its
    weights, and its check loaded the folder through ``load_critic`` and scored a held-out pair."""
    folder = tmp_path / "critic"
    summary = build_tiny_critic(folder, seed=0, steps=2, progress=False, check_pairs_per_mode=1)
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "config.json",
                 "generation_config.json", "chat_template.jinja"):
        built, shipped = ((f / name).read_text("utf-8") for f in (folder, TINY_CRITIC_DIR))
        assert (built == shipped) if name.endswith(".jinja") else (json.loads(built) == json.loads(shipped)), name
    provenance = json.loads((folder / PROVENANCE_FILE).read_text("utf-8"))
    assert provenance["model_sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    recipe = provenance["recipe"]
    assert recipe["describe_steps"] + recipe["steps"] == 2 and provenance["comparison_heads"]
    assert provenance["data"]["eval_pairs"] == 1 and len(summary["records"]) == 1
    assert all(summary["records"][0][mode]["raw"] for mode in MODES)  # answered (2 steps: not in format yet)


def test_recipe_and_dims_overrides_are_typed_and_checked(capsys):
    from firm_lite.dev.tiny_critic import TinyCriticDims, TrainingRecipe, main, override

    recipe = override(TrainingRecipe, ["vision_steps=1000", "self_seen=true", "lr=1e-3"])
    assert (recipe.vision_steps, recipe.self_seen, recipe.lr) == (1000, True, 1e-3)
    assert recipe.steps == TrainingRecipe().steps
    assert override(TinyCriticDims, ["mrope_section=8,4,4"]).mrope_section == (8, 4, 4)
    assert override(TrainingRecipe, []) == TrainingRecipe()
    for bad in (["nope=1"], ["vision_steps"], ["vision_steps=1.5"], ["self_seen=yes"]):
        with pytest.raises(ValueError, match=bad[0].split("=")[0]):
            override(TrainingRecipe, bad)
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", "/nonexistent/never-built", "--dim", "rope_theta=fast"])
    assert exit_info.value.code == 2 and "rope_theta=fast" in capsys.readouterr().err


@pytest.mark.slow  # a training run per case, for dev-only recipe options (self_seen, frozen_seer)
@pytest.mark.requires_extra("calib")
@pytest.mark.parametrize("frozen", [False, True], ids=["live-seer", "frozen-seer"])
def test_self_seen_asks_the_trained_or_a_frozen_critic(tmp_path, monkeypatch, frozen):
    """``self_seen`` asks the critic in training what it sees (its weights move between the
    questions); with ``frozen_seer`` a copy made before the FIRM phase answers (same weights every
    time, never the model being trained)."""
    import firm_lite.dev.editset.training as training
    from firm_lite.dev.tiny_critic import TrainingRecipe

    asked: list[tuple[int, float]] = []
    real_seen_by = training.seen_by

    def spy(model, processor, pairs):
        asked.append((id(model), float(sum(p.detach().double().sum() for p in model.parameters()))))
        return real_seen_by(model, processor, pairs)

    monkeypatch.setattr(training, "seen_by", spy)
    recipe = TrainingRecipe(self_seen=True, frozen_seer=frozen)
    build_tiny_critic(tmp_path / "critic", seed=0, steps=10, progress=False, recipe=recipe, check_pairs_per_mode=1)
    assert len(asked) >= 3
    assert (len({a[0] for a in asked}) == 1) and (len({a[1] for a in asked}) == 1) == frozen


def test_recipe_values_are_checked_before_training(tmp_path, capsys):
    from firm_lite.dev.tiny_critic import TrainingRecipe, main

    with pytest.raises(ValueError, match="self_seen"):
        build_tiny_critic(tmp_path / "x", steps=2, recipe=TrainingRecipe(frozen_seer=True), progress=False)
    for setting, word in (("frozen_seer=true", "self_seen"), ("score_loss=mae", "expected_error")):
        with pytest.raises(SystemExit) as exit_info:
            main(["--out", str(tmp_path / "y"), "--set", setting])
        assert exit_info.value.code == 2 and word in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.slow  # a training run for dev-only recipe options (score_loss, describe_every)
@pytest.mark.requires_extra("calib")
def test_expected_error_score_loss_trains_through_describe_batches_mixed_in(tmp_path):
    """Describe batches carry no score digit; the expected-error loss must leave them to cross
    entropy (a build with both used to stop at its first describe batch)."""
    from firm_lite.dev.tiny_critic import TrainingRecipe

    recipe = TrainingRecipe(describe_every=1, score_loss="expected_error")
    summary = build_tiny_critic(tmp_path / "critic", seed=0, steps=8, progress=False, recipe=recipe,
                                check_pairs_per_mode=1)
    assert math.isfinite(summary["final_loss"]) and summary["provenance"]["recipe"]["score_loss"] == "expected_error"


@pytest.mark.requires_extra("calib")
def test_shipped_critic_beats_a_constant_on_held_out_execution_as_recorded():
    """The shipped weights, scored through the real path on the held-out split, give the MAE its
    provenance records (one thread, as the build's check ran), and that MAE beats the constant
    predictor on execution: its execution scores depend on the images."""
    import torch

    from firm_lite.dev.editset.training import evaluate_critic

    provenance = json.loads((TINY_CRITIC_DIR / PROVENANCE_FILE).read_text("utf-8"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = evaluate_critic(TINY_CRITIC_DIR)["report"]
    finally:
        torch.set_num_threads(threads)
    for mode in MODES:
        assert report[mode]["mae"] == pytest.approx(provenance["heldout"][mode]["mae"])
        recorded = provenance["heldout"][mode]["constant_baseline_mae"]
        assert report[mode]["constant_baseline_mae"] == pytest.approx(recorded)
    execution = report["execution"]
    assert execution["mae"] < execution["constant_baseline_mae"] - 0.25
    assert execution["expected_spread"]["std"] > 0.5
