"""The GPU acceptance check behind ``bench/gpu_check.py``: one run that says whether firm-lite works
on a CUDA machine, written as one JSON + markdown report.

1. **Machine and decisions**: what the machine reports (:func:`firm_lite.device.machine_report`)
   and what firm-lite decides from it: default dtype, GPTQ kernel order, ONNX Runtime providers.
2. **Tiny critic on the GPU, every backend**: the reference is the tiny critic in fp32 on the CPU;
   each variant (torch fp32/bf16/fp16, bitsandbytes int8/nf4 at load, exported GPTQ w4 and bnb
   nf4 folders, ONNX fp32 and fp16 on the CUDA provider, ONNX on TensorRT when present, vLLM when
   installed) scores the same pairs on the GPU. fp32 and ONNX fp32 must give the reference's
   integer scores exactly; the others report their agreement (the tiny critic's calibration
   already says bf16 and nf4 drift a little) and fail only when broken (errors, no parseable
   answer, or under half the reference's scores).
3. **8B-shape speed and memory**: the random-weight Qwen3-VL-8B checkpoint (built in a child
   process) and its random GPTQ w4 copy, benched per variant in its own process under a memory
   cap (24 GiB by default, a consumer card), with peak memory as torch's reserved peak and the
   device-level rise (:class:`firm_lite.device.PeakMemory`), next to what ``firm-lite plan``
   predicted; vLLM rows when ``firm_lite.vllm_backend`` and vLLM are importable
   (:mod:`firm_lite.bench.acceptance_8b`).

``dry_run`` does everything up to the first CUDA call (machine report, decisions, the CPU
reference, the plan of every row) and writes the report with the GPU rows marked not run; the
test suite runs it. ``device="cpu"`` with ``shape="tiny"`` runs every stage on the CPU at the
tiny critic's shape (a slow test): the plumbing of each stage without a GPU.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from firm_lite.bench.acceptance_options import AcceptanceOptions, extra_installed, vllm_backend_importable

log = logging.getLogger(__name__)

HELDOUT = Path(__file__).resolve().parents[2] / "calibration" / "editset-heldout.jsonl"
EXPECT_IDENTICAL = ("fp32", "onnx-fp32")
MIN_AGREEMENT = 0.5  # below this a variant is broken, not drifting


@dataclass
class Row:
    """One tiny-critic check: a variant on the device against the CPU fp32 reference."""

    name: str
    variant: str  # what load_critic gets (a name or a folder)
    needs: str | None = None  # extra whose absence skips the row
    status: str = "planned"
    agreement: int | None = None
    pairs: int | None = None
    parse_failures: int | None = None
    mismatches: list[str] = field(default_factory=list)
    backend: Any = None
    load_s: float | None = None
    score_s: float | None = None
    error: str | None = None

    @property
    def expect_identical(self) -> bool:
        return self.name in EXPECT_IDENTICAL


# ---- pieces ------------------------------------------------------------------------------------

def check_pairs(n: int, scratch: Path) -> list[Any]:
    """The demo pair and the first held-out pairs (synthetic ones when the set is not at hand)."""
    from firm_lite.bench.synthetic import make_synthetic_manifest
    from firm_lite.data import demo_pair
    from firm_lite.manifest import read_manifest

    manifest = HELDOUT if HELDOUT.is_file() else make_synthetic_manifest(scratch / "tiny-pairs", n, 160)
    rows = [r.pair for r in read_manifest(manifest) if r.pair is not None]
    return [demo_pair(), *rows[: max(0, n - 1)]]


def integer_scores(records: list[dict[str, Any]]) -> dict[str, tuple[Any, Any]]:
    return {str(r["id"]): tuple((r.get(m) or {}).get("score") for m in ("execution", "consistency"))
            for r in records}


def judge(row: Row, scores: dict[str, tuple[Any, Any]], reference: dict[str, tuple[Any, Any]]) -> Row:
    """Agreement with the reference, parse failures, and the row's verdict (see module docstring)."""
    row.pairs = len(reference)
    row.mismatches = [f"{pid}: {scores.get(pid)} vs {ref}" for pid, ref in reference.items() if scores.get(pid) != ref]
    row.agreement = row.pairs - len(row.mismatches)
    row.parse_failures = sum(s is None for pair in scores.values() for s in pair)
    if row.expect_identical:
        row.status = "pass" if not row.mismatches else "FAIL (must equal the reference)"
    elif row.parse_failures == 2 * row.pairs or row.agreement < MIN_AGREEMENT * row.pairs:
        row.status = "FAIL (broken: too far from the reference)"
    else:
        row.status = "pass" if not row.mismatches else f"pass (drift: {len(row.mismatches)}/{row.pairs} differ)"
    return row


