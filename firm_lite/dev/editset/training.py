"""Training a critic on the edit set: examples, the training loop, the held-out evaluation.

:func:`training_batches` turns the seeded train stream into batches of
:class:`firm_lite.dev.examples.EditExample` whose answers are the FIRM JSON with the templated
:func:`~firm_lite.dev.editset.labels.rationale` and the label as score. Each batch holds one mode
only (the consistency prompt is twice as long as the execution one, so mixing them would pad
every execution row to the longer length) and both modes of the same pairs follow each other.

A batch can be rendered with :func:`short_prompt`: the mode's real prompt with its rubric
sections left out (the preamble that names the mode, the instruction and the output format stay,
verbatim). On two CPU cores a full consistency prompt costs ~4x a short one, but a critic trained
on them misreads the instruction in the full prompt, which is all that scoring ever sends; the
shipped recipe uses full prompts only.

Before the FIRM answers come two warm-ups: :func:`pretrain_vision` (the vision tower alone, a
throw-away head naming the kind of edit) and :func:`describe_batches` (the whole model names the
kind of edit, with no instruction to copy from). :func:`seen_by` asks a critic that question;
with it as ``seer`` the FIRM answers say what the critic sees, not the truth it cannot see yet.

:func:`train_critic` is the loop (AdamW, warmup + cosine, loss on answer tokens only with the
score digit weighted up); :func:`evaluate_critic` scores a split through ``load_critic`` and
greedy generation, i.e. exactly what ``firm-lite score`` does, and reports MAE per mode.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from firm_lite.dev.editset.generator import EditItem, generate, iter_items
from firm_lite.dev.editset.labels import MODES, SEEN_KINDS, description, kind_seen, rationale
from firm_lite.dev.examples import ANSWER_FORMAT, EditExample, example_messages
from firm_lite.prompts import chat_text, render_prompt, templates

DESCRIBE_PROMPT = "Describe the edit."
SCORE_LOSSES: tuple[str, ...] = ("ce", "expected_error")  # see train_critic


def short_prompt(mode: str, instruction: str) -> str:
    """The mode's prompt without the sections between the instruction and the output format."""
    text = render_prompt(mode, instruction)
    at = text.index("Instruction: ")
    return text[:text.index("\n## ", at) + 1] + text[text.index("## Output Format", at):]


def answer(mode: str, edit: dict[str, Any], score: int, seen: str | None = None) -> str:
    """The FIRM-format answer a critic trained on the edit set gives."""
    return ANSWER_FORMAT.format(reasoning=rationale(mode, edit, seen=seen), score=score)


def example_of(item: EditItem, mode: str, images: tuple[Any, Any] | None = None, short: bool = False,
               seen: str | None = None) -> EditExample:
    """One item as a training/eval example in ``mode`` (``images``: already decoded source/edited;
    ``seen``: the kind the execution reasoning says it sees, None for the true one)."""
    source, edited = images or (item.source_image(), item.edited_image())
    score = item.labels[mode]
    return EditExample(mode, item.instruction, source, edited, score, answer(mode, item.edit, score, seen),
                       prompt=short_prompt(mode, item.instruction) if short else None)


def describe_batches(seed: int, batch_size: int, first_group: int = 0) -> Iterator[list[EditExample]]:
    """Endless batches of the warm-up task: both images and :data:`DESCRIBE_PROMPT` in, the
    visual facts (:func:`~firm_lite.dev.editset.labels.description`) out. With no instruction to copy
    from, the only way to lower this loss is to compare the images, which is what a tiny critic
    otherwise learns last: the request text predicts most of a FIRM answer."""
    stream = iter_items("train", seed=seed, first_group=first_group)
    while True:
        items = [next(stream) for _ in range(batch_size)]
        yield [EditExample("execution", i.instruction, i.source_image(), i.edited_image(), 0, description(i.edit),
                           prompt=DESCRIBE_PROMPT) for i in items]


