"""End to end on the offline tiny critic: zero drift against itself, a damaged variant fails the
gate with exit 1 and named worst items, reruns come from the cache, interrupted runs resume, and
the drift gate reaches ``firm-lite score``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from firm_lite.artifact import calibration_warning
from firm_lite.calibration import gate
from firm_lite.calibration.runner import calibrate
from firm_lite.settings import CriticSettings

N_PAIRS = 6
SETTINGS = CriticSettings(model="tiny", device="cpu", max_new_tokens=64)
OPTS = {"batch_size": 3}
INSTRUCTIONS = ("Make the sky red.", "Remove the car on the left.", "Change the background to blue.",
                "Add a small house in the corner.", "Paint the boat gold and keep everything else unchanged.",
                "Make the cup bigger.")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six varied synthetic edits (the kind the tiny critic was trained on), with labels."""
    import numpy as np

    from firm_lite.dev.editset.synthetic import synthetic_pair

    folder = tmp_path_factory.mktemp("editset")
    rng = np.random.default_rng(7)
    lines = []
    for i in range(N_PAIRS):
        src, edited, exec_level, cons_level = synthetic_pair(rng)
        src.save(folder / f"s{i}.png")
        edited.save(folder / f"e{i}.png")
        labels = {"execution": int(round(exec_level)), "consistency": int(round(cons_level))}
        lines.append(json.dumps({"id": f"pair-{i}", "source": f"s{i}.png", "edited": f"e{i}.png",
                                 "instruction": INSTRUCTIONS[i], "labels": labels}))
    path = folder / "heldout.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _exported_copy(dest: Path) -> Path:
    """An 'exported variant' folder for the tiny critic, loaded by a test-only folder backend."""
    from firm_lite.sources import tiny_critic_dir
    from firm_lite.variants.reference import load_reference
    from firm_lite.variants.registry import VariantSpec, register, registry

    if "test-folder" not in registry():
        register(VariantSpec("test-folder", "test", "test only: an fp32 copy in a folder", load_reference,
                             from_folder=True))
    shutil.copytree(tiny_critic_dir(), dest)
    (dest / "firm_lite_variant.json").write_text(json.dumps({"backend": "test-folder"}))
    return dest


@pytest.fixture(scope="module")
def identical(manifest: Path, tmp_path_factory: pytest.TempPathFactory):
    """fp32 against the CPU reference (also fp32): the same model twice."""
    return calibrate(SETTINGS, variants=["fp32"], manifest=manifest, out=tmp_path_factory.mktemp("cal"), **OPTS)


@pytest.mark.requires_extra("calib")  # `identical` plots with matplotlib
def test_fp32_against_itself_has_zero_drift_and_passes(identical) -> None:
    run = identical
    assert run.passed and run.exit_code == 0
    assert run.result["verdict"].startswith("verdict: PASS")
    assert run.result["reference"]["label"] == "default:fp32"  # CPU reference is fp32
    assert run.result["manifest"]["labelled"] == N_PAIRS
    for v in run.result["variants"]:
        for mode in ("execution", "consistency"):
            m = v["metrics"][mode]
            assert m["n_paired"] == N_PAIRS and m["n_kl"] == N_PAIRS
            assert (m["exact_agreement"], m["flip_rate"], m["big_flip_rate"], m["mae_score"]) == (1.0, 0.0, 0.0, 0.0)
            assert m["mae_expected"] == 0.0 and m["kl_max"] == 0.0
            labels = v["metrics"]["labels"][mode]
            assert labels["n"] == N_PAIRS and labels["increase"] == 0.0
        assert v["metrics"]["cme"]["cme_mae"] == 0.0
        assert v["worst"] == [] and all(c["ok"] for c in v["checks"])
    # the forced read-out reproduces the generated one on the reference's own answers
    assert run.result["reference"]["teacher_forcing_gap"] < 1e-3
    for name in ("calibration.json", "report.md", "calibration.png"):
        assert (run.out_dir / name).stat().st_size > 0
    assert "PASS" in (run.out_dir / "report.md").read_text()