def decisions(report: Any, device: str) -> dict[str, Any]:
    """What firm-lite decides on this machine, from its report only."""
    from firm_lite.device import default_dtype_name
    from firm_lite.onnx.providers import CUDA, choose_providers
    from firm_lite.variants.gptq import gptq_kernel_plan

    index = int(device.partition(":")[2] or 0)
    dtype = default_dtype_name("cuda", report.capability(index))
    out: dict[str, Any] = {"dtype_auto": dtype, "capability": report.capability(index)}
    kernels, notes = gptq_kernel_plan(report, index, dtype)
    out["gptq_kernels"] = [k for k, _ in kernels]
    out["gptq_notes"] = notes
    if CUDA in report.ort_providers:
        plan = choose_providers(f"cuda:{index}", report.ort_providers, {"opted": "in"}, report.tensorrt_libs)
        out["onnx_providers_tensorrt_folder"] = list(plan.providers)
        out["onnx_provider_notes"] = list(plan.notes)
    else:
        out["onnx_providers_tensorrt_folder"] = None
        out["onnx_provider_notes"] = ["no CUDA provider in this onnxruntime (install firm-lite[gpu])"]
    return out


def tiny_rows(scratch: Path, dtype: str, report: Any) -> list[Row]:
    rows = [Row("fp32", "fp32"), Row("bf16", "bf16"), Row("fp16", "fp16"),
            Row("int8", "int8", "bnb"), Row("nf4", "nf4", "bnb"),
            Row("gptq-w4", str(scratch / "tiny-gptq-w4"), "gptq"), Row("bnb-nf4", str(scratch / "tiny-bnb-nf4"), "bnb"),
            Row("onnx-fp32", str(scratch / "tiny-onnx-fp32"), "onnx"),
            Row("onnx-fp16", str(scratch / "tiny-onnx-fp16"), "onnx"),
            Row("onnx-fp16+tensorrt", str(scratch / "tiny-onnx-fp16-trt"), "onnx"),
            Row("vllm", "vllm", "vllm")]
    for row in rows:
        if row.needs and not extra_installed(row.needs):
            row.status = f"skipped: the {row.needs} extra is not installed"
    if not report.tensorrt_libs or "TensorrtExecutionProvider" not in report.ort_providers:
        rows[-2].status = "skipped: no TensorRT provider or libraries"
    if rows[-1].status == "planned" and not vllm_backend_importable():
        rows[-1].status = "skipped: firm_lite.vllm_backend is not importable"
    if dtype == "fp16":
        rows[1].status = "planned (bf16 is emulated on this GPU; fp16 is the default here)"
    return rows


# ---- running rows ------------------------------------------------------------------------------

def run_torch_row(row: Row, pairs: list[Any], reference: dict[str, Any], device: str) -> Row:
    """Load ``row.variant`` of the tiny critic on ``device``, score, judge, release."""
    from firm_lite.critic import load_critic, release_critic
    from firm_lite.device import release_cached_memory, resolve_device
    from firm_lite.settings import CriticSettings

    try:
        start = time.perf_counter()
        critic = load_critic(CriticSettings(model="tiny", variant=row.variant, device=device))
        row.load_s = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        records = critic.score(pairs, batch_size=4)
        row.score_s = round(time.perf_counter() - start, 2)
        row.backend = critic.provenance.get("backend")
        judge(row, integer_scores(records), reference)
        release_critic(critic)
    except Exception as exc:  # noqa: BLE001 - a harness row: recorded, reported, and fails the run
        row.status, row.error = "FAIL (error)", f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        log.warning("tiny %s on %s: %s", row.name, device, row.error)
    release_cached_memory(resolve_device(device))
    return row


