"""An installed wheel works without the checkout: `firm-lite export bnb`, `score --variant nf4`,
`--variant auto` and `--variant FOLDER`, run from a directory that is not the repository.

The recipes (firm_lite/data/recipes) and the tiny critic (firm_lite/assets/tiny-critic) are
package data; a package-data glob in pyproject.toml that misses one of them fails here, not on a
user's machine. The wheel is built from a copy of the sources (no build/ or egg-info left in the
checkout) and installed, not editable, into a venv that sees the system site-packages for its
dependencies (torch, transformers, bitsandbytes) so the check takes a minute, not a download.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.requires_extra("bnb")]

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str | Path], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(map(str, args))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the venv's bin folder, an empty working directory outside the checkout)."""
    pytest.importorskip("setuptools", reason="builds the wheel without build isolation (offline)")
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "firm_lite", source / "firm_lite", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", root / "dist",
         source], cwd=root)
    (wheel,) = (root / "dist").glob("firm_lite-*.whl")
    run([sys.executable, "-m", "venv", "--system-site-packages", root / "venv"], cwd=root)
    bin_dir = root / "venv" / "bin"
    run([bin_dir / "python", "-m", "pip", "install", "-q", "--no-deps", wheel], cwd=root)
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return bin_dir, elsewhere


def test_the_venv_imports_the_installed_wheel_not_the_checkout(installed) -> None:
    bin_dir, elsewhere = installed
    code = ("import json, firm_lite; from importlib.resources import files; "
            "print(json.dumps([firm_lite.__file__, str(files('firm_lite') / 'data' / 'recipes' / 'bnb-nf4.toml')]))")
    package, recipe = json.loads(run([bin_dir / "python", "-c", code], cwd=elsewhere).stdout)
    venv = bin_dir.parent
    assert Path(package).is_relative_to(venv) and Path(recipe).is_relative_to(venv), (package, recipe)
    assert Path(recipe).is_file()


def test_export_bnb_then_score_nf4_auto_and_the_folder_without_the_checkout(installed) -> None:
    bin_dir, elsewhere = installed
    cli = bin_dir / "firm-lite"
    out = elsewhere / "nf4"
    run([cli, "export", "bnb", "--model", "tiny", "--out", out, "--bits", "4", "--device", "cpu", "--no-progress"],
        cwd=elsewhere)
    manifest = json.loads((out / "firm_lite_variant.json").read_text("utf-8"))
    assert (manifest["backend"], manifest["bits"]) == ("bnb", 4) and manifest["recipe"]["sha256"]
    for variant in ("nf4", "auto", str(out)):
        doc = json.loads(run([cli, "score", "--model", "tiny", "--variant", variant, "--demo", "--device", "cpu",
                              "--json"], cwd=elsewhere).stdout)
        assert doc["summary"]["scored"] == 1, (variant, doc["summary"])
        record = doc["records"][0]
        assert record["error"] is None and all(record[m]["score"] in range(1, 6) for m in ("execution", "consistency"))
