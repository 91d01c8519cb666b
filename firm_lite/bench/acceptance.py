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
   predicted; vLLM rows when ``firm_lite.vllm_backend`` and vLLM are importable.

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

log = logging.getLogger(__name__)

HELDOUT = Path(__file__).resolve().parents[2] / "calibration" / "editset-heldout.jsonl"
EXPECT_IDENTICAL = ("fp32", "onnx-fp32")
MIN_AGREEMENT = 0.5  # below this a variant is broken, not drifting


@dataclass
class AcceptanceOptions:
    out: Path = Path("bench/results/gpu-check")
    scratch: Path = Path("/tmp/firm-lite-gpu-check")
    device: str = "cuda"
    dry_run: bool = False
    tiny_pairs: int = 6
    shape: str = "8b"  # "8b": the real Qwen3-VL-8B shape; "tiny": the tiny critic's (CPU smoke run)
    bench_pairs: int = 2
    batch_sizes: tuple[int, ...] = (1, 2)
    max_new_tokens: int = 32
    image_size: int = 1024
    cap_gib: float | None = 24.0
    skip_8b: bool = False
    timeout_s: int = 420


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


def extra_installed(extra: str | None) -> bool:
    from importlib.util import find_spec

    modules = {None: (), "bnb": ("bitsandbytes",), "gptq": ("gptqmodel", "optimum"),
               "onnx": ("onnx", "onnxruntime", "onnxscript"), "vllm": ("vllm",)}[extra]
    return all(find_spec(m) is not None for m in modules)


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
    if rows[-1].status == "planned" and not _vllm_backend_importable():
        rows[-1].status = "skipped: firm_lite.vllm_backend is not importable"
    if dtype == "fp16":
        rows[1].status = "planned (bf16 is emulated on this GPU; fp16 is the default here)"
    return rows


def _vllm_backend_importable() -> bool:
    try:
        import firm_lite.vllm_backend  # noqa: F401
    except ImportError:
        return False
    return True


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
            proc = subprocess.Popen(_cli("-q", "export", "onnx", "--model", "tiny", "--dtype", dtype, "--out",
                                         str(folder), "--overwrite"), stdout=subprocess.DEVNULL)
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


# ---- the 8B-shape bench -------------------------------------------------------------------------

def bench_variants(dtype: str) -> list[tuple[str, str | None]]:
    """(variant, extra it needs): the reference precision, bitsandbytes nf4 and int8, GPTQ w4."""
    return [(dtype, None), ("nf4", "bnb"), ("int8", "bnb"), ("gptq", "gptq")]


def plan_rows(checkpoint: Path, dtype: str, opts: AcceptanceOptions) -> dict[str, float]:
    """What ``firm-lite plan`` predicts (GiB) per benched variant, for the largest batch."""
    from firm_lite.plan import GIB, plan

    rows = plan(str(checkpoint), opts.cap_gib, (opts.image_size, opts.image_size), dtype, max(opts.batch_sizes))
    names = {"gptq-w4-g128": "gptq"}
    return {names.get(r.variant, r.variant): round(r.total / GIB, 2) for r in rows}


def run_bench_8b(opts: AcceptanceOptions, dtype: str, checkpoint: Path) -> dict[str, Any]:
    from firm_lite.bench.runner import bench
    from firm_lite.bench.synthetic import make_random_gptq_checkpoint, make_synthetic_manifest
    from firm_lite.settings import CriticSettings

    skipped, names = {}, []
    for variant, extra in bench_variants(dtype):
        if not extra_installed(extra):
            skipped[variant] = f"the {extra} extra is not installed"
        elif variant == "gptq":
            names.append(str(make_random_gptq_checkpoint(checkpoint, opts.scratch / "random-gptq-w4")))
        else:
            names.append(variant)
    manifest = make_synthetic_manifest(opts.scratch / "pairs", opts.bench_pairs, opts.image_size)
    pixels = opts.image_size ** 2
    settings = CriticSettings(model=str(checkpoint), device=opts.device, dtype=dtype, min_pixels=pixels,
                              max_pixels=pixels, max_new_tokens=opts.max_new_tokens, memory_cap_gib=opts.cap_gib)
    result = bench(settings, variants=names, manifest=manifest, batch_sizes=list(opts.batch_sizes), out=opts.out,
                   name="gpu-8b-random", timeout_s=opts.timeout_s, progress=True)
    planned = plan_rows(checkpoint, dtype, opts)
    memory = []
    for v in result["variants"]:
        key = "gptq" if Path(v["variant"]).name == "random-gptq-w4" else v["variant"]
        peak = v.get("peak_memory") or {}
        gib = lambda b: None if b is None else round(b / 2**30, 2)  # noqa: E731
        memory.append({"variant": key, "planned_gib": planned.get(key), "peak_gib": gib(peak.get("peak_bytes")),
                       "torch_reserved_gib": gib(peak.get("torch_reserved_peak")),
                       "device_rise_gib": gib(peak.get("device_used_rise")), "method": peak.get("method"),
                       "error": v.get("error"), "backend": (v.get("provenance") or {}).get("backend")})
    if extra_installed("vllm") and _vllm_backend_importable():
        memory += run_vllm_bench(opts, checkpoint, manifest, dtype)
    else:
        skipped["vllm"] = "vLLM or firm_lite.vllm_backend is not importable"
    return {"results": str(Path(opts.out) / "gpu-8b-random.json"), "memory": memory, "skipped": skipped,
            "int8_note": "random weights have no activation outliers: LLM.int8's outlier path is idle, so int8 "
                         "timings here are a lower bound for real weights"}