def run_vllm_row(row: Row, pairs: list[Any], reference: dict[str, Any]) -> Row:
    """The tiny critic's checkpoint through firm-lite's vLLM engine (its API: VllmEngine)."""
    from firm_lite.critic import load_critic
    from firm_lite.sources import tiny_critic_dir
    from firm_lite.vllm_backend import VllmEngine

    cpu = load_critic(model="tiny", device="cpu")
    engine = None
    try:
        start = time.perf_counter()
        engine = VllmEngine(tiny_critic_dir(), cpu.processor, cpu.render, cpu.budget, cpu.decoding, dtype="fp32")
        row.load_s = round(time.perf_counter() - start, 2)
        items = [(p, *cpu.prepare(p)) for p in pairs]
        start = time.perf_counter()
        out = engine.score_modes(items)
        row.score_s = round(time.perf_counter() - start, 2)
        row.backend = engine.provenance
        scores = {str(p.id): (out["execution"][k].score, out["consistency"][k].score) for k, p in enumerate(pairs)}
        judge(row, scores, reference)
    except Exception as exc:  # noqa: BLE001 - a harness row: recorded, reported, and fails the run
        row.status, row.error = "FAIL (error)", f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    finally:
        if engine is not None:
            engine.close()
    return row


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from firm_lite.cli import main; main(sys.argv[1:])", *args]


def _complete(folder: Path) -> bool:
    from firm_lite.artifact import VARIANT_MANIFEST

    return (folder / VARIANT_MANIFEST).is_file()


def start_onnx_exports(scratch: Path) -> list[tuple[Path, subprocess.Popen | None]]:
    """The tiny ONNX exports, in child processes (CPU work that overlaps the GPU rows)."""
    jobs = []
    for dtype in ("fp32", "fp16"):
        folder = scratch / f"tiny-onnx-{dtype}"
        proc = None
        if not _complete(folder):
            log.info("exporting the tiny critic to ONNX %s in the background", dtype)
            with (scratch / f"export-onnx-{dtype}.log").open("w") as log_file:  # the child keeps its own handle
                proc = subprocess.Popen(_cli("-q", "export", "onnx", "--model", "tiny", "--dtype", dtype, "--out",
                                             str(folder), "--overwrite"), stdout=log_file, stderr=subprocess.STDOUT)
        jobs.append((folder, proc))
    return jobs


def prepare_folders(scratch: Path, device: str, rows: list[Row]) -> None:
    """The tiny GPTQ w4 and bnb nf4 exports (on ``device``; reused when complete)."""
    from firm_lite.export import export_bnb, export_gptq

    wanted = {r.name: r for r in rows if r.status.startswith("planned")}
    for name, make in (("gptq-w4", lambda out: export_gptq(model="tiny", out=out, bits=4, calib="demo",
                                                           device=device, progress=False, overwrite=True)),
                       ("bnb-nf4", lambda out: export_bnb(model="tiny", out=out, bits=4, device=device,
                                                          progress=False, overwrite=True))):
        row = wanted.get(name)
        if row is None or _complete(Path(row.variant)):
            continue
        try:
            make(Path(row.variant))
        except Exception as exc:  # noqa: BLE001 - the export failing is this row's result
            row.status, row.error = "FAIL (export)", f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"


# ---- the run -----------------------------------------------------------------------------------

def run_acceptance(opts: AcceptanceOptions) -> dict[str, Any]:
    """Run the check (see the module docstring); writes ``<out>/gpu-check.{json,md}``."""
    from firm_lite.bench.acceptance_report import verdict, write_report
    from firm_lite.critic import load_critic
    from firm_lite.device import machine_report

    started, t0 = time.strftime("%Y-%m-%dT%H:%M:%S"), time.perf_counter()
    opts.scratch.mkdir(parents=True, exist_ok=True)
    report = machine_report()
    decided = decisions(report, opts.device if opts.device.startswith("cuda") else "cuda:0")
    dtype = decided["dtype_auto"] if opts.device.startswith("cuda") else "fp32"
    pairs = check_pairs(opts.tiny_pairs, opts.scratch)
    reference = integer_scores(load_critic(model="tiny", device="cpu").score(pairs, batch_size=4))
    rows = tiny_rows(opts.scratch, dtype, report)
    result: dict[str, Any] = {"started": started, "options": {k: str(v) if isinstance(v, Path) else v
                                                              for k, v in asdict(opts).items()},
                              "machine": report.as_record(), "decisions": decided,
                              "reference": {"variant": "tiny fp32 on cpu", "pairs": len(pairs),
                                            "scores": {k: list(v) for k, v in reference.items()}}}
    if opts.dry_run:
        for row in rows:
            if row.status.startswith("planned"):
                row.status = "not run (dry run)"
        from firm_lite.bench.acceptance_8b import bench_variants

        result["bench_8b"] = {"status": "not run (dry run)", "variants": [v for v, _ in bench_variants(dtype)],
                              "batch_sizes": list(opts.batch_sizes), "cap_gib": opts.cap_gib}
    else:
        result["bench_8b"] = run_gpu_stages(opts, rows, pairs, reference, dtype)
    result["tiny"] = [asdict(r) | {"expect_identical": r.expect_identical} for r in rows]
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["verdict"] = verdict(result)
    write_report(result, Path(opts.out))
    return result


