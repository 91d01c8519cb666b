"""``firm-lite report``: the numbers it reports, the files it writes, and what it does with bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from firm_lite.errors import UserError
from firm_lite.report import make_report
from firm_lite.report.load import read_score_file
from firm_lite.report.page import json_for_script
from tests.report_data import MALICIOUS, comparison_inputs, make_images, record, write_jsonl


def _data_block(html: str) -> dict:
    block = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', html, re.S)
    assert block, "the page has no data block"
    return json.loads(block.group(1))


def test_leaderboard_numbers_are_the_hand_computed_means(tmp_path: Path) -> None:
    # CME(5,5) = 1, CME(1,5) = 0, CME(3,5) = 0.5 * (0.6 + 0.4) = 0.5, CME(5,3) = 0.6 + 0.4 * 0.5 = 0.8
    recs = [record("a", 5, 5), record("b", 1, 5), record("c", 3, 5), record("d", 5, 3),
            record("e", None, 5), record("f", 0, 0, error="edited image: file not found")]
    path = write_jsonl(tmp_path / "model.jsonl", recs)
    row = make_report([path]).summary["leaderboard"][0]
    assert row["metrics"]["cme"]["mean"] == pytest.approx((1 + 0 + 0.5 + 0.8) / 4)
    assert row["metrics"]["cme"]["n"] == 4
    assert row["metrics"]["execution"]["mean"] == pytest.approx((5 + 1 + 3 + 5) / 4)
    assert row["metrics"]["consistency"]["mean"] == pytest.approx((5 + 5 + 5 + 3 + 5) / 5)
    assert (row["pairs"], row["scored"], row["errors"]) == (6, 5, 1)
    assert row["parse_failures"] == {"execution": 1, "consistency": 0, "any": 1}
    low, high = row["metrics"]["cme"]["low"], row["metrics"]["cme"]["high"]
    assert 0 <= low < row["metrics"]["cme"]["mean"] < high <= 1


def test_clearly_worse_model_ranks_second_and_identical_files_tie(tmp_path: Path) -> None:
    data = comparison_inputs(tmp_path)
    summary = make_report([data.poor, data.good], manifests=[data.manifest]).summary
    assert [r["name"] for r in summary["leaderboard"]] == ["good", "poor"]
    good, poor = (r["metrics"]["cme"] for r in summary["leaderboard"])
    assert good["low"] > poor["high"], "the intervals of a clearly better model should not overlap"
    cmp = summary["comparisons"][0]
    assert (cmp["a"], cmp["b"], cmp["cme"]["verdict"], cmp["cme"]["n"]) == ("good", "poor", "A better", 59)

    same = make_report([data.good, data.good], names=["run1", "run2"]).summary
    cme = same["comparisons"][0]["cme"]
    assert (cme["verdict"], cme["wins"], cme["losses"], cme["mean_diff"]) == ("not distinguishable", 0, 0, 0.0)


def test_per_category_columns_come_from_the_manifest(tmp_path: Path) -> None:
    data = comparison_inputs(tmp_path)
    summary = make_report([data.good], manifests=[data.manifest]).summary
    assert summary["categories"] == ["colour", "remove", "style"]
    remove = summary["leaderboard"][0]["categories"]["remove"]["cme"]
    # "remove" pairs are i = 0, 3, 6, ..., 57 (20 of them); good has CME 0.75 where i % 4 == 0, else 1.
    expected = [0.75 if i % 4 == 0 else 1.0 for i in range(0, 60, 3)]
    assert remove["n"] == 20 and remove["mean"] == pytest.approx(sum(expected) / 20)


def test_page_json_and_markdown_are_written(tmp_path: Path) -> None:
    data = comparison_inputs(tmp_path)
    run = make_report([data.good, data.poor], manifests=[data.manifest], out=tmp_path / "r.html",
                      json_out=tmp_path / "r.json", markdown=tmp_path / "r.md")
    html = (tmp_path / "r.html").read_text("utf-8")
    assert json.loads((tmp_path / "r.json").read_text("utf-8"))["leaderboard"] == run.summary["leaderboard"]
    md = (tmp_path / "r.md").read_text("utf-8")
    assert "| 1 | good | 60 | 0 | 0 |" in md and "good better" in md
    gallery = _data_block(html)
    assert gallery["models"] == ["good", "poor"] and len(gallery["pairs"]) == 60
    assert len(gallery["images"]) == 6  # six image files, each embedded once
    assert run.summary["images"]["missing"] == 1 and "gone.png" in run.summary["images"]["missing_examples"][0]
    assert any("could not be shown" in w for w in run.summary["warnings"])
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html  # no CDN, no fetch


def test_untrusted_text_is_escaped_everywhere(tmp_path: Path) -> None:
    data = comparison_inputs(tmp_path)
    out = tmp_path / "r.html"
    make_report([data.good, data.poor], names=["<b>bold</b>", "poor"], manifests=[data.manifest], out=out)
    html = out.read_text("utf-8")
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    assert "window.__pwned" not in html.split('id="report-data"')[0]
    block = html.split('<script id="report-data" type="application/json">')[1].split("</script>")[0]
    assert "<" not in block  # nothing in the data block can close it or open a tag
    pair = next(p for p in _data_block(html)["pairs"] if p["id"] == data.malicious_id)
    assert pair["ins"] == MALICIOUS  # ... and the text survives exactly
    csp = re.search(r'Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp and "unsafe-inline" not in \
        csp.split("script-src")[1].split(";")[0]


def test_json_for_script_round_trips_separators_and_tags() -> None:
    text = json_for_script({"s": "</script>\u2028&<!--"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"s": "</script>\u2028&<!--"}


def test_bad_lines_are_counted_and_named(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [record("a", 5, 5), record("b", 1, 5)],
                       raw_lines=(b'{"id": "c", "execution": \xff\xfe}\n', b"[1, 2]\n", b'{"no_id": 1}\n',
                                  b'{"id": "d", "execution": {"score": 5, "reas'))
    read = read_score_file(path)
    reasons = [str(b) for b in read.bad_lines]
    assert len(reasons) == 4
    assert reasons[0].startswith(f"{path}:3: not UTF-8 (byte 0xff")
    assert reasons[1].startswith(f"{path}:4: not a score record")
    assert reasons[2].startswith(f"{path}:5: not a score record")
    assert reasons[3].startswith(f"{path}:6: truncated JSON")
    assert sorted(read.runs[0].records) == ["a", "b"]
    summary = make_report([path]).summary
    assert summary["inputs"][0]["bad_lines"] == reasons
    assert any("4 unusable line(s)" in w for w in summary["warnings"])


def test_a_later_success_replaces_an_error_row_and_is_never_hidden_by_one(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [record("a", 0, 0, error="boom"), record("a", 5, 5),
                                               record("b", 1, 5), record("b", 0, 0, error="duplicate id")])
    read = read_score_file(path)
    assert read.superseded == 2
    assert read.runs[0].records["a"]["error"] is None and read.runs[0].records["b"]["error"] is None


def test_mixed_provenance_is_reported_per_group(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mixed.jsonl", [record("a", 5, 5, variant="fp32"), record("b", 5, 5, variant="fp32"),
                                                   record("a", 1, 5, variant="nf4")])
    summary = make_report([path]).summary
    names = sorted(r["name"] for r in summary["leaderboard"])
    assert names == ["mixed [tiny fp32 4096-25600 px]", "mixed [tiny nf4 4096-25600 px]"]
    assert "2 different model/variant/image-budget groups" in summary["warnings"][0]


def test_score_json_output_is_accepted_and_calibration_json_is_not_mixed_in(tmp_path: Path) -> None:
    doc = tmp_path / "run.json"
    doc.write_text(json.dumps({"records": [record("a", 5, 5)], "provenance": {}}), "utf-8")
    assert make_report([doc]).summary["leaderboard"][0]["pairs"] == 1
    cal = tmp_path / "calibration.json"
    cal.write_text(json.dumps({"variants": [], "reference": {}}), "utf-8")
    with pytest.raises(UserError, match="calibration result"):
        make_report([doc, cal])


@pytest.mark.parametrize("args, message", [
    (["missing.jsonl"], "score file missing.jsonl: file not found"),
    (["a.jsonl", "--manifest", "m1", "--manifest", "m2", "--manifest", "m3"], "3 --manifest for 1 score files"),
    (["empty.jsonl"], "no score records in it"),
])
def test_user_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str],
                                  message: str) -> None:
    from firm_lite.cli import main

    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "a.jsonl", [record("a", 5, 5)])
    (tmp_path / "empty.jsonl").write_text("\n", "utf-8")
    result = CliRunner().invoke(main, ["report", *args])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output


def test_cli_prints_the_table_and_markdown(tmp_path: Path) -> None:
    from firm_lite.cli import main

    data = comparison_inputs(tmp_path)
    result = CliRunner().invoke(main, ["report", str(data.good), str(data.poor), "--manifest", str(data.manifest),
                                       "--out", str(tmp_path / "r.html"), "--markdown", "-"])
    assert result.exit_code == 0, result.output
    assert "| 1 | good |" in result.output and (tmp_path / "r.html").is_file()
    as_json = CliRunner().invoke(main, ["report", str(data.good), "--json"])
    assert json.loads(as_json.stdout)["leaderboard"][0]["name"] == "good"


def test_images_are_downscaled_deduplicated_and_broken_ones_are_placeholders(tmp_path: Path) -> None:
    from PIL import Image

    from firm_lite.report.thumbs import ImageStore

    big = tmp_path / "big.jpg"
    Image.new("RGB", (2000, 1000), (200, 10, 10)).save(big)
    small = make_images(tmp_path, 1)[0]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    store = ImageStore(thumb_px=160, view_px=640)
    assert store.add(big) == 0 and store.add(big) == 0 and store.add(small) == 1
    assert store.add(broken) == -1 and store.add(tmp_path / "nowhere.png") == -1 and store.add(None) is None
    assert set(store.missing) == {str(broken), str(tmp_path / "nowhere.png")}
    import base64
    import io

    thumb = Image.open(io.BytesIO(base64.b64decode(store.images[0][0].split(",", 1)[1])))
    view = Image.open(io.BytesIO(base64.b64decode(store.images[0][1].split(",", 1)[1])))
    assert thumb.size == (160, 80) and view.size == (640, 320) and thumb.format == view.format == "WEBP"
    assert store.images[1][0].startswith("data:image/webp;base64,")
    assert store.images[1][1] is None  # no larger than a thumbnail: one copy


def _calibration_result(manifest: Path) -> dict:
    metrics = {m: {"n_paired": 2, "exact_agreement": 0.5, "flip_rate": 0.5, "big_flip_rate": 0.5, "mae_score": 2.0,
                   "mae_expected": 1.5, "kl_mean": 0.1, "kl_p95": 0.2, "parse_failure_rate": 0.0,
                   "confusion": [[1, 0, 0, 0, 0], [0] * 5, [0] * 5, [0] * 5, [0, 0, 1, 0, 0]]}
               for m in ("execution", "consistency")}
    metrics["cme"] = {k: 0.1 for k in ("cme_mae", "cme_expected_mae", "cme_spearman", "cme_kendall",
                                       "cme_expected_spearman", "cme_expected_kendall")}
    metrics["labels"] = {}
    side = {"score": 5, "expected": 4.5, "reasoning": "<script>alert(1)</script>", "parse_ok": True, "raw": ""}
    worst = {"id": "p1", "cme": {"reference": 1.0, "variant": 0.5},
             **{m: {"reference": side, "variant": {**side, "score": 3}, "kl": 0.4}
                for m in ("execution", "consistency")}}
    items = [{"id": "p1", "execution": {"score": [5, 3]}, "consistency": {"score": [5, 5]}},
             {"id": "p2", "execution": {"score": [1, 1]}, "consistency": {"score": [5, 5]}}]
    return {"created": "now", "passed": False, "verdict": "verdict: FAIL: 1 of 1 variant(s) outside thresholds (nf4)",
            "manifest": {"path": str(manifest), "pairs": 2, "labelled": 0},
            "reference": {"label": "default:fp32"}, "provenance": {"model_id": "tiny", "image_budget": {}},
            "variants": [{"variant": "nf4", "family": "bnb", "thresholds_table": "bnb", "passed": False,
                          "failures": ["execution flip_rate 0.5 > 0.1"], "checks": [], "metrics": metrics,
                          "worst": [worst], "items": items}]}


def test_calibration_result_gets_its_page(tmp_path: Path) -> None:
    from html import escape

    source, edited = make_images(tmp_path, 2)
    manifest = tmp_path / "cal.jsonl"
    manifest.write_text(json.dumps({"id": "p1", "source": str(source), "edited": str(edited), "instruction": MALICIOUS,
                                    "category": "remove"}) + "\n", "utf-8")
    results = tmp_path / "calibration.json"
    results.write_text(json.dumps(_calibration_result(manifest)), "utf-8")
    run = make_report([results], out=tmp_path / "cal.html")
    assert run.kind == "calibration"
    html = (tmp_path / "cal.html").read_text("utf-8")
    assert html.count('class="confusion"') == 2 and 'data-id="p1"' in html
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert MALICIOUS not in html and escape(MALICIOUS) in html
    assert len(_data_block(html)["images"]) == 2 and html.count("data-img=") == 3  # source, edited, flip row


def test_page_of_one_score_run(tmp_path: Path) -> None:
    from firm_lite.report import score_run_page

    source, edited = make_images(tmp_path, 2)
    html = tmp_path / "one.html"
    score_run_page([record("pair", 4, 5)], html, source=str(source), edited=str(edited), instruction=MALICIOUS)
    pair = _data_block(html.read_text("utf-8"))["pairs"][0]
    assert pair["ins"] == MALICIOUS and pair["src"] == 0 and pair["m"][0]["ed"] == 1

    out = write_jsonl(tmp_path / "all.jsonl", [record("old", 5, 5), record("pair", 4, 5)])
    score_run_page([record("pair", 4, 5)], html, out=str(out), source=str(source), edited=str(edited))
    assert [p["id"] for p in _data_block(html.read_text("utf-8"))["pairs"]] == ["old", "pair"]  # the whole file


def test_score_html_writes_the_page_of_the_run(tmp_path: Path) -> None:
    from firm_lite.cli import main

    page = tmp_path / "demo.html"
    result = CliRunner().invoke(main, ["score", "--model", "tiny", "--device", "cpu", "--demo", "--html", str(page)])
    assert result.exit_code == 0, result.output
    pair = _data_block(page.read_text("utf-8"))["pairs"][0]
    assert pair["id"] == "demo-chelsea-bw" and pair["src"] == 0 and pair["m"][0]["x"]["s"] in range(1, 6)

    refused = CliRunner().invoke(main, ["score", "--model", "tiny", "--demo", "--html", str(tmp_path)])
    assert refused.exit_code != 0 and "is a directory" in refused.output  # before the model loads
