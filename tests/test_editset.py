"""The labelled edit set: deterministic generation, label rules, split hygiene, metrics."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from firm_lite.dev.editset import families as fam
from firm_lite.dev.editset.generator import decode_jpeg, encode_jpeg, generate, iter_items, make_group
from firm_lite.dev.editset.labels import consistency_label, description, execution_label, labels_for, rationale
from firm_lite.dev.editset.metrics import editset_report, mae_by_mode, read_labels
from firm_lite.dev.editset.photos import SHAPES, photos_for, random_crop, render_crop
from firm_lite.dev.editset.store import REPO_CALIBRATION_DIR, SplitSpec, ensure_editset, read_header, write_split

PHOTOS = pytest.mark.requires_extra("calib")  # rendering edit-set photos needs scikit-image


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- determinism --------------------------------------------------------------------------------

@PHOTOS
def test_same_seed_same_manifest_and_bytes_other_seed_differs(tmp_path: Path) -> None:
    spec = SplitSpec(pairs=6, seed=3)
    a = write_split(tmp_path / "a", "heldout", spec)
    b = write_split(tmp_path / "b", "heldout", spec)
    c = write_split(tmp_path / "c", "heldout", SplitSpec(pairs=6, seed=4))
    assert a.read_text("utf-8") == b.read_text("utf-8")
    tree_a, tree_b, tree_c = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert tree_a == tree_b and len(tree_a) == 1 + 6 + 3  # manifest, 6 edited, 3 shared sources
    assert a.read_text("utf-8") != c.read_text("utf-8")
    assert not set(tree_a.values()) & {h for k, h in tree_c.items() if k.endswith(".jpg")}


@PHOTOS
def test_a_group_depends_only_on_its_seed_and_index() -> None:
    stream = iter_items("train", seed=0)
    first_four = [next(stream) for _ in range(4)]
    again = make_group("train", 1, seed=0)  # group 1 alone, without generating group 0
    assert [(i.id, i.edited_jpeg, i.labels) for i in first_four[2:]] == [(i.id, i.edited_jpeg, i.labels) for i in again]


@PHOTOS
def test_committed_heldout_is_current_and_regenerates() -> None:
    manifest = ensure_editset("heldout")
    assert manifest == REPO_CALIBRATION_DIR / "editset-heldout.jsonl", "committed held-out set is stale or incomplete"
    header = read_header(manifest)
    assert header and header["pairs"] == 80
    rows = [json.loads(line) for line in manifest.read_text("utf-8").splitlines() if not line.startswith("#")]
    for row, item in zip(rows[:8], generate("heldout", 8), strict=True):
        assert (row["id"], row["instruction"], row["labels"], row["edit"]) == (
            item.id, item.instruction, item.labels, json.loads(json.dumps(item.edit)))
        committed = np.asarray(Image.open(manifest.parent / row["edited"]).convert("RGB"), dtype=np.int16)
        assert np.abs(committed - np.asarray(item.edited_image(), dtype=np.int16)).mean() < 1.0


@PHOTOS
def test_without_the_checkout_the_split_is_generated_once_into_the_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    manifest = ensure_editset("train", prefer_repo=False)
    assert manifest.is_relative_to(tmp_path) and manifest.name == "editset-train.jsonl"
    committed = (REPO_CALIBRATION_DIR / "editset-train.jsonl").read_text("utf-8")
    assert manifest.read_text("utf-8") == committed  # same generator, same seed: the same set
    stamp = manifest.stat().st_mtime_ns
    assert ensure_editset("train", prefer_repo=False) == manifest and manifest.stat().st_mtime_ns == stamp


# ---- label rules --------------------------------------------------------------------------------

@pytest.mark.parametrize(("outcome", "requested_local", "applied_local", "extras", "expected"), [
    ("full", True, True, 0, (5, 5)),
    ("none", True, True, 0, (1, 5)),        # nothing done: nothing inconsistent either
    ("none", False, False, 1, (1, 4)),
    ("unrelated", True, False, 0, (1, 1)),
    ("mostly", False, False, 0, (4, 5)),
    ("partial", False, False, 2, (3, 3)),
    ("half", True, True, 3, (3, 3)),
    ("weak", False, False, 4, (2, 2)),
    ("wrong_param", True, True, 0, (2, 4)),   # right edit, wrong region: that region changed unasked
    ("wrong_param", False, False, 0, (2, 5)),  # blue tint for red: the frame was allowed to change
    ("opposite", False, False, 1, (1, 4)),
    ("wrong_family", True, True, 0, (1, 4)),   # a different local edit: one unrequested change
    ("wrong_family", True, False, 0, (1, 2)),  # a different global edit: the whole frame, unasked
    ("wrong_family", False, False, 5, (1, 2)),
])
def test_label_rules(outcome: str, requested_local: bool, applied_local: bool, extras: int,
                     expected: tuple[int, int]) -> None:
    labels = labels_for(outcome, requested_local, applied_local, extras)
    assert (labels["execution"], labels["consistency"]) == expected


def test_consistency_scale_and_bad_inputs() -> None:
    assert [consistency_label(n) for n in range(7)] == [5, 4, 3, 3, 2, 2, 2]
    assert consistency_label(0, unrelated=True) == 1
    with pytest.raises(ValueError):
        execution_label("sort of")
    with pytest.raises(ValueError):
        consistency_label(-1)


@PHOTOS
def test_noop_item_has_identical_bytes_and_labels_1_5() -> None:
    for item in iter_items("train", seed=0):
        if item.edit["outcome"] == "none" and not item.edit["extras"]:
            break
    assert item.edited_jpeg == item.source_jpeg
    assert item.labels == {"execution": 1, "consistency": 5}


def test_rationale_names_the_kind_asked_and_seen_and_counts_unrequested_changes() -> None:
    noop = {"family": "tint", "params": {"colour": "red"}, "outcome": "none", "request": "give the image a red tint",
            "applied": None, "extras": []}
    assert rationale("execution", noop) == "Requested: tint. Seen: nothing."
    assert description(noop) == "Seen: nothing."
    assert rationale("consistency", noop) == "Unrequested changes: none."
    wrong_region = {"family": "blur", "params": {"region": "center"}, "outcome": "wrong_param",
                    "request": "blur the center", "extras": [{"kind": "shape"}],
                    "applied": {"family": "blur", "params": {"region": "top-left"}, "level": "full"}}
    assert rationale("execution", wrong_region) == "Requested: blur. Seen: blur."
    assert rationale("consistency", wrong_region) == "Unrequested changes: two."
    wrong_global = {**noop, "outcome": "wrong_family", "applied": {"family": "invert", "params": {}, "level": "full"}}
    assert rationale("consistency", wrong_global) == (
        "Unrequested changes: the whole image (inversion).")
    assert rationale("execution", wrong_global) == "Requested: tint. Seen: inversion."
    unrelated = {**noop, "outcome": "unrelated", "applied": None}
    assert rationale("execution", unrelated) == "Requested: tint. Seen: unrelated picture."
    assert rationale("consistency", unrelated) == "Unrequested changes: everything (an unrelated picture)."


@PHOTOS
def test_instructions_use_the_right_article() -> None:
    assert fam.a_or_an("orange") == "an orange" and fam.a_or_an("red") == "a red"
    tint, shape = fam.FAMILIES["tint"], fam.FAMILIES["add_shape"]
    assert tint.describe({"colour": "orange"}) == "give the image an orange tint"
    circle = {"colour": "orange", "shape": "circle", "region": "center"}
    assert shape.describe(circle).startswith("add an orange circle")
    words = " ".join(i.instruction for i in generate("train", 200, seed=0)).lower()
    assert " a orange" not in words and " a yellow" in words


@PHOTOS
def test_unrelated_item_shows_another_photo() -> None:
    item = next(i for i in iter_items("heldout", seed=0) if i.edit["outcome"] == "unrelated")
    assert item.labels == {"execution": 1, "consistency": 1}
    assert item.edit["unrelated_photo"] != item.edit["photo"]


@PHOTOS
def test_every_family_shows_its_edit_and_weaker_levels_change_less() -> None:
    rng = np.random.default_rng(0)
    src = np.asarray(decode_jpeg(encode_jpeg(render_crop(random_crop(rng, "astronaut", SHAPES[0])))), np.float32)
    assert len(fam.FAMILIES) == 11
    for family in fam.FAMILIES.values():
        params = family.sample(np.random.default_rng(1))
        if params.get("region") == "whole":
            params["region"] = "center"
        change = {lvl: float(np.abs(family.apply(src, params, lvl) - src).mean()) if lvl != "none" else 0.0
                  for lvl in family.levels}
        assert change["full"] > 1.0, family.name
        if family.name in ("zoom", "rotate"):  # geometric: half the zoom/angle is not a smaller pixel change
            assert not np.array_equal(family.apply(src, params, "partial"), family.apply(src, params)), family.name
            continue
        graded = [change[lvl] for lvl in ("full", "mostly", "partial", "weak") if lvl in family.levels]
        assert graded == sorted(graded, reverse=True), (family.name, change)
        if "half" in family.levels:
            assert 0 < change["half"] < change["full"], family.name


# ---- splits -------------------------------------------------------------------------------------

@PHOTOS
def test_splits_are_disjoint() -> None:
    heldout_only = {p.name for p in photos_for("heldout")} - {p.name for p in photos_for("train")}
    assert heldout_only == {"coffee", "motorcycle"}
    train = generate("train", 60)
    heldout_rows = read_labels(ensure_editset("heldout"))
    assert not {i.edit["photo"] for i in train} & heldout_only
    assert {r["edit"]["photo"] for r in heldout_rows.values()} & heldout_only
    assert not {i.id for i in train} & set(heldout_rows)
    train_crops = {json.dumps(i.edit["crop"], sort_keys=True) for i in train}
    assert not train_crops & {json.dumps(r["edit"]["crop"], sort_keys=True) for r in heldout_rows.values()}
    manifest = ensure_editset("heldout")
    heldout_bytes = {hashlib.sha256((manifest.parent / p).read_bytes()).hexdigest()
                     for p in {r for line in manifest.read_text("utf-8").splitlines() if not line.startswith("#")
                               for r in (json.loads(line)["source"], json.loads(line)["edited"])}}
    assert not heldout_bytes & {hashlib.sha256(b).hexdigest() for i in train for b in (i.source_jpeg, i.edited_jpeg)}


@PHOTOS
def test_committed_manifests_read_as_labelled_pairs() -> None:
    from firm_lite.manifest import read_manifest

    for split, pairs in (("heldout", 80), ("train", 40)):
        rows = list(read_manifest(ensure_editset(split)))
        assert len(rows) == pairs and all(r.pair is not None and r.error is None for r in rows)
        assert all(Path(r.pair.source).is_file() and Path(r.pair.edited).is_file() for r in rows)
        labels = {r.extra["labels"]["execution"] for r in rows} | {r.extra["labels"]["consistency"] for r in rows}
        assert labels <= {1, 2, 3, 4, 5}
    images = [p for p in (REPO_CALIBRATION_DIR / "editset").rglob("*.jpg")]
    assert sum(p.stat().st_size for p in images) < 3_000_000


# ---- metrics ------------------------------------------------------------------------------------

def test_report_mae_parse_rate_and_worst_items() -> None:
    labels = {"a": {"labels": {"execution": 5, "consistency": 4}, "edit": {"family": "tint"}},
              "b": {"labels": {"execution": 1, "consistency": 5}, "edit": {"family": "flip"}},
              "c": {"labels": {"execution": 3, "consistency": 2}, "edit": {"family": "flip"}}}

    def rec(pid: str, ex: int | None, co: int, e: float) -> dict:
        return {"id": pid, "execution": {"score": ex, "parse_ok": ex is not None, "expected": e},
                "consistency": {"score": co, "parse_ok": True, "expected": float(co)}}

    records = [rec("a", 4, 4, 4.5), rec("b", 3, 5, 2.0), rec("c", None, 1, 3.0), {"id": "x", "execution": None}]
    report = editset_report(records, labels)
    ex = report["execution"]
    assert ex["n"] == 3 and ex["parsed"] == 2 and ex["parse_rate"] == pytest.approx(2 / 3)
    assert ex["mae"] == pytest.approx(1.5) and ex["mae_expected"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert ex["worst"][0]["id"] == "b" and ex["mae_by_family"] == {"flip": 2.0, "tint": 1.0}
    assert mae_by_mode(records, labels) == {"execution": 1.5, "consistency": pytest.approx(1 / 3)}


# ---- training data and the retraining command --------------------------------------------------

def test_kind_accuracy_separates_reading_seeing_and_acting() -> None:
    from firm_lite.dev.editset.metrics import kind_accuracy

    tint = {"family": "tint", "outcome": "full", "applied": {"family": "tint"}}
    noop = {"family": "blur", "outcome": "none", "applied": None}
    labels = {"a": {"edit": tint}, "b": {"edit": noop}, "c": {"edit": tint}, "d": {"edit": tint}}

    def rec(i: str, raw: str, score: int | None) -> dict:
        return {"id": i, "error": None, "execution": {"raw": raw, "score": score}}

    records = [rec("a", '{"reasoning" : "Requested: tint. Seen: tint.", "score" : [5]}', 5),
               rec("b", '{"reasoning" : "Requested: blur. Seen: nothing.", "score" : [5]}', 5),
               rec("c", '{"reasoning" : "Requested: flip. Seen: blur.", "score" : [1]}', 1),
               rec("d", "no reasoning at all", None), rec("unlabelled", "x", 3)]
    out = kind_accuracy(records, labels)
    assert out["n"] == 4
    assert out["requested"] == 0.5 and out["seen"] == 0.5 and out["score_follows"] == 0.5
    assert out["confusions"] == {"tint -> tint": 1, "nothing -> nothing": 1, "tint -> blur": 1, "tint -> None": 1}


def test_short_prompt_keeps_preamble_instruction_and_output_format() -> None:
    from firm_lite.dev.editset.training import short_prompt
    from firm_lite.prompts import render_prompt

    for mode in ("execution", "consistency"):
        full, short = render_prompt(mode, "Invert the colours."), short_prompt(mode, "Invert the colours.")
        assert len(short) < len(full) / 2
        assert short.startswith(full[:full.index("Instruction: ")] + "Instruction: Invert the colours.\n")
        assert short.endswith(full[full.index("## Output Format"):])


@PHOTOS
def test_training_batches_are_single_mode_paired_and_deterministic() -> None:
    from firm_lite.dev.editset.training import training_batches

    def take(seed: int) -> list[list]:
        stream = training_batches(seed, batch_size=2, short_rate=0.5)
        return [next(stream) for _ in range(4)]

    first, again = take(0), take(0)
    for batch in first:
        assert len({e.mode for e in batch}) == 1
    assert [e.instruction for e in first[0]] == [e.instruction for e in first[1]]  # same pairs, other mode
    assert [e.score for e in first[1]] == [json.loads(e.answer)["score"][0] for e in first[1]]
    assert [(e.mode, e.answer, e.prompt) for b in first for e in b] == [(e.mode, e.answer, e.prompt)
                                                                       for b in again for e in b]


@PHOTOS
def test_firm_stream_can_interleave_warm_up_batches_and_say_what_a_seer_sees() -> None:
    from firm_lite.dev.editset.training import DESCRIBE_PROMPT, training_batches

    calls: list[int] = []

    def seer(pairs: list) -> list:
        calls.append(len(pairs))
        return ["blur", None]

    stream = training_batches(0, batch_size=2, short_rate=0.0, describe_every=1, seer=seer)
    execution, consistency, warm_up, execution_2 = (next(stream) for _ in range(4))
    assert [b[0].mode for b in (execution, consistency, execution_2)] == ["execution", "consistency", "execution"]
    assert all(e.prompt == DESCRIBE_PROMPT and e.answer.startswith("Seen: ") for e in warm_up)
    assert calls == [2, 2]  # once per pair of FIRM batches
    plain = next(training_batches(0, batch_size=2, short_rate=0.0))
    assert json.loads(execution[0].answer)["reasoning"].endswith("Seen: blur.")
    assert json.loads(plain[0].answer)["reasoning"] != json.loads(execution[0].answer)["reasoning"]
    assert execution[1].answer == plain[1].answer  # None: the true kind stays


@PHOTOS
def test_vision_pre_training_moves_the_tower_only() -> None:
    import torch
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    from firm_lite.dev.editset.training import pretrain_vision
    from firm_lite.sources import tiny_critic_dir

    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_critic_dir())
    processor = AutoProcessor.from_pretrained(tiny_critic_dir())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    result = pretrain_vision(model, processor, iter_items("train", seed=0), steps=2, batch_size=2, progress=False)
    assert np.isfinite(result["final_loss"])
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("model.visual.") for k in moved)


def test_expected_error_loss_puts_the_score_on_the_median_where_cross_entropy_picks_the_mode() -> None:
    """Labels 5 5 5 1 1 3 2 for inputs the critic cannot tell apart: cross entropy's best answer
    is the commonest label (5), the expected absolute error's is their median (3)."""
    import torch

    from firm_lite.dev.editset.training import expected_error_loss

    digit_ids = torch.tensor([3, 4, 5, 6, 7])  # "1".."5" in a 10-token toy vocabulary
    targets = digit_ids[torch.tensor([4, 4, 4, 0, 0, 2, 1])]  # labels 5 5 5 1 1 3 2: mode 5, median 3
    logits = torch.zeros(10, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=0.1)
    for _ in range(300):
        loss = expected_error_loss(logits.expand(len(targets), 10), targets, digit_ids).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    probs = torch.softmax(logits.detach(), -1)
    assert int(probs.argmax()) == int(digit_ids[2]) and probs[digit_ids].sum() > 0.99
    ce = [torch.nn.functional.cross_entropy(torch.eye(10)[d].expand(len(targets), 10) * 5, targets).item()
          for d in digit_ids]
    assert int(np.argmin(ce)) == 4  # the mode
    # one hand-computed value: uniform over the 10 tokens, label 1
    uniform = expected_error_loss(torch.zeros(1, 10), digit_ids[:1], digit_ids)
    assert float(uniform) == pytest.approx(-np.log(0.5) + (0 + 1 + 2 + 3 + 4) / 5)


