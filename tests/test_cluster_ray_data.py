"""``firm-lite score --ray`` on a local Ray with 2 CPUs: the records of a Ray Data run, stopped
halfway and resumed, merged, are the single-process run's byte for byte, bad rows included.

One Ray session for the module (ray.init ~10 s, each run's 2 actors ~10 s more on a 2-core box);
comparisons at --batch-size 1 (see tests/test_shards_merge.py for why exactness needs equal batches).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from firm_lite.cli import main
from firm_lite.errors import UserError
from firm_lite.merge import merge_results
from firm_lite.scoring import score
from firm_lite.settings import CriticSettings
from tests.cluster_data import write_manifest

ray = pytest.importorskip("ray")

TINY = CriticSettings(model="tiny", device="cpu")


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def single(tiny_critic, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("raydata")
    manifest = write_manifest(folder)
    out = folder / "single.jsonl"
    score(TINY, manifest=manifest, out=out, batch_size=1)
    return manifest, out


def _workers_released(ray_module, within_s: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + within_s
    while ray_module.available_resources().get("CPU", 0) < ray_module.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, f"a stopped run still holds workers: {ray_module.available_resources()}"
        time.sleep(0.2)


class _Stop(KeyboardInterrupt):
    """Ctrl-C on the driver, raised from inside the record loop."""


def test_stopped_halfway_then_resumed_equals_the_single_run(ray_cluster, single, tmp_path: Path) -> None:
    from firm_lite.cluster.batch import part_files, score_on_ray

    manifest, single_out = single
    total = len(single_out.read_text().splitlines())
    folder = tmp_path / "scores"
    seen: list[dict] = []

    def stop_after_five(record: dict) -> None:
        seen.append(record)
        if len(seen) == 5:
            raise _Stop

    with pytest.raises(_Stop):
        score_on_ray(TINY, manifest=manifest, out=folder, workers=2, batch_size=1, on_record=stop_after_five)
    _workers_released(ray_cluster)  # the stopped run scores nothing more in the background
    [first] = part_files(folder)
    assert len(first.read_text().splitlines()) == 5  # everything handed to the driver was written
    with first.open("a") as fh:
        fh.write('{"id": "heldout-0003-1", "model": "firm-lite/ti')  # and a crash mid-write leaves half a line

    result = CliRunner().invoke(main, ["score", "--model", "tiny", "--device", "cpu", "--manifest", str(manifest),
                                       "--out", str(folder), "--ray", "--workers", "2", "--batch-size", "1", "--json"])
    said = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.exit_code == 1, said  # 1: the manifest's bad rows are error records
    summary = json.loads(result.stdout)["summary"]
    assert summary["skipped"] == 5 and summary["scored"] + summary["failed"] == total - 5, said
    assert len(part_files(folder)) == 2, part_files(folder)

    merged = tmp_path / "merged.jsonl"
    merge_results([folder], out=merged, manifest=manifest)
    assert merged.read_bytes() == single_out.read_bytes()

    again = CliRunner().invoke(main, ["score", "--model", "tiny", "--device", "cpu", "--manifest", str(manifest),
                                      "--out", str(folder), "--ray", "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["summary"]["skipped"] == total, again.output  # Ray not even asked


def test_bad_ray_configurations_are_one_line(ray_cluster, single, tmp_path: Path) -> None:
    from firm_lite.cluster.batch import score_on_ray

    manifest, single_out = single
    with pytest.raises(UserError, match="is a file"):
        score_on_ray(TINY, manifest=manifest, out=single_out)
    with pytest.raises(UserError, match=r"4 worker\(s\) x 1 CPUs need 4 CPUs, but the Ray cluster"):
        score_on_ray(TINY, manifest=manifest, out=tmp_path / "x", workers=4)
    with pytest.raises(UserError, match="need 1 GPUs, but the Ray cluster"):
        score_on_ray(TINY, manifest=manifest, out=tmp_path / "y", gpus_per_worker=1)
    for args, said in ((["--shard", "0/2"], "--shard and --ray both split"),
                       ([], "--ray needs --out DIR")):
        out = [] if not args else ["--out", str(tmp_path / "z")]
        result = CliRunner().invoke(main, ["score", "--model", "tiny", "--manifest", str(manifest), "--ray",
                                           *out, *args])
        assert result.exit_code == 2 and said in result.stderr and len(result.stderr.strip().splitlines()) == 1
