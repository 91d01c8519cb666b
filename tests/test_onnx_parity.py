"""ONNX export + ONNX Runtime backend against PyTorch, on the tiny critic (CPU, fp32).

The export runs once for the module (through ``firm-lite export onnx``); every test reuses it.
Comparisons report the worst step/row, not only pass/fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

LOGIT_TOLERANCE = 1e-4
VISION_RELATIVE_TOLERANCE = 1e-5
HELDOUT = Path(__file__).resolve().parents[1] / "calibration" / "editset-heldout.jsonl"

pytestmark = pytest.mark.requires_extra("onnx")


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory) -> Path:
    from firm_lite.cli import main

    out = tmp_path_factory.mktemp("onnx") / "tiny-onnx"
    result = CliRunner().invoke(main, ["export", "onnx", "--model", "tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def torch_model():
    import torch
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    from firm_lite.sources import resolve_model

    path = resolve_model("tiny").path
    return (Qwen3VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval(),
            AutoProcessor.from_pretrained(path))


@pytest.fixture(scope="module")
def graphs(onnx_dir):
    from firm_lite.artifact import read_variant_manifest
    from firm_lite.onnx.layout import GraphLayout
    from firm_lite.onnx.runtime import OrtGraphs

    layout = GraphLayout.from_record(read_variant_manifest(onnx_dir)["onnx"]["layout"])
    return OrtGraphs(onnx_dir, layout, device="cpu", threads=2)


def _batch(processor):
    """Two rows, left-padded; each row is a pair of two differently sized images."""
    rng = np.random.default_rng(3)
    sizes = [(100, 70), (64, 128), (128, 64), (90, 90)]
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    texts = [processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": t}]}],
        tokenize=False, add_generation_prompt=True)
        for t in ("make it red", "remove the second car from the left side of the picture, keep the rest")]
    processor.tokenizer.padding_side = "left"
    return processor(text=texts, images=images, return_tensors="pt", padding=True)


def test_prefill_and_decode_logits_match_pytorch(torch_model, graphs):
    import torch

    model, processor = torch_model
    inputs = _batch(processor)
    grids = inputs["image_grid_thw"].tolist()
    assert grids[0] != grids[1] and grids[2] != grids[3], "each pair must mix image sizes"
    assert (inputs["attention_mask"][0] == 0).any(), "row 0 must be left-padded"
    with torch.no_grad():  # min_new_tokens only shapes the chosen tokens; raw logits are untouched
        ref = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                             output_logits=True, return_dict_in_generate=True,
                             pad_token_id=processor.tokenizer.pad_token_id)
    arrays = {k: v.numpy() for k, v in inputs.items()}
    logits, state = graphs.prefill(arrays["input_ids"], arrays["attention_mask"], arrays["pixel_values"],
                                   arrays["image_grid_thw"], arrays.get("mm_token_type_ids"))
    steps = [logits]
    generated = ref.sequences[:, inputs["input_ids"].shape[1]:].numpy()
    for k in range(3):
        logits, state = graphs.decode(generated[:, k], state)
        steps.append(logits)
    diffs = np.array([[np.abs(ours[row] - theirs[row].numpy()).max() for row in range(2)]
                      for ours, theirs in zip(steps, ref.logits, strict=False)])
    step, row = np.unravel_index(diffs.argmax(), diffs.shape)
    assert diffs.max() <= LOGIT_TOLERANCE, (f"max |logit diff| {diffs.max():.2e} at step {step} "
                                            f"({'prefill' if step == 0 else 'decode'}) row {row}; all: {diffs}")


def test_io_binding_keeps_the_kv_cache_in_ort_values_with_the_same_logits(torch_model, graphs, onnx_dir):
    """The CUDA decode path (KV cache bound to device memory between steps, only logits to the
    host) run with ONNX Runtime's CPU provider: same logits as the numpy path, and the cache is
    never a numpy array between steps."""
    from onnxruntime import OrtValue

    from firm_lite.onnx.generate import OrtGenerationModel
    from firm_lite.onnx.runtime import OrtGraphs

    _, processor = torch_model
    bound = OrtGraphs(onnx_dir, graphs.layout, device="cpu", threads=2, io_binding=True)
    assert bound.provenance["kv_cache"] == "cpu:0" and graphs.provenance["kv_cache"] == "host (numpy)"
    arrays = {k: v.numpy() for k, v in _batch(processor).items()}
    args = (arrays["input_ids"], arrays["attention_mask"], arrays["pixel_values"], arrays["image_grid_thw"],
            arrays.get("mm_token_type_ids"))
    (ref, ref_state), (ours, state) = graphs.prefill(*args), bound.prefill(*args)
    worst = [float(np.abs(ref - ours).max())]
    for _ in range(3):
        assert all(isinstance(v, OrtValue) for v in state.past) and len(state.past) == 2 * graphs.layout.num_layers
        tokens = ref.argmax(axis=-1)
        (ref, ref_state), (ours, state) = graphs.decode(tokens, ref_state), bound.decode(tokens, state)
        worst.append(float(np.abs(ref - ours).max()))
    assert max(worst) <= 1e-6, f"bound vs numpy logits differ by {worst} (prefill, decode 1..3)"
    greedy = {name: OrtGenerationModel(g, {}).generate(
        input_ids=arrays["input_ids"], attention_mask=arrays["attention_mask"], pixel_values=arrays["pixel_values"],
        image_grid_thw=arrays["image_grid_thw"], max_new_tokens=5).sequences for name, g in (("ref", graphs),
                                                                                           ("bound", bound))}
    assert greedy["ref"].tolist() == greedy["bound"].tolist()


def test_vision_graph_takes_several_image_sizes_in_one_call(torch_model, graphs):
    import torch

    from firm_lite.onnx.host import vision_inputs
    from firm_lite.onnx.layout import VISION_INPUTS

    model, processor = torch_model
    inputs = _batch(processor)
    with torch.no_grad():
        ref = model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    feed = vision_inputs(inputs["image_grid_thw"].numpy(), graphs.layout)
    feed["pixel_values"] = inputs["pixel_values"].numpy()
    feats, deep = graphs.sessions["vision"].run(None, {k: feed[k] for k in VISION_INPUTS})
    # Vision features are not logits: the trained tiny tower's reach |x| ~ 400, where float32
    # rounding alone is ~4e-5, so they are compared relative to their own scale.
    pairs = [(feats, ref.pooler_output.numpy())] + [(d, r.numpy()) for d, r in zip(deep, ref.deepstack_features,
                                                                                strict=True)]
    worst = max(float(np.abs(ours - theirs).max() / max(1.0, np.abs(theirs).max())) for ours, theirs in pairs)
    assert worst <= VISION_RELATIVE_TOLERANCE, (
        f"4 images in one vision call differ from PyTorch by {worst:.2e} of the features' scale")


def _scores(records):
    return [(r["id"], r["execution"]["score"], r["consistency"]["score"]) for r in records]


def test_scoring_through_onnx_matches_pytorch_on_the_demo_pair(onnx_dir):
    from firm_lite.critic import load_critic
    from firm_lite.data import demo_pair
    from firm_lite.onnx.generate import OrtGenerationModel

    ort_critic = load_critic(model="tiny", variant=str(onnx_dir), device="cpu")
    assert isinstance(ort_critic.model, OrtGenerationModel)
    pair = demo_pair()
    ours = ort_critic.score([pair])[0]
    assert ours["error"] is None and ours["execution"]["parse_ok"] and ours["consistency"]["parse_ok"]
    for engine in ("generate", "auto"):  # same generate path, and the default shared-prefix engine
        ref = load_critic(model="tiny", device="cpu", engine=engine).score([pair])[0]
        assert _scores([ours]) == _scores([ref]), f"engine={engine}: ORT {_scores([ours])} vs torch {_scores([ref])}"
        for mode in ("execution", "consistency"):
            assert ours[mode]["expected"] == pytest.approx(ref[mode]["expected"], abs=1e-4), (engine, mode)


def test_teacher_forcing_through_onnx_matches_pytorch(onnx_dir):
    """``firm-lite calibrate`` reads variants' digit distributions teacher-forced on the
    reference's answers: the ORT model's forward must give PyTorch's."""
    from firm_lite.critic import load_critic
    from firm_lite.data import demo_pair
    from firm_lite.images import load_image
    from firm_lite.teacher_forcing import critic_forced_readout

    ref_critic = load_critic(model="tiny", device="cpu", engine="generate")
    ort_critic = load_critic(model="tiny", variant=str(onnx_dir), device="cpu")
    pair = demo_pair()
    images = [load_image(pair.source), load_image(pair.edited)]
    answer = '{\n"reasoning" : "The edit was applied.",\n"score" : [4]\n}'
    for mode in ("execution", "consistency"):
        ref = critic_forced_readout(ref_critic, mode, pair, images, answer)
        ours = critic_forced_readout(ort_critic, mode, pair, images, answer)
        assert ref is not None and ours is not None and ours.score == ref.score == 4
        worst = max(abs(a - b) for a, b in zip(ours.probs, ref.probs, strict=True))
        assert worst <= 1e-5, f"{mode}: forced digit probabilities differ by {worst:.2e}"