def run_vllm_bench(opts: AcceptanceOptions, checkpoint: Path, manifest: Path, dtype: str) -> list[dict[str, Any]]:
    """vLLM rows, each in its own process (vLLM's engine processes come and go with it)."""
    rows = []
    for label, folder in ((f"vllm-{dtype}", checkpoint), ("vllm-gptq", opts.scratch / "random-gptq-w4")):
        spec = {"folder": str(folder), "manifest": str(manifest), "device": opts.device, "dtype": dtype,
                "max_new_tokens": opts.max_new_tokens, "pixels": opts.image_size ** 2, "cap_gib": opts.cap_gib}
        out = opts.scratch / f"{label}.json"
        out.unlink(missing_ok=True)
        proc = subprocess.run([sys.executable, "-m", "firm_lite.bench.acceptance", "vllm", json.dumps(spec),
                               str(out)], timeout=opts.timeout_s, capture_output=True, text=True)
        if proc.returncode or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            rows.append({"variant": label, "error": f"exited {proc.returncode}: {tail[0][:300]}"})
        else:
            rows.append({"variant": label, **json.loads(out.read_text("utf-8"))})
    return rows


def vllm_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One vLLM row: engine start, one timed pass over the pairs, device-level peak memory."""
    import torch
    from transformers import AutoProcessor

    from firm_lite.device import PeakMemory
    from firm_lite.generation import DecodingConfig
    from firm_lite.images import ImageBudget, load_image
    from firm_lite.manifest import read_manifest
    from firm_lite.prompts import render_text
    from firm_lite.vllm_backend import VllmEngine, VllmOptions

    device = torch.device(spec["device"])
    folder = Path(spec["folder"])
    processor = AutoProcessor.from_pretrained(folder)
    budget = ImageBudget.from_processor(processor, spec["pixels"], spec["pixels"])
    pairs = [r.pair for r in read_manifest(spec["manifest"]) if r.pair is not None]
    items = [(p, load_image(p.source, budget=budget), load_image(p.edited, budget=budget)) for p in pairs]
    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    share = min(0.9, spec["cap_gib"] * 2**30 / total) if total and spec.get("cap_gib") else 0.9
    with PeakMemory(device) as peak:
        start = time.perf_counter()
        engine = VllmEngine(folder, processor, lambda m, i, r: render_text(processor, m, i, r), budget,
                            DecodingConfig(max_new_tokens=spec["max_new_tokens"]), dtype=spec["dtype"],
                            options=VllmOptions(gpu_memory_utilization=share, enforce_eager=True))
        load_s = time.perf_counter() - start
        timings: dict[str, float] = {}
        start = time.perf_counter()
        engine.score_modes(items, timings=timings)
        seconds = time.perf_counter() - start
        engine.close()
    report = peak.report()
    return {"load_s": round(load_s, 1), "pairs_per_s": round(len(items) / seconds, 3),
            "decode_tokens": timings.get("decode_tokens"), "peak_gib": round((report["peak_bytes"] or 0) / 2**30, 2),
            "method": report["method"], "gpu_memory_utilization": share,
            "note": "vLLM reserves gpu_memory_utilization of the card for its KV cache up front"}


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
                    row.status, row.error = "FAIL (export)", f"export onnx exited {proc.returncode}"
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["vllm"]:  # the vLLM row's own process
        Path(argv[2]).write_text(json.dumps(vllm_worker(json.loads(argv[1]))), "utf-8")
        return 0
    raise SystemExit("usage: python bench/gpu_check.py --help")


if __name__ == "__main__":
    sys.exit(main())