@pytest.mark.requires_extra("calib")
def test_noisy_variant_fails_the_gate_and_names_worst_items(identical, manifest: Path) -> None:
    from click.testing import CliRunner

    from firm_lite.cli import main

    run = identical  # same --out: the reference comes from its cache
    args = ["calibrate", "--variant", "noisy", "--manifest", str(manifest), "--out", str(run.out_dir),
            "--model", "tiny", "--device", "cpu", "--max-new-tokens", "64", "--batch-size", "3", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "FAIL noisy [default]" in result.output and "verdict: FAIL" in result.output
    saved = json.loads((run.out_dir / "calibration.json").read_text())
    noisy = saved["variants"][0]
    assert not noisy["passed"] and noisy["failures"]
    assert noisy["worst"], "a damaged variant must name where it diverges"
    worst = noisy["worst"][0]
    assert worst["id"].startswith("pair-") and worst["id"] in result.output
    assert worst["execution"]["reference"]["raw"] and worst["execution"]["variant"] is not None
    assert max(noisy["metrics"][m]["kl_mean"] for m in ("execution", "consistency")) > 0.05


@pytest.mark.requires_extra("calib")
def test_rerun_is_served_from_the_caches(identical, manifest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import firm_lite.critic

    def no_model(settings, **_):  # noqa: ANN001
        raise AssertionError(f"{settings.variant} was loaded although its results are cached")

    monkeypatch.setattr(firm_lite.critic, "load_critic", no_model)
    again = calibrate(SETTINGS, variants=["fp32"], manifest=manifest, out=identical.out_dir, **OPTS)
    assert again.result["variants"][0]["metrics"] == identical.result["variants"][0]["metrics"]


@pytest.mark.requires_extra("calib")
def test_interrupted_export_calibration_resumes_and_records_its_verdict(
        identical, manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from firm_lite.calibration import collect

    folder = _exported_copy(tmp_path / "variant")
    assert "never calibrated" in calibration_warning(folder)
    real, calls = collect._forced, {"n": 0}

    def interrupt_on_fourth(*args):  # noqa: ANN002
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(collect, "_forced", interrupt_on_fourth)
    # the reference comes from the shared cache; the variant is interrupted after one batch
    opts = {**OPTS, "out": tmp_path / "out", "cache_dir": identical.out_dir / "cache"}
    with pytest.raises(KeyboardInterrupt):
        calibrate(SETTINGS, variants=[str(folder)], manifest=manifest, **opts)
    partial = [p for p in (identical.out_dir / "cache").glob("variant-variant-*.jsonl")]
    assert len(partial) == 1 and len(partial[0].read_text().splitlines()) == 1 + 3  # header + one batch

    calls["n"] = -100  # no more interrupts; count what the rerun computes
    run = calibrate(SETTINGS, variants=[str(folder)], manifest=manifest, **opts)
    assert calls["n"] == -100 + N_PAIRS - 3  # only the variant's missing items
    assert run.passed and run.result["variants"][0]["metrics"]["consistency"]["kl_max"] == 0.0

    record = json.loads((folder / "firm_lite_variant.json").read_text())["calibration"]
    assert record["passed"] is True and record["manifest"]["sha256"] == run.result["manifest"]["sha256"]
    assert record["thresholds"]["table"] == "default" and "max_flip_rate" in record["thresholds"]["limits"]
    assert record["metrics"]["execution"]["flip_rate"] == 0.0
    assert calibration_warning(folder) is None


def test_score_warns_for_uncalibrated_and_failed_variants(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from firm_lite.scoring import score

    folder = _exported_copy(tmp_path / "variant")
    score(CriticSettings(model="tiny", variant=str(folder), device="cpu", max_new_tokens=64), demo=True)
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("firm_lite")]
    assert len(lines) == 1 and "never calibrated" in lines[0] and str(folder) in lines[0]

    gate.record_verdict(folder, {"passed": False, "failures": ["consistency flip_rate 0.5 > 0.25"],
                                 "created": "2026-01-02T00:00:00+00:00"})
    warning = calibration_warning(folder)
    assert "FAILED calibration on 2026-01-02" in warning and "flip_rate 0.5 > 0.25" in warning
    assert json.loads((folder / "firm_lite_variant.json").read_text())["backend"] == "test-folder"
