"""The shared-prefix engine must give the reference protocol's answers: same integer scores
(and, in fp32, the same score distributions) as plain `generate`, one pair at a time."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from firm_lite.engine import FAST_ANSWER_PREFIX, split_after_images
from firm_lite.records import EditPair
from tests.conftest import make_pair_images

HELDOUT = Path(__file__).resolve().parents[1] / "calibration" / "editset-heldout.jsonl"


def test_split_after_second_image() -> None:
    text = "<|im_start|>user\n<|vision_start|>A<|vision_end|><|vision_start|>B<|vision_end|>\nPrompt<|im_end|>"
    prefix, suffix = split_after_images(text)
    assert prefix.endswith("B<|vision_end|>") and suffix == "\nPrompt<|im_end|>"
    with pytest.raises(ValueError):
        split_after_images("<|vision_end|> only one")


def test_prefix_plus_suffix_tokenize_like_the_whole(tiny_critic) -> None:
    tok = tiny_critic.processor.tokenizer
    for mode in ("execution", "consistency"):
        text = tiny_critic.render(mode, "make the {sky} pink")
        prefix, suffix = split_after_images(text)
        whole = tok(text, add_special_tokens=False)["input_ids"]
        assert whole == tok(prefix, add_special_tokens=False)["input_ids"] + tok(suffix, add_special_tokens=False)[
            "input_ids"]


def _items(critic, folder: Path, n: int) -> list:
    items = []
    instructions = ["add a red square", "make the whole picture brighter and warmer please", "flip it"]
    for i in range(n):
        src, edt = make_pair_images(folder, 100 + i, size=(96 + 32 * i, 64 + 16 * i))  # different image sizes
        pair = EditPair(f"p{i}", src, edt, instructions[i % 3])
        items.append((pair, *critic.prepare(pair)))
    return items


def _plain(critic, items):
    """The straightforward path: one pair per call, one generate per mode, no reuse."""
    plain = replace(critic, engine="generate")
    return [{m: plain.score_modes([it], [m])[m][0] for m in ("execution", "consistency")} for it in items]


@pytest.mark.parametrize("batch", [1, 3])
def test_engine_matches_plain_generate(tiny_critic, tmp_path: Path, batch: int) -> None:
    assert tiny_critic.uses_engine
    items = _items(tiny_critic, tmp_path, 3)
    ref = _plain(tiny_critic, items)
    got = []
    for s in range(0, len(items), batch):
        out = tiny_critic.score_modes(items[s:s + batch])
        got += [{m: out[m][k] for m in out} for k in range(len(items[s:s + batch]))]
    worst = 0.0
    for r, g in zip(ref, got, strict=True):
        for m in ("execution", "consistency"):
            assert g[m].raw == r[m].raw and g[m].score == r[m].score
            worst = max(worst, max(abs(a - b) for a, b in zip(g[m].probs, r[m].probs, strict=True)))
    assert worst < 1e-4, f"largest probability difference {worst:.2e}"


def test_fast_protocol_is_labelled_and_distributional(tiny_critic, tmp_path: Path) -> None:
    fast = replace(tiny_critic, protocol="fast")
    out = fast.score_modes(_items(tiny_critic, tmp_path, 2))
    for scores in out.values():
        for s in scores:
            assert s.raw.startswith(FAST_ANSWER_PREFIX) and s.reasoning is None
            assert abs(sum(s.probs) - 1) < 1e-9 and s.score == max(range(5), key=lambda k: s.probs[k]) + 1


def _heldout_items(critic, limit: int | None):
    from firm_lite.manifest import read_manifest

    rows = [r for r in read_manifest(HELDOUT) if r.pair is not None][:limit]
    return [(r.pair, *critic.prepare(r.pair)) for r in rows]


@pytest.mark.skipif(not HELDOUT.exists(), reason="held-out manifest not generated")
@pytest.mark.parametrize("limit", [pytest.param(12, id="first-12"),
                                   pytest.param(None, id="whole-set", marks=pytest.mark.slow)])
def test_heldout_integer_scores_identical_batched(tiny_critic, limit: int | None) -> None:
    items = _heldout_items(tiny_critic, limit)
    ref = _plain(tiny_critic, items)
    diffs = []
    for s in range(0, len(items), 8):
        out = tiny_critic.score_modes(items[s:s + 8])
        for k, (pair, _, _) in enumerate(items[s:s + 8]):
            for m in out:
                if out[m][k].score != ref[s + k][m].score:
                    diffs.append((pair.id, m, ref[s + k][m].score, out[m][k].score))
    assert not diffs, f"batched engine differs from plain generate on: {diffs[:10]}"


def test_decode_reads_the_tokens_once_per_step_not_once_per_row(tiny_critic, tmp_path, monkeypatch) -> None:
    """On a GPU every int(tensor) is a host synchronisation: decode copies each step's tokens in
    one call, whatever the number of rows."""
    import torch

    import firm_lite.engine as engine

    items = _items(tiny_critic, tmp_path, 3)  # 6 rows
    counts = {"int": 0, "tolist": 0}
    real_int, real_tolist, real_decode = torch.Tensor.__int__, torch.Tensor.tolist, engine._decode

    def counting(name, real):
        def wrapper(self, *args, **kwargs):
            counts[name] += 1
            return real(self, *args, **kwargs)
        return wrapper

    def decode(model, *args, **kwargs):
        monkeypatch.setattr(torch.Tensor, "__int__", counting("int", real_int))
        monkeypatch.setattr(torch.Tensor, "tolist", counting("tolist", real_tolist))
        try:
            out = real_decode(model, *args, **kwargs)
        finally:
            monkeypatch.setattr(torch.Tensor, "__int__", real_int)
            monkeypatch.setattr(torch.Tensor, "tolist", real_tolist)
        return out

    monkeypatch.setattr(engine, "_decode", decode)
    timings: dict[str, float] = {}
    out = tiny_critic.score_modes(items, timings=timings)
    assert all(m.score is not None for scores in out.values() for m in scores)
    assert counts["int"] == 0, f"{counts['int']} per-element int() calls during decode"
    assert 0 < counts["tolist"] <= tiny_critic.decoding.max_new_tokens


def test_the_kv_cache_goes_by_the_name_the_model_takes() -> None:
    # transformers 5.19 (vLLM 0.32's pin) swallows an unknown cache= in **kwargs and decodes garbage
    from firm_lite.engine import cache_kwargs

    class Old:
        def forward(self, input_ids=None, past_key_values=None, **kwargs):  # noqa: ANN001, ANN003
            return None

    class New:
        def forward(self, input_ids=None, cache=None, **kwargs):  # noqa: ANN001, ANN003
            return None

    marker = object()
    assert cache_kwargs(Old(), marker) == {"past_key_values": marker}
    assert cache_kwargs(New(), marker) == {"cache": marker}
