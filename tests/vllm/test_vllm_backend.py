"""The vLLM backend must give the transformers backend's answers: on the 80 held-out pairs in fp32,
the same raw answers and integer scores, digit probabilities within 1e-3, parse failures reported
the same way; and it must refuse a checkpoint it would load only in part.

The transformers side is the records of ``firm-lite score --model tiny --device cpu --manifest
calibration/editset-heldout.jsonl --out FILE`` (and ``--variant default+fast`` for the fast
protocol) made in firm-lite's own environment (``.ci/vllm`` makes them), named by
``FIRM_LITE_HF_RECORDS`` / ``FIRM_LITE_HF_FAST_RECORDS``: vLLM pins an older transformers, under
which firm-lite's shared-prefix engine does not give the reference answers.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from firm_lite.prompts import MODES  # noqa: E402
from firm_lite.records import ModeScore  # noqa: E402

PROB_TOLERANCE = 1e-3
HF_RECORDS_ENV = {"full": "FIRM_LITE_HF_RECORDS", "fast": "FIRM_LITE_HF_FAST_RECORDS"}
HF_VARIANT = {"full": "default:fp32", "fast": "default:fp32+fast"}
HF_COMMAND = {"full": "firm-lite score --model tiny --device cpu --manifest calibration/editset-heldout.jsonl "
                      "--out FILE", "fast": "the same with --variant default+fast"}


def _hf_answers(protocol: str, critic, items) -> list[dict]:
    env = HF_RECORDS_ENV[protocol]
    path = os.environ.get(env)
    if not path:
        pytest.fail(f"set {env} to the records of `{HF_COMMAND[protocol]}` made in firm-lite's environment "
                    "(.ci/vllm does)")
    records = {}
    for line in Path(path).read_text("utf-8").splitlines():
        record = json.loads(line)
        assert record["error"] is None, f"{record['id']}: {record['error']}"
        assert record["image_budget"] == critic.budget.as_record(), f"{path}: made with another image budget"
        assert record["variant"] == HF_VARIANT[protocol], f"{path}: made with variant {record['variant']}"
        records[record["id"]] = {m: ModeScore(**record[m]) for m in MODES}
    return [records[pair.id] for pair, _, _ in items]


@pytest.fixture(scope="session")
def vllm_full_answers(vllm_answers):
    return vllm_answers["full"]


@pytest.mark.parametrize("protocol", ["full", "fast"])
def test_heldout_answers_match_transformers(protocol, tiny_critic, heldout_items, vllm_answers) -> None:
    ref = _hf_answers(protocol, tiny_critic, heldout_items)
    answers = vllm_answers[protocol]
    mismatches, worst = [], []
    for (pair, _, _), want, got in zip(heldout_items, ref, answers, strict=True):
        for mode in MODES:
            a, b = want[mode], got[mode]
            if (a.raw, a.score, a.parse_ok, a.reasoning) != (b.raw, b.score, b.parse_ok, b.reasoning):
                mismatches.append(f"{pair.id}/{mode}: hf score {a.score} parse_ok {a.parse_ok} raw {a.raw!r}\n"
                                  f"    vllm score {b.score} parse_ok {b.parse_ok} raw {b.raw!r}")
                continue
            assert (a.probs is None) == (b.probs is None), f"{pair.id}/{mode}: read-out present on one side only"
            if a.probs is not None:
                diff = max(abs(x - y) for x, y in zip(a.probs, b.probs, strict=True))
                worst.append((diff, abs(a.expected - b.expected), f"{pair.id}/{mode}"))
    assert not mismatches, f"{len(mismatches)} of {2 * len(heldout_items)} answers differ:\n" + "\n".join(
        mismatches[:10])
    worst.sort(reverse=True)
    assert worst, "no answer had a score read-out"
    assert worst[0][0] <= PROB_TOLERANCE, "largest digit-probability differences: " + ", ".join(
        f"{name} {d:.2e} (expected score {e:.2e})" for d, e, name in worst[:5])


def test_parse_failures_are_failures_not_zeros(tiny_critic, heldout_items, vllm_full_answers) -> None:
    """Where an answer does not parse, both backends say so (score None, parse_ok False), never 0."""
    ref = _hf_answers("full", tiny_critic, heldout_items)
    for want, got in zip(ref, vllm_full_answers, strict=True):
        for mode in MODES:
            b = got[mode]
            assert b.parse_ok == (b.score is not None)
            assert b.score is None or 1 <= b.score <= 5
            assert (want[mode].parse_ok, want[mode].score) == (b.parse_ok, b.score)


def test_weight_audit_saw_every_tensor_loaded(vllm_engine) -> None:
    """The tiny critic's o_proj biases (non-zero; stock vLLM drops them) are loaded."""
    audit = vllm_engine.weight_audit
    assert audit["o_proj_biases_added"] == 3
    assert audit["unused_nonzero"] == [] and audit["used"] == audit["tensors"] > 0
    assert vllm_engine.provenance["weight_audit"] is audit


