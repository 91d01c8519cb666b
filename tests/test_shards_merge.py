"""``--shard K/N`` and ``firm-lite merge`` (no Ray): N sharded runs merged are the single run,
byte for byte, bad rows included; merging refuses records of different critics, naming the field.

Byte-for-byte needs the same batches: a pair's fp32 probabilities move in the 7th digit when it is
scored in a batch of a different make-up (the scores do not), so the exact comparisons run at
``--batch-size 1`` and the default batch size is compared with a tolerance."""

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
from firm_lite.shards import Shard
from tests.cluster_data import write_manifest

TINY = CriticSettings(model="tiny", device="cpu")


PROBS_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def runs(tiny_critic, tmp_path_factory) -> dict[str, Path]:
    """A single run and three shard runs of the same manifest, at batch size 1 (``single``,
    ``shardK``) and at the default 4 (``single@4``, ``shardK@4``)."""
    folder = tmp_path_factory.mktemp("shards")
    manifest = write_manifest(folder)
    paths = {"manifest": manifest}
    for batch, tag in ((1, ""), (4, "@4")):
        paths["single" + tag] = folder / f"single{tag}.jsonl"
        score(TINY, manifest=manifest, out=paths["single" + tag], batch_size=batch)
        for k in range(3):
            paths[f"shard{k}{tag}"] = folder / f"shard{k}{tag}.jsonl"
            score(TINY, manifest=manifest, out=paths[f"shard{k}{tag}"], shard=f"{k}/3", batch_size=batch)
    return paths


def test_shards_split_the_manifest_by_id_into_disjoint_parts(runs) -> None:
    single = [json.loads(line) for line in runs["single"].read_text().splitlines()]
    assert len(single) == 12 and sum(1 for r in single if r["error"]) == 5  # 7 pairs + 5 bad rows
    ids = [[json.loads(line)["id"] for line in runs[f"shard{k}"].read_text().splitlines()] for k in range(3)]
    assert all(ids), "every shard got work"
    assert sorted(i for part in ids for i in part) == sorted(r["id"] for r in single)
    # the duplicate id's error row travels with its original
    dup = next(r["id"] for r in single if r["error"] and "duplicate id" in r["error"])
    assert sum(part.count(dup) for part in ids if dup in part) == 2


def test_sharded_runs_merged_equal_the_single_run_byte_for_byte(runs, tmp_path: Path) -> None:
    out = tmp_path / "merged.jsonl"
    run = merge_results([runs[f"shard{k}"] for k in (2, 0, 1)], out=out, manifest=runs["manifest"])
    assert out.read_bytes() == runs["single"].read_bytes()
    assert run.missing == [] and run.dropped == 0
    # without the manifest: the same records, in input order
    unordered = tmp_path / "unordered.jsonl"
    merge_results([runs[f"shard{k}"] for k in range(3)], out=unordered)
    assert sorted(unordered.read_text().splitlines()) == sorted(runs["single"].read_text().splitlines())


def test_at_the_default_batch_size_shards_give_the_same_scores_and_errors(runs, tmp_path: Path) -> None:
    merged = merge_results([runs[f"shard{k}@4"] for k in range(3)], out=tmp_path / "m.jsonl",
                           manifest=runs["manifest"]).records
    single = [json.loads(line) for line in runs["single@4"].read_text().splitlines()]
    assert [(r["id"], r["error"]) for r in merged] == [(r["id"], r["error"]) for r in single]
    gaps = []
    for a, b in zip(merged, single, strict=True):
        for mode in ("execution", "consistency"):
            if a["error"] is None:
                assert a[mode]["score"] == b[mode]["score"] and a[mode]["raw"] == b[mode]["raw"], a["id"]
                gaps.append((max(abs(p - q) for p, q in zip(a[mode]["probs"], b[mode]["probs"], strict=True)),
                             a["id"], mode))
    worst = sorted(gaps, reverse=True)[:3]
    assert worst[0][0] < PROBS_TOLERANCE, f"largest probability differences: {worst}"