def run_gpu_stages(opts: AcceptanceOptions, rows: list[Row], pairs: list[Any], reference: dict[str, Any],
                   dtype: str) -> dict[str, Any]:
    """Everything after the first CUDA call: background jobs first, then the rows, then the bench."""
    from firm_lite.bench.synthetic import make_random_checkpoint, shipped_8b_config

    built: dict[str, Any] = {}
    builder = None
    if not opts.skip_8b:
        config = shipped_8b_config() if opts.shape == "8b" else _tiny_config()

        def build() -> None:
            try:
                built["path"] = make_random_checkpoint(opts.scratch / f"random-{opts.shape}", device=opts.device,
                                                       config=config)
            except Exception as exc:  # noqa: BLE001 - reported as the bench's result
                built["error"] = f"{type(exc).__name__}: {exc}"

        builder = threading.Thread(target=build, name="random-checkpoint")
        builder.start()
    planned = [r for r in rows if r.status.startswith("planned")]
    onnx_jobs = start_onnx_exports(opts.scratch) if any(r.needs == "onnx" for r in planned) else []
    prepare_folders(opts.scratch, opts.device, planned)
    for row in planned:
        if row.needs in (None, "bnb", "gptq") and row.status.startswith("planned"):
            run_torch_row(row, pairs, reference, opts.device)
    for folder, proc in onnx_jobs:
        if proc is not None and proc.wait() != 0:
            for row in planned:
                if row.variant == str(folder):
                    row.status, row.error = "FAIL (export)", (f"export onnx exited {proc.returncode}; see "
                                                              f"{opts.scratch}/export-onnx-*.log")
    run_onnx_rows(opts, [r for r in planned if r.needs == "onnx" and r.status.startswith("planned")], pairs,
                  reference)
    for row in planned:
        if row.name == "vllm" and row.status.startswith("planned"):
            run_vllm_row(row, pairs, reference)
    if builder is None:
        return {"status": "skipped (--skip-8b)"}
    builder.join()
    if "error" in built:
        return {"status": "FAIL (random checkpoint)", "error": built["error"]}
    from firm_lite.bench.acceptance_8b import run_bench_8b

    return {"status": "run", "checkpoint": str(built["path"]), **run_bench_8b(opts, dtype, built["path"])}


def run_onnx_rows(opts: AcceptanceOptions, rows: list[Row], pairs: list[Any], reference: dict[str, Any]) -> None:
    """ONNX fp32 and fp16 on the CUDA provider (any TensorRT opt-in removed first), then fp16 on
    TensorRT in a copy prepared with ``export tensorrt`` for this batch and image size."""
    from firm_lite.export.onnx.tensorrt import EngineLimits, budget_image_tokens, prepare_tensorrt, text_token_budget
    from firm_lite.onnx.providers import TENSORRT_CONFIG

    for row in rows:
        folder = Path(row.variant)
        if row.name.endswith("+tensorrt"):
            source = opts.scratch / "tiny-onnx-fp16"
            if not _complete(source):
                row.status, row.error = "FAIL (export)", "the ONNX fp16 export is missing"
                continue
            if not (folder / TENSORRT_CONFIG).is_file():
                shutil.rmtree(folder, ignore_errors=True)
                shutil.copytree(source, folder, ignore=shutil.ignore_patterns("tensorrt"))
                limits = EngineLimits(max_batch=4, opt_batch=4, max_image_tokens=budget_image_tokens(folder),
                                      max_text_tokens=text_token_budget())
                try:
                    row.backend = prepare_tensorrt(folder, limits=limits, device=opts.device, build=True)
                except Exception as exc:  # noqa: BLE001 - a harness row: recorded, reported, fails the run
                    row.status, row.error = "FAIL (tensorrt build)", f"{type(exc).__name__}: {exc}"[:300]
                    continue
        else:
            shutil.rmtree(folder / TENSORRT_CONFIG.parent, ignore_errors=True)
        run_torch_row(row, pairs, reference, opts.device)


def _tiny_config() -> dict[str, Any]:
    from firm_lite.sources import tiny_critic_dir

    return json.loads((tiny_critic_dir() / "config.json").read_text("utf-8"))