def test_score_cli_takes_the_folder_as_variant_without_model(onnx_dir):
    from firm_lite.cli import main

    result = CliRunner().invoke(main, ["score", "--variant", str(onnx_dir), "--demo", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)["records"][0]
    assert record["error"] is None and record["execution"]["score"] in range(1, 6)


@pytest.mark.parametrize("scheme, op", [("int8", "MatMulInteger"), ("int4", "MatMulNBits")])
def test_quantized_graphs_load_as_variants_and_score(onnx_dir, tmp_path, scheme, op):
    import onnx

    from firm_lite.critic import load_critic
    from firm_lite.data import demo_pair
    from firm_lite.export.onnx.export import quantize_folder

    out = tmp_path / scheme
    manifest = quantize_folder(onnx_dir, out, scheme, block_size=32)
    decoder = onnx.load(str(out / "decoder.onnx"))
    ops = {n.op_type for n in decoder.graph.node}
    assert op in ops
    assert manifest["kept"] == ["embeddings", "lm_head"] and manifest["recipe"]["quantize"] == scheme
    assert manifest["recipe"]["quantized_graphs"]["decoder"]["kept_float"], "lm_head must stay float"
    record = load_critic(model="tiny", variant=str(out), device="cpu").score([demo_pair()])[0]
    assert record["error"] is None and record["execution"]["raw"]  # drift is `firm-lite calibrate`'s job


@pytest.mark.slow
def test_heldout_scores_match_pytorch(request):
    if not HELDOUT.exists():
        pytest.skip(f"{HELDOUT} not present")
    onnx_dir = request.getfixturevalue("onnx_dir")  # export only when there is a set to score
    from firm_lite.critic import load_critic
    from firm_lite.manifest import read_manifest

    pairs = [row.pair for row in read_manifest(HELDOUT) if row.pair is not None]
    ours = load_critic(model="tiny", variant=str(onnx_dir), device="cpu").score(pairs)
    ref = load_critic(model="tiny", device="cpu", engine="generate").score(pairs)
    mismatched = [(a, b) for a, b in zip(_scores(ours), _scores(ref), strict=True) if a != b]
    assert not mismatched, f"{len(mismatched)}/{len(pairs)} pairs differ (ORT, torch): {mismatched[:5]}"


@pytest.mark.slow
def test_fp16_export_loads_and_scores(tmp_path):
    """The fp16 export (what the 8B needs on a GPU: ~16 GiB of graphs, not ~33 GiB) runs end to end;
    on ONNX Runtime's CPU provider here, on CUDA in bench/gpu_check.py."""
    from firm_lite.artifact import read_variant_manifest
    from firm_lite.cli import main
    from firm_lite.critic import load_critic
    from firm_lite.data import demo_pair

    out = tmp_path / "fp16"
    result = CliRunner().invoke(main, ["export", "onnx", "--model", "tiny", "--dtype", "fp16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert read_variant_manifest(out)["onnx"]["layout"]["dtype"] == "fp16"
    record = load_critic(model="tiny", variant=str(out), device="cpu").score([demo_pair()])[0]
    assert record["error"] is None and record["execution"]["parse_ok"] and record["consistency"]["parse_ok"]