def test_merge_cli_counts_rows_not_scored_yet(runs, tmp_path: Path) -> None:
    out = tmp_path / "partial.jsonl"
    result = CliRunner().invoke(main, ["merge", str(runs["shard0"]), "--manifest", str(runs["manifest"]),
                                       "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    missing = 12 - len(runs["shard0"].read_text().splitlines())
    assert f"{missing} manifest row(s) have no record yet" in result.stderr
    assert out.read_text().splitlines() == [line for line in runs["single"].read_text().splitlines()
                                            if line in runs["shard0"].read_text().splitlines()]


def _record(pair_id: str, error: str | None = None, variant: str = "default:fp32", max_pixels: int = 25600) -> dict:
    ok = None if error else {"score": 4, "expected": 3.9, "probs": [0.1, 0.1, 0.1, 0.2, 0.5], "reasoning": "r",
                             "parse_ok": True, "raw": "{}"}
    return {"id": pair_id, "model": "firm-lite/tiny-critic", "variant": variant,
            "image_budget": {"min_pixels": 4096, "max_pixels": max_pixels, "patch_size": 16, "merge_size": 2},
            "execution": ok, "consistency": ok, "cme": None, "cme_expected": None, "error": error}


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_latest_success_wins_and_errors_stay_unless_a_success_follows(tmp_path: Path) -> None:
    first = _write(tmp_path / "a.jsonl", [_record("x", error="pair x: image not found"), _record("y"),
                                          _record("z", error="pair z: empty instruction")])
    later = _write(tmp_path / "b.jsonl", [_record("x"), _record("y", error="pairs.jsonl:9: duplicate id 'y'")])
    with (tmp_path / "b.jsonl").open("a") as fh:
        fh.write('{"id": "w", "model": "firm-lite/tin')  # a run killed mid-write
    run = merge_results([first, later], out=tmp_path / "m.jsonl")
    kept = [(r["id"], r["error"]) for r in run.records]
    assert kept == [("y", None), ("z", "pair z: empty instruction"), ("x", None),
                    ("y", "pairs.jsonl:9: duplicate id 'y'")]
    assert run.dropped == 1


@pytest.mark.parametrize(("change", "said"), [
    ({"variant": "default:fp32+fast"}, "protocol is full"),
    ({"variant": "nf4"}, 'variant is "default:fp32"'),
    ({"max_pixels": 50176}, "image_budget.max_pixels is 25600"),
])
def test_merge_refuses_records_of_different_critics_naming_the_field(tmp_path: Path, change: dict, said: str) -> None:
    a = _write(tmp_path / "a.jsonl", [_record("x"), _record("y")])
    b = _write(tmp_path / "b.jsonl", [_record("z", **change)])
    with pytest.raises(UserError, match=said) as err:
        merge_results([a, b], out=tmp_path / "m.jsonl")
    assert f"{a}:1" in str(err.value) and f"{b}:1" in str(err.value)
    assert not (tmp_path / "m.jsonl").exists()
    result = CliRunner().invoke(main, ["merge", str(a), str(b), "--out", str(tmp_path / "m.jsonl")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1 and said in result.stderr


def test_merge_refuses_to_write_into_its_inputs(tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    a = _write(parts / "part-00001.jsonl", [_record("x")])
    with pytest.raises(UserError, match="also an input"):
        merge_results([a], out=a)
    with pytest.raises(UserError, match="inside an input folder"):
        merge_results([parts], out=parts / "merged.jsonl")


def test_shard_spec_is_checked_and_stable_across_processes(tmp_path: Path) -> None:
    assert Shard.parse(" 2 / 4 ") == Shard(2, 4)
    for bad in ("4/4", "1", "-1/3", "a/b", "0/0"):
        with pytest.raises(UserError, match="--shard"):
            Shard.parse(bad)
    # sha256 of the id, not Python's per-process salted hash(): every process must agree
    assert [[k for k in range(4) if Shard(k, 4).holds(i)] for i in ("heldout-0000-0", "heldout-0000-1")] == [[0], [1]]
    with pytest.raises(UserError, match="--shard splits a --manifest"):
        score(TINY, source="a.png", edited="b.png", instruction="x", shard="0/2")