def pair_logits(model: Any, processor: Any, head: Any, items: list[EditItem]) -> Any:
    """The vision tower's merged tokens of both images of each item, pooled the way a decoder
    can pool them (each image's mean, the mean difference and mean absolute difference of tokens at
    the same place), through ``head``: logits over :data:`~firm_lite.dev.editset.labels.SEEN_KINDS`."""
    import torch

    images = [im for item in items for im in (item.source_image(), item.edited_image())]
    batch = processor.image_processor(images=images, return_tensors="pt")
    tokens = model.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
    merge = processor.image_processor.merge_size ** 2
    per_image = torch.split(tokens, (batch["image_grid_thw"].prod(-1) // merge).tolist())
    pooled = []
    for source, edited in zip(per_image[0::2], per_image[1::2], strict=True):
        diff = edited - source
        pooled.append(torch.cat([source.mean(0), edited.mean(0), diff.mean(0), diff.abs().mean(0)]))
    return head(torch.stack(pooled))


def pretrain_vision(model: Any, processor: Any, items: Iterable[EditItem], *, steps: int, lr: float = 1e-3,
                    batch_size: int = 16, progress: bool = True) -> dict[str, float]:
    """Pre-train the vision tower to tell the kinds of edit apart, through a throw-away head.

    Through the whole model the kind of edit is one token of supervision at the end of a long
    path (vision tower, merger, a decoder that has to find the same place in the other image),
    and a half-million-parameter critic learns it slowly. A small MLP on pooled tokens of the two
    images gives the tower a direct signal first, the way VLMs start from a pre-trained vision
    encoder. The head (its own seeded init) is dropped afterwards; only the tower keeps what it
    learned.
    """
    import torch
    from tqdm.auto import tqdm

    width = model.config.vision_config.out_hidden_size
    head = torch.nn.Sequential(torch.nn.Linear(4 * width, 128), torch.nn.GELU(),
                               torch.nn.Linear(128, len(SEEN_KINDS)))
    visual = model.model.visual
    params = list(visual.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    stream, losses, start = iter(items), [], time.perf_counter()
    visual.train()
    for _ in (bar := tqdm(range(steps), desc="pre-training vision tower", disable=not progress)):
        batch = [next(stream) for _ in range(batch_size)]
        target = torch.tensor([SEEN_KINDS.index(kind_seen(item.edit)) for item in batch])
        loss = torch.nn.functional.cross_entropy(pair_logits(model, processor, head, batch), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    visual.eval()
    return {"final_loss": sum(losses[-20:]) / len(losses[-20:]), "train_seconds": time.perf_counter() - start}


def describe_inputs(processor: Any, pairs: list[tuple[Any, Any]]) -> Any:
    """Processor inputs (left-padded) asking :data:`DESCRIBE_PROMPT` about each (source, edited) pair."""
    examples = [EditExample("execution", "", src, edited, 0, "", prompt=DESCRIBE_PROMPT) for src, edited in pairs]
    texts = [chat_text(processor, example_messages(e))
             for e in examples]
    return processor(text=texts, images=[[e.source, e.edited] for e in examples], padding=True,
                     padding_side="left", return_tensors="pt")


def seen_by(model: Any, processor: Any, pairs: list[tuple[Any, Any]]) -> list[str | None]:
    """The kind of edit ``model`` names for each (source, edited) pair when asked the warm-up
    question (:data:`DESCRIBE_PROMPT`, greedy); None where its answer is not a known kind."""
    import torch

    batch = describe_inputs(processor, pairs)
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        out = model.generate(**batch, do_sample=False, max_new_tokens=12, eos_token_id=eos,
                             pad_token_id=processor.tokenizer.pad_token_id)
    return [parse_seen(processor.tokenizer.decode(ids, skip_special_tokens=True))
            for ids in out[:, batch["input_ids"].shape[1]:]]


def parse_seen(text: str) -> str | None:
    """The kind in a warm-up answer (``"Seen: blur."`` -> ``"blur"``); None if it names none."""
    text = text.strip()
    kind = text.removeprefix("Seen: ").removesuffix(".")
    return kind if text.startswith("Seen: ") and text.endswith(".") and kind in SEEN_KINDS else None


def training_batches(seed: int, batch_size: int, short_rate: float, first_group: int = 0, *,
                     describe_every: int = 0, seer: Any = None) -> Iterator[list[EditExample]]:
    """Endless single-mode batches from the train split: pairs i..i+n in execution, then the same
    pairs in consistency. Whether a batch is short is drawn from ``random.Random(seed)``.

    ``describe_every`` > 0 puts a batch of the warm-up task (new pairs) after every that many
    pairs of FIRM batches, so the critic keeps practising looking while it learns the format.
    ``seer`` (a callable: list of (source, edited) -> list of kind or None, e.g. the model being
    trained through :func:`seen_by`) supplies the ``Seen`` kind of the execution reasoning in place
    of the true one (kept where it returns None): the critic learns to write what it itself sees
    and to score from that, instead of learning that copying the request is right 70% of the time.
    """
    stream = iter_items("train", seed=seed, first_group=first_group)
    describe = describe_batches(seed + 1, batch_size, first_group=first_group) if describe_every else None
    coin = random.Random(seed)
    for count in itertools.count(1):
        items = [next(stream) for _ in range(batch_size)]
        images = [(i.source_image(), i.edited_image()) for i in items]
        seen = seer(images) if seer is not None else [None] * len(items)
        for mode in MODES:
            short = coin.random() < short_rate
            yield [example_of(i, mode, im, short, seen=k) for i, im, k in zip(items, images, seen, strict=True)]
        if describe is not None and count % describe_every == 0:
            yield next(describe)


def encode_examples(processor: Any, examples: list[EditExample], *,
                    images_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Render as scoring does, append answer + ``<|im_end|>``; labels only on those tokens."""
    import torch

    tail = [e.answer + "<|im_end|>" for e in examples]
    texts = [chat_text(processor, example_messages(e)) + t
             for e, t in zip(examples, tail, strict=True)]
    # Left padding puts every answer at the end, so training needs logits for the tail only.
    batch = processor(text=texts, images=[[e.source, e.edited] for e in examples],
                      padding=True, padding_side="left", return_tensors="pt",
                      images_kwargs=images_kwargs or {})
    labels = torch.full_like(batch["input_ids"], -100)
    for row, text in enumerate(tail):
        ids = torch.tensor(processor.tokenizer.encode(text, add_special_tokens=False))
        if not torch.equal(batch["input_ids"][row, -len(ids):], ids):
            raise AssertionError("answer tokens differ in context; the label mask would be wrong")
        labels[row, -len(ids):] = ids
    batch["labels"] = labels
    return dict(batch)


def _score_positions(labels: Any, digit_ids: Any) -> Any:
    """Mask of each row's score digit: its last label token that is one of "1".."5"."""
    import torch

    is_digit = torch.isin(labels, digit_ids)
    last = labels.shape[1] - 1 - is_digit.flip(1).int().argmax(dim=1)
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[torch.arange(labels.shape[0]), last] = is_digit.any(dim=1)
    return mask


def expected_error_loss(logits: Any, targets: Any, digit_ids: Any) -> Any:
    """Per score position: ``-log P(any digit) + E|s - label|`` with ``s`` drawn from the
    distribution over the five digits.

    Cross entropy makes the most *likely* score the most probable token, so a critic unsure
    whether an edit was done answers the commonest label (5) and pays 4 points when it was not.
    The expected absolute error is least for a point mass on the *median* of the labels the
    critic cannot tell apart, so greedy decoding (what scoring does) answers the score with the
    least expected error; the first term keeps the answer a digit.
    """
    import torch

    log_probs = torch.log_softmax(logits.float(), dim=-1)
    digit_log_probs = log_probs[:, digit_ids]
    labels = (targets.unsqueeze(-1) == digit_ids).float().argmax(-1)
    distance = (torch.arange(len(digit_ids), device=logits.device) - labels.unsqueeze(-1)).abs().float()
    return -torch.logsumexp(digit_log_probs, -1) + (torch.softmax(digit_log_probs, -1) * distance).sum(-1)


def train_critic(model: Any, processor: Any, examples: Iterable[EditExample], *, steps: int,
                 lr: float = 3e-3, batch_size: int = 8, warmup: int = 20, score_weight: float = 1.0,
                 score_loss: str = "ce", progress: bool = True) -> dict[str, float]:
    """AdamW with warmup + cosine decay on answer tokens; returns losses and wall time.

    ``score_weight`` multiplies the loss on the score digit: one token of ~40, but the one the
    critic is judged by. ``score_loss`` is what the score digit is trained on: ``"ce"`` (cross
    entropy: greedy decoding then gives the most likely score) or ``"expected_error"``
    (:func:`expected_error_loss`: greedy decoding gives the score with the least expected
    absolute error, what critics are judged by). ``examples`` is consumed ``batch_size`` at a time
    (keep batches single-mode).
    """
    import torch
    from tqdm.auto import tqdm

    if score_loss not in SCORE_LOSSES:
        raise ValueError(f"unknown score_loss {score_loss!r}; expected one of {', '.join(SCORE_LOSSES)}")
    digit_ids = torch.tensor(processor.tokenizer.convert_tokens_to_ids(list("12345")))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup)
                                                 * 0.5 * (1 + math.cos(math.pi * s / steps)))
    stream, losses, score_losses, start = iter(examples), [], [], time.perf_counter()
    bar = tqdm(range(steps), desc="training tiny critic", disable=not progress)
    for _ in bar:
        batch = encode_examples(processor, [next(stream) for _ in range(batch_size)])
        labels = batch.pop("labels")
        keep = labels.shape[1] - int((labels != -100).int().argmax(dim=1).min()) + 1
        logits = model(**batch, logits_to_keep=keep).logits[:, :-1].float()
        targets = labels[:, 1 - keep:]
        token_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                       reduction="none").view_as(targets)
        answer = targets != -100
        is_score = _score_positions(targets, digit_ids)
        if score_loss == "expected_error" and bool(is_score.any()):  # describe batches have no score
            token_loss = token_loss.masked_scatter(
                is_score, expected_error_loss(logits[is_score], targets[is_score], digit_ids))
        weights = answer.float() + (score_weight - 1.0) * is_score.float()
        loss = (token_loss * weights).sum() / weights.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if bool(is_score.any()):  # the describe warm-up writes no score
            score_losses.append(float(token_loss.detach()[is_score].mean()))
        score_tail = score_losses[-20:]
        bar.set_postfix(loss=f"{losses[-1]:.3f}", score=f"{sum(score_tail) / max(1, len(score_tail)):.3f}")
    model.eval()
    tail, score_tail = losses[-20:], score_losses[-20:]
    return {"final_loss": sum(tail) / len(tail),
            "final_score_loss": sum(score_tail) / len(score_tail) if score_tail else None,
            "train_seconds": time.perf_counter() - start}


def tokenizer_texts(seed: int = 1234, pairs: int = 600) -> list[str]:
    """What a critic trained on the edit set reads and writes (for its BPE), in a fixed order."""
    items = generate("train", pairs, seed=seed)
    texts = list(templates().values()) + [short_prompt(m, "x") for m in MODES]
    texts += [i.instruction for i in items]
    texts += [answer(m, i.edit, i.labels[m]) for i in items for m in MODES]
    return texts + [DESCRIBE_PROMPT] + [description(i.edit) for i in items]


def evaluate_critic(model: str | Path, split: str = "heldout", batch_size: int = 8, max_new_tokens: int = 256,
                    limit: int | None = None) -> dict[str, Any]:
    """Score a split (its first ``limit`` pairs) through the real path (``load_critic`` + greedy
    generation + parsing); :func:`firm_lite.dev.editset.metrics.editset_report`, ``kind_accuracy``,
    records and data."""
    from firm_lite.critic import load_critic
    from firm_lite.dev.editset.metrics import editset_report, kind_accuracy, read_labels
    from firm_lite.dev.editset.store import ensure_editset
    from firm_lite.manifest import read_manifest

    manifest = ensure_editset(split)
    from firm_lite.dev.editset.store import read_header

    pairs = [row.pair for row in read_manifest(manifest) if row.pair is not None][:limit]
    critic = load_critic(str(model), device="cpu", max_new_tokens=max_new_tokens)
    records = critic.score(pairs, batch_size=batch_size)
    header = read_header(manifest) or {}
    data = {"train": "firm_lite.dev.editset train stream", "eval": split, "eval_pairs": len(pairs),
            "eval_fingerprint": header.get("fingerprint"), "generator_version": header.get("generator_version")}
    labels = read_labels(manifest)
    return {"report": editset_report(records, labels), "kinds": kind_accuracy(records, labels), "records": records,
            "data": data}