def test_refuses_a_checkpoint_with_a_tensor_vllm_would_drop(tiny_critic, tmp_path: Path) -> None:
    """An extra non-zero ``mlp.down_proj.bias``: vLLM's loader skips unexpected biases without a word."""
    import torch
    from safetensors.torch import load_file, save_file

    from firm_lite.sources import tiny_critic_dir
    from firm_lite.vllm_backend import VllmEngine
    from firm_lite.vllm_backend.weights import UnusedWeightsError
    from tests.vllm.conftest import engine_options

    folder = tmp_path / "critic"
    shutil.copytree(tiny_critic_dir(), folder)
    tensors = load_file(folder / "model.safetensors")
    name = "model.language_model.layers.1.mlp.down_proj.bias"
    assert name not in tensors
    tensors[name] = torch.full((json.loads((folder / "config.json").read_text())["text_config"]["hidden_size"],),
                               0.25)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UnusedWeightsError, match=r"1 non-zero tensor.*layers\.1\.mlp\.down_proj\.bias"):
        VllmEngine(folder, tiny_critic.processor, tiny_critic.render, tiny_critic.budget, tiny_critic.decoding,
                   dtype="fp32", options=engine_options())


def test_the_cli_records_match_transformers(tiny_critic, heldout_items) -> None:
    """`firm-lite score --backend vllm` (.ci/vllm runs it; FIRM_LITE_VLLM_RECORDS names its --out):
    the records, not only the engine's answers, equal the transformers backend's."""
    path = os.environ.get("FIRM_LITE_VLLM_RECORDS")
    if not path:
        pytest.skip("FIRM_LITE_VLLM_RECORDS not set (.ci/vllm sets it)")
    ref = _hf_answers("full", tiny_critic, heldout_items)
    records = [json.loads(line) for line in Path(path).read_text("utf-8").splitlines()]
    assert [r["id"] for r in records] == [pair.id for pair, _, _ in heldout_items]
    for record, want in zip(records, ref, strict=True):
        assert record["error"] is None and record["variant"] == "vllm:default:fp32"
        for mode in MODES:
            assert (record[mode]["raw"], record[mode]["score"]) == (want[mode].raw, want[mode].score), record["id"]


def test_data_parallel_engines_put_every_answer_back_in_place(vllm_engine, heldout_items,
                                                              vllm_full_answers) -> None:
    """Pairs are dealt round-robin to the engines and come back in input order (here two "ranks"
    share the session's engine; separate engines per rank were measured equal in the note)."""
    from firm_lite.vllm_backend import DataParallelEngines

    items = heldout_items[:7]  # odd: the shares differ in size
    pool = DataParallelEngines([vllm_engine, vllm_engine])
    timings: dict[str, float] = {}
    out = pool.score_modes(items, timings=timings)
    for k in range(len(items)):
        for mode in MODES:
            assert out[mode][k].raw == vllm_full_answers[k][mode].raw
    assert timings["generate"] > 0 and timings["decode_tokens"] > 0
    pool._pool.shutdown()


def test_score_api_on_vllm_shares_the_loaded_engine(vllm_critic, tmp_path: Path) -> None:
    """The score verb with the same settings reuses the loaded critic; records name the backend."""
    from firm_lite.scoring import score
    from tests.vllm.conftest import HELDOUT, vllm_settings

    manifest = tmp_path / "three.jsonl"
    lines = [line for line in HELDOUT.read_text("utf-8").splitlines() if line.startswith("{")][:3]
    base = HELDOUT.parent
    rows = []
    for line in lines:
        row = json.loads(line)
        row["source"], row["edited"] = str(base / row["source"]), str(base / row["edited"])
        rows.append(json.dumps(row))
    manifest.write_text("\n".join(rows) + "\n", "utf-8")
    out = tmp_path / "out.jsonl"
    summary = score(vllm_settings(), manifest=manifest, out=out, progress=False)
    records = [json.loads(x) for x in out.read_text("utf-8").splitlines()]
    assert len(records) == 3 and all(r["error"] is None for r in records)
    assert {r["variant"] for r in records} == {"vllm:default:fp32"}
    assert summary is not None
    assert vllm_critic.provenance["backend"]["backend"] == "vllm"
