"""Teacher forcing on the tiny critic: the forced read-out of the critic's own answer equals the
generated one, and a different answer text gives a read-out at *its* digit."""

from __future__ import annotations

import pytest

from firm_lite.data import demo_pair
from firm_lite.images import load_image
from firm_lite.teacher_forcing import critic_forced_readout


@pytest.fixture(scope="module")
def scored(tiny_critic):
    pair = demo_pair()
    record = tiny_critic.score([pair])[0]
    images = [load_image(pair.source), load_image(pair.edited)]
    return tiny_critic, pair, images, record


@pytest.mark.parametrize("mode", ["execution", "consistency"])
def test_forced_on_own_answer_reproduces_generation(scored, mode: str) -> None:
    critic, pair, images, record = scored
    answer = record[mode]
    assert answer["parse_ok"] and answer["probs"], "the tiny critic should answer in the FIRM format"
    forced = critic_forced_readout(critic, mode, pair, images, answer["raw"])
    assert forced is not None and forced.score == answer["score"]
    assert max(abs(a - b) for a, b in zip(forced.probs, answer["probs"], strict=True)) < 1e-4
    assert forced.expected == pytest.approx(answer["expected"], abs=1e-4)


def test_forced_reads_at_the_given_answers_digit(scored) -> None:
    critic, pair, images, record = scored
    own = record["execution"]
    other_score = 1 if own["score"] != 1 else 5
    text = own["raw"].replace(f"[{own['score']}]", f"[{other_score}]")
    forced = critic_forced_readout(critic, "execution", pair, images, text)
    assert forced is not None and forced.score == other_score
    assert sum(forced.probs) == pytest.approx(1.0)
    # the score digit comes after the reasoning: other reasoning text, other context, other distribution
    reworded = text.replace(own["reasoning"], "No requested change is visible in the edited image.") \
        if own["reasoning"] != "No requested change is visible in the edited image." \
        else text.replace(own["reasoning"], "The requested change is clearly present in the edited image.")
    moved = critic_forced_readout(critic, "execution", pair, images, reworded)
    assert moved is not None and max(abs(a - b) for a, b in zip(moved.probs, forced.probs, strict=True)) > 1e-3


def test_answer_without_a_score_has_no_readout(scored) -> None:
    critic, pair, images, _ = scored
    assert critic_forced_readout(critic, "execution", pair, images, '{"reasoning": "no score here"}') is None