@PHOTOS
def test_seen_by_reads_the_kind_a_critic_names() -> None:
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    from firm_lite.dev.editset.labels import SEEN_KINDS
    from firm_lite.dev.editset.training import parse_seen, seen_by
    from firm_lite.sources import tiny_critic_dir

    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_critic_dir()).eval()
    processor = AutoProcessor.from_pretrained(tiny_critic_dir())
    pairs = [(i.source_image(), i.edited_image()) for i in generate("heldout", 4)]
    seen = seen_by(model, processor, pairs)
    assert len(seen) == 4 and all(k is None or k in SEEN_KINDS for k in seen)
    assert [parse_seen(t) for t in ("Seen: blur.", " Seen: unrelated picture.\n", "Seen: blurry.", "Seen: blur",
                                    '{"score": 5}', "")] == ["blur", "unrelated picture", None, None, None, None]


@pytest.mark.slow
def test_retraining_command_builds_a_loadable_critic(tmp_path: Path) -> None:
    from firm_lite.dev.tiny_critic import PROVENANCE_FILE, main

    out = tmp_path / "critic"
    assert main(["--out", str(out), "--steps", "6", "--check-pairs", "4", "--quiet"]) == 0
    provenance = json.loads((out / PROVENANCE_FILE).read_text("utf-8"))
    recipe = provenance["recipe"]
    assert recipe["vision_steps"] + recipe["describe_steps"] + recipe["steps"] == 6
    assert provenance["heldout"]["execution"]["n"] == 4
    assert provenance["heldout_kinds"]["n"] == 4 and provenance["builder_version"] == "4"
    assert hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest() == provenance["model_sha256"]
