"""``firm-lite export onnx|tensorrt`` option handling and import laziness (no export is run)."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from firm_lite.cli import main


def test_onnx_modules_import_no_heavy_library():
    code = ("import sys, firm_lite.cli.export_onnx, firm_lite.onnx, firm_lite.export.onnx.tensorrt, "
            "firm_lite.variants.onnx; "
            "heavy = [m for m in ('torch', 'onnxruntime', 'onnx', 'tensorrt', 'transformers') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"importing the ONNX CLI pulled in {done.stdout.strip()}"


def test_export_onnx_refuses_a_non_empty_out_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    result = CliRunner().invoke(main, ["export", "onnx", "--model", "tiny", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "not empty" in result.output and "--overwrite" in result.output
    assert "Traceback" not in result.output


def test_export_onnx_refuses_quantizing_fp16(tmp_path):
    result = CliRunner().invoke(main, ["export", "onnx", "--model", "tiny", "--out", str(tmp_path / "o"),
                                       "--dtype", "fp16", "--quantize", "int8"])
    assert result.exit_code == 2 and "--quantize needs --dtype fp32" in result.output


def test_export_tensorrt_needs_an_onnx_folder(tmp_path):
    result = CliRunner().invoke(main, ["export", "tensorrt", "--onnx", str(tmp_path)])
    assert result.exit_code == 2 and "not an exported variant folder" in result.output
