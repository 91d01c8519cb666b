"""Hostile and careless input to the CLI's door (images, manifests, --out): each case gets a clear
one-line outcome, memory stays bounded, and no row is lost. The server's door has its own suite
(tests/test_adversarial_server.py). Add a case here whenever a new way of breaking input is found."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from firm_lite.errors import ImageError, ManifestError, PairError, UserError
from firm_lite.images import ImageBudget, load_image, probe_image, reduce_factor
from firm_lite.manifest import ResultWriter, read_manifest, read_results
from firm_lite.records import check_text
from firm_lite.settings import CriticSettings

TINY_BUDGET = ImageBudget(min_pixels=32 * 32, max_pixels=160 * 160)


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


# -- images ---------------------------------------------------------------------------------------
def test_huge_png_is_shrunk_to_what_the_budget_keeps() -> None:
    data = _png((8000, 8000), "L")  # the black 8000x8000 PNG (a few hundred KB)
    out = load_image(data, budget=TINY_BUDGET)
    # kept at >= 2x the processor's 160x160 target and < 4x: the 64 MP decode is not what is kept
    assert 320 <= out.size[0] < 640 and out.size[0] == out.size[1]
    assert reduce_factor(8000, 8000, TINY_BUDGET) == 25
    assert load_image(data).size == (8000, 8000)  # without a budget nothing is shrunk


def test_large_jpeg_is_decoded_at_reduced_scale_and_keeps_its_orientation(tmp_path: Path) -> None:
    im = Image.new("RGB", (4000, 2000), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees
    path = tmp_path / "big.jpg"
    im.save(path, exif=exif.tobytes())
    out = load_image(path, budget=TINY_BUDGET)
    assert out.size[1] > out.size[0]  # rotated as displayed
    assert max(out.size) <= 1000  # DCT-scaled decode, then reduced: never 8 MP kept
    r, g, b = out.getpixel((out.size[0] // 2, out.size[1] // 2))
    assert r > 150 and g < 60 and b < 60


def test_images_at_the_budget_are_decoded_untouched() -> None:
    # the edit set's 160 px images: shrinking must not change a single pixel the critic sees
    data = _png((160, 128))
    assert reduce_factor(160, 128, TINY_BUDGET) == 1
    assert load_image(data, budget=TINY_BUDGET).size == (160, 128)


def test_palette_and_16bit_images_shrink_too() -> None:
    assert load_image(_png((3000, 3000), "P"), budget=TINY_BUDGET).mode == "RGB"
    buf = io.BytesIO()
    Image.new("I;16", (3000, 3000)).save(buf, format="PNG")
    assert max(load_image(buf.getvalue(), budget=TINY_BUDGET).size) < 3000


def test_device_files_and_fifos_are_refused_without_reading(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not a regular file"):
        load_image("/dev/zero")  # would be read forever
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(fifo)  # opening would block until a writer comes


def test_eps_and_other_plugins_are_not_opened() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageError, match="not an image firm-lite reads"):
        load_image(eps)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PCX")  # Pillow reads PCX; nobody sends edits as PCX
    with pytest.raises(ImageError, match="not an image firm-lite reads"):
        load_image(buf.getvalue())


def test_probe_reads_the_header_only() -> None:
    assert probe_image(_png((8000, 8000), "L")) == (8000, 8000)
    with pytest.raises(ImageError, match="pixel limit"):
        probe_image(_png((8000, 8000), "L"), max_image_pixels=1_000_000)


# -- text -----------------------------------------------------------------------------------------
def test_lone_surrogates_are_refused_with_the_field_named() -> None:
    assert check_text("a red hat é 帽子", "instruction") == "a red hat é 帽子"
    with pytest.raises(PairError, match=r"instruction is not valid Unicode text: lone surrogate U\+D800"):
        check_text("red \ud800", "instruction")
    with pytest.raises(PairError, match="must be a string"):
        check_text(None, "requirement")


# -- manifests ------------------------------------------------------------------------------------
def _write(path: Path, lines: list[str], bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + ("\n".join(lines) + "\n").encode("utf-8"))
    return path


def _row(pair_id: object, **kw: object) -> str:
    base = {"id": pair_id, "source": "s.png", "edited": "e.png", "instruction": "add a hat"}
    base.update(kw)
    return json.dumps(base)


def test_bom_is_accepted(tmp_path: Path) -> None:
    rows = list(read_manifest(_write(tmp_path / "m.jsonl", [_row("a"), _row("b")], bom=True)))
    assert [(r.id, r.error) for r in rows] == [("a", None), ("b", None)]


def test_ids_are_strings_or_integers_and_never_merged_silently(tmp_path: Path) -> None:
    lines = [_row(1), _row("1"), _row(None), _row([1, 2]), _row(2.5), _row(True), _row("x"),
             json.dumps({"source": "s.png", "edited": "e.png", "instruction": "no id"})]
    rows = list(read_manifest(_write(tmp_path / "m.jsonl", lines)))
    assert rows[0].id == "1" and rows[0].error is None
    assert rows[1].id == "1" and "duplicate id '1'" in rows[1].error and "first on line 1" in rows[1].error
    for row, line in zip(rows[2:6], (3, 4, 5, 6), strict=True):  # refused, under their line's id
        assert row.id == f"line-{line}" and "id must be a string or an integer" in row.error
    assert rows[6].id == "x" and rows[6].error is None
    assert rows[7].id == "line-8" and rows[7].error is None


def test_surrogates_in_a_row_make_an_error_row_not_a_crash(tmp_path: Path) -> None:
    # json.dumps writes "\ud800" as an escape, which json.loads turns back into a lone surrogate
    lines = [_row("ok"), _row("bad-text", instruction="red \ud800"), _row("bad\ud800"),
             _row("bad-req", requirement="\udfff")]
    rows = list(read_manifest(_write(tmp_path / "m.jsonl", lines)))
    assert rows[0].error is None
    assert rows[1].id == "bad-text" and "lone surrogate" in rows[1].error
    assert rows[2].id == "line-3" and "id is not valid Unicode" in rows[2].error
    assert rows[3].id == "bad-req" and "requirement is not valid Unicode" in rows[3].error


def test_manifest_must_be_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "m.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(ManifestError, match="not a regular file"):
        list(read_manifest(fifo))
    with pytest.raises(ManifestError, match="folder"):
        list(read_manifest(tmp_path))


# -- result files ---------------------------------------------------------------------------------
def test_out_must_be_a_regular_writable_file(tmp_path: Path) -> None:
    for bad, match in (("/dev/full", "not a regular file"), (str(tmp_path), "folder"),
                       ("/proc/nope/x.jsonl", "cannot write")):
        with pytest.raises(UserError, match=match):
            read_results(bad)
            ResultWriter(bad)


def test_a_success_is_never_hidden_by_a_later_error_row(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in (
        {"id": "a", "error": "first try failed"}, {"id": "a", "error": None, "cme": 0.5},
        {"id": "a", "error": "duplicate id 'a'"}, {"id": "b", "error": "x"}, {"id": "b", "error": "y"})))
    done = read_results(out)
    assert done["a"]["error"] is None and done["a"]["cme"] == 0.5
    assert done["b"]["error"] == "y"


# -- whole runs (tiny critic) ---------------------------------------------------------------------
class _Killed(BaseException):
    """Stands in for kill -9: nothing after it runs (BaseException: no handler catches it)."""


def test_resume_after_a_crash_never_loses_a_duplicated_id(tiny_critic, pairs_dir: Path, monkeypatch) -> None:
    from firm_lite.scoring import score

    rows = [_row(f"k{i:03d}", source=f"src{i % 3}.png", edited=f"edt{i % 3}.png") for i in range(6)]
    rows.append(_row("k001", source="src0.png", edited="edt0.png", instruction="a second k001"))
    manifest = _write(pairs_dir / "m.jsonl", rows)
    out = pairs_dir / "o.jsonl"
    real_write = ResultWriter.write
    written = []

    def write_then_die(self: ResultWriter, record: dict) -> None:
        if len(written) == 2:
            raise _Killed
        real_write(self, record)
        written.append(record["id"])

    monkeypatch.setattr(ResultWriter, "write", write_then_die)
    with pytest.raises(_Killed):
        score(CriticSettings(model="tiny", device="cpu"), manifest=manifest, out=out, batch_size=4)
    monkeypatch.setattr(ResultWriter, "write", real_write)
    assert written == ["k000", "k001"]  # manifest order: the duplicate's error row comes after k001
    run = score(CriticSettings(model="tiny", device="cpu"), manifest=manifest, out=out, batch_size=4)
    assert run.skipped == 2
    done = read_results(out)
    assert sorted(done) == [f"k{i:03d}" for i in range(6)]
    assert all(done[k]["error"] is None for k in done)  # every id scored; k001's duplicate did not hide it
    errors = [json.loads(line) for line in out.read_text().splitlines() if json.loads(line)["error"]]
    assert [e["id"] for e in errors] == ["k001"] and "duplicate id" in errors[0]["error"]


def test_one_bad_row_does_not_abort_the_run(tiny_critic, pairs_dir: Path) -> None:
    from firm_lite.scoring import score

    rows = [_row("a", source="src0.png", edited="edt0.png"), _row("b", instruction="red \ud800",
                                                                    source="src1.png", edited="edt1.png"),
            _row("bad\ud800"), _row("c", source="src2.png", edited="edt2.png")]
    out = pairs_dir / "o.jsonl"
    run = score(CriticSettings(model="tiny", device="cpu"), manifest=_write(pairs_dir / "m.jsonl", rows), out=out)
    by_id = {r["id"]: r for r in run.records}
    assert set(by_id) == {"a", "b", "line-3", "c"}
    assert by_id["a"]["error"] is None and by_id["c"]["error"] is None
    assert "lone surrogate" in by_id["b"]["error"] and "lone surrogate" in by_id["line-3"]["error"]
    assert len(out.read_text("utf-8").splitlines()) == 4  # every row written, the file is valid UTF-8


def test_a_batch_that_raises_fails_only_its_guilty_item(tiny_critic, pairs_dir: Path, monkeypatch) -> None:
    from firm_lite.records import EditPair

    real = type(tiny_critic).score_modes

    def poisoned(self, items, modes=("execution", "consistency"), timings=None):
        if any(pair.instruction == "poison" for pair, _, _ in items):
            raise ValueError("tokenizer exploded")
        return real(self, items, modes, timings)

    monkeypatch.setattr(type(tiny_critic), "score_modes", poisoned)
    pairs = [EditPair(str(i), pairs_dir / f"src{i}.png", pairs_dir / f"edt{i}.png", text)
             for i, text in enumerate(["add a red square", "poison", "add a red square"])]
    records = tiny_critic.score(pairs, batch_size=3)
    assert [r["error"] is None for r in records] == [True, False, True]
    assert "scoring failed (ValueError: tokenizer exploded)" in records[1]["error"]


def test_bad_out_is_a_usage_error_before_the_model_loads(pairs_dir: Path, monkeypatch) -> None:
    import firm_lite.critic
    from firm_lite.scoring import score

    def no_load(**_: object) -> None:
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(firm_lite.critic, "load_critic", no_load)
    manifest = _write(pairs_dir / "m.jsonl", [_row("a", source="src0.png", edited="edt0.png")])
    for bad in ("/proc/nope/x.jsonl", "/dev/full"):
        with pytest.raises(UserError, match="--out"):
            score(CriticSettings(model="tiny", device="cpu"), manifest=manifest, out=bad)
