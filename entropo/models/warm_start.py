"""Supervised warm start of the embedded tiny model on the embedded addition task.

Why: RL only learns from groups where some samples succeed. A randomly initialised model
never writes a correct sum, so the default ``entropo train`` starts from this warm start:
the tiny Qwen2 of :mod:`entropo.models.tiny`, trained briefly by teacher forcing on
``prompt + solution + <eos>`` (:mod:`entropo.data.embedded`), to a *moderate* accuracy
(deliberately stopped early, so RL has room to improve it).

``embedded:tiny-qwen2-addition`` is registered here (:func:`_build_tiny_qwen2_addition`,
defaults :data:`DEFAULTS`); :mod:`entropo.models.loading` imports this module when it
resolves an ``embedded:`` name, so the name is known without importing this module first.
It is built on first use and cached like every embedded model. The environment variable
``ENTROPO_WARM_START_STEPS`` overrides the number of training steps of that registered
build only (tests set it small; a run with it set caches a different model under the same
name, so use it only with a throwaway ``ENTROPO_CACHE``).

Training: fresh train-split problems only (:func:`entropo.data.embedded.make_split`, never
eval problems), loss on the response tokens (solution and EOS) only, AdamW with linear
warm-up and cosine decay, gradient clipping at 1, float32 on CPU with torch threads = the
available cores; seeded, so the same settings give the same weights on the same machine.

Stopping: exact-match accuracy rises steeply with training at this scale (in tuning runs of
the default size whose schedule spanned all their steps: 2% greedy after 200 steps, 12% after
240, 80% after 270), so a fixed step count could land anywhere in that range depending on
small numerical differences. Training therefore stops once the greedy accuracy on a small
set of held-aside *train* problems reaches ``stop_at`` (checked every few steps once the
loss is low enough to make it worthwhile), which lands the model at a moderate accuracy that
leaves RL room to improve.

Measured with the defaults (0.54M parameters, 2-core CPU, torch 2.13): it stops after 150
steps; greedy accuracy 22% on the 200 default eval problems, about 4% per temperature-1
sample; about 33 s of training on idle cores. Two threads on cores other processes are busy
on are several times slower than one (each step waits for the slower thread): the same build
took over 10 minutes under a load average near 100.

``warm_start.json`` in the output directory records the settings, the stop rule's checks,
the loss curve, the training time and the greedy accuracy on the default eval problems
(200, seed 1).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from entropo.data.embedded import DIGITS, make_split, score, solution_text
from entropo.models.loading import register_embedded_model
from entropo.models.tiny import build_char_tokenizer, build_tiny_model

NAME = "tiny-qwen2-addition"
STEPS_ENV = "ENTROPO_WARM_START_STEPS"

MODEL_KWARGS = {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "intermediate_size": 512}
"""Size of the warm-started model (arguments of :func:`entropo.models.tiny.build_tiny_model`)."""

DEFAULTS = {"steps": 400, "batch_size": 64, "lr": 2e-3, "digits": DIGITS, "seed": 0, "stop_at": 0.2}
"""Settings of the registered build (see :func:`sft_warm_start`)."""

MONITOR_N = 128
"""Train-split problems set aside to decide when to stop (``stop_at``)."""

CHECK_EVERY = 2
CHECK_BELOW_LOSS = 0.5
"""The stop rule's check runs every ``CHECK_EVERY`` steps once their mean loss is below this."""

EVAL_N, EVAL_SEED = 200, 1
"""The eval problems of the accuracy in ``warm_start.json`` (the default ``data.eval``)."""

WARMUP_FRACTION = 0.05


def available_cores() -> int:
    """The CPU cores this process may run on.

    Returns:
        ``len(os.sched_getaffinity(0))`` where available, else ``os.cpu_count()`` (at least 1).
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _batch(tokenizer, problems: list[dict]) -> dict[str, torch.Tensor]:
    """Right-padded ``prompt + solution + eos`` with labels on the response tokens only."""
    rows, labels = [], []
    for p in problems:
        prompt = tokenizer.encode(p["prompt"], add_special_tokens=False)
        response = tokenizer.encode(solution_text(p), add_special_tokens=False)
        response.append(tokenizer.eos_token_id)
        rows.append(prompt + response)
        labels.append([-100] * len(prompt) + response)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        "labels": torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels]),
    }


@torch.no_grad()
def accuracy(
    model,
    tokenizer,
    problems: list[dict],
    *,
    do_sample: bool = False,
    num_samples: int = 1,
    batch_size: int = 256,
    max_new_tokens: int = 64,
    seed: int = 0,
) -> float:
    """Mean :func:`entropo.data.embedded.score` of generated responses.

    Args:
        model: the causal LM (put in eval mode here).
        tokenizer: its tokenizer; generation uses left padding whatever its padding side.
        problems: problems with ``prompt`` and ``ground_truth``.
        do_sample: sample at temperature 1 (top-k/top-p off) instead of greedy decoding.
        num_samples: responses per problem.
        batch_size: prompts per ``generate`` call (before repetition by ``num_samples``).
        max_new_tokens: the response length limit.
        seed: seed of sampling; the global torch RNG is left untouched.

    Returns:
        The fraction of correct responses over all problems and samples.
    """
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    total = 0.0
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for start in range(0, len(problems), batch_size):
                chunk = problems[start : start + batch_size]
                enc = tokenizer([p["prompt"] for p in chunk], return_tensors="pt", padding=True)
                sampling = {"temperature": 1.0, "top_k": 0, "top_p": 1.0} if do_sample else {}
                # The limit as max_length = prompt width + max_new_tokens, the length generate
                # derives from max_new_tokens: passing max_new_tokens while the model's
                # generation_config has a max_length (the tiny model's saved 256) logs
                # "Both `max_new_tokens` and `max_length` seem to have been set" on every call.
                out = model.generate(
                    **enc,
                    do_sample=do_sample,
                    num_return_sequences=num_samples,
                    max_length=enc["input_ids"].shape[1] + max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    **sampling,
                )
                texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
                # generate repeats each prompt num_samples times, consecutively
                for i, text in enumerate(texts):
                    total += score(text, chunk[i // num_samples]["ground_truth"])
    finally:
        tokenizer.padding_side = side
    return total / (len(problems) * num_samples)


def sft_warm_start(
    directory: Path,
    *,
    steps: int = DEFAULTS["steps"],
    batch_size: int = DEFAULTS["batch_size"],
    lr: float = DEFAULTS["lr"],
    digits: int = DEFAULTS["digits"],
    seed: int = DEFAULTS["seed"],
    stop_at: float | None = DEFAULTS["stop_at"],
    model_kwargs: dict | None = None,
    eval_n: int = EVAL_N,
    threads: int | None = None,
) -> dict:
    """Build the tiny model, train it by teacher forcing on addition, and save it.

    Args:
        directory: the output directory (created if missing); receives the model and
            tokenizer (``save_pretrained``) and ``warm_start.json``.
        steps: the most optimizer steps, each on ``batch_size`` fresh train-split problems;
            the learning-rate schedule spans them.
        batch_size: problems per step.
        lr: peak AdamW learning rate (linear warm-up over 5% of ``steps``, cosine to 0).
        digits: operand digits of the problems (:func:`entropo.data.embedded.make_problem`).
        seed: seed of the initialisation, the training problems and the batch order.
        stop_at: stop early once the greedy accuracy on :data:`MONITOR_N` train-split
            problems set aside (never trained on) reaches it; checked every
            :data:`CHECK_EVERY` steps once their mean loss is below :data:`CHECK_BELOW_LOSS`.
            None trains all ``steps``.
        model_kwargs: sizes for :func:`entropo.models.tiny.build_tiny_model` (default
            :data:`MODEL_KWARGS`; a ``seed`` here overrides the initialisation seed).
        eval_n: eval problems for the recorded greedy accuracy (0 skips the evaluation).
        threads: torch threads while training and evaluating (default: :func:`available_cores`);
            the previous setting is restored afterwards.

    Returns:
        The record written to ``warm_start.json``: the settings, ``num_params``,
        ``steps_run``, ``checks`` (``[step, monitor accuracy]`` of each check of the stop rule),
        ``losses`` (mean loss per tenth of the steps run), ``train_seconds``,
        ``eval_accuracy_greedy`` (None when ``eval_n`` is 0) and ``eval_seconds``.
    """
    directory = Path(directory)
    model_kwargs = {**MODEL_KWARGS, "seed": seed, **(model_kwargs or {})}
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, **model_kwargs)
    tokenizer.model_max_length = model.config.max_position_embeddings
    monitor_n = MONITOR_N if stop_at is not None else 0
    # one draw of distinct problems: the monitor problems are never trained on
    problems = make_split(steps * batch_size + monitor_n, seed=seed, digits=digits, split="train")
    monitor = problems[steps * batch_size :]

    threads = threads or available_cores()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
        warmup = max(1, int(WARMUP_FRACTION * steps))

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        losses: list[float] = []
        checks: list[list] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for step in range(steps):
                batch = _batch(tokenizer, problems[step * batch_size : (step + 1) * batch_size])
                loss = model(**batch).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
                if (
                    monitor
                    and (step + 1) % CHECK_EVERY == 0
                    and sum(losses[-CHECK_EVERY:]) / CHECK_EVERY < CHECK_BELOW_LOSS
                ):
                    checks.append([step + 1, accuracy(model, tokenizer, monitor)])
                    model.train()
                    if checks[-1][1] >= stop_at:
                        break
        train_seconds = time.perf_counter() - start
        model.eval()

        start = time.perf_counter()
        greedy = None
        if eval_n:
            eval_problems = make_split(eval_n, seed=EVAL_SEED, digits=digits, split="eval")
            greedy = accuracy(model, tokenizer, eval_problems)
        eval_seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous_threads)

    tenth = max(1, len(losses) // 10)
    record = {
        "name": NAME,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "digits": digits,
        "seed": seed,
        "stop_at": stop_at,
        "model_kwargs": model_kwargs,
        "num_params": sum(p.numel() for p in model.parameters()),
        "steps_run": len(losses),
        "checks": checks,
        "losses": [
            round(sum(losses[i : i + tenth]) / len(losses[i : i + tenth]), 4)
            for i in range(0, len(losses), tenth)
        ],
        "train_seconds": round(train_seconds, 2),
        "eval_problems": {"n": eval_n, "seed": EVAL_SEED, "split": "eval"},
        "eval_accuracy_greedy": greedy,
        "eval_seconds": round(eval_seconds, 2),
        "threads": threads,
    }
    directory.mkdir(parents=True, exist_ok=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Writing model shards" bar for one instant write
    try:
        model.save_pretrained(directory)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(directory)
    (directory / "warm_start.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


@register_embedded_model(NAME, version="2")
def _build_tiny_qwen2_addition(directory: Path) -> None:
    """:func:`sft_warm_start` with :data:`DEFAULTS` on one thread; ``$ENTROPO_WARM_START_STEPS``
    overrides the steps.

    One thread makes the float reductions, hence the weights and the step at which the stop
    rule fires, the same on every machine; with two threads the model depends on the machine's
    load, and runs with equal seeds are not comparable across machines. The version is bumped
    whenever the built model changes, so a cached model of another version is rebuilt.
    """
    settings = dict(DEFAULTS)
    if os.environ.get(STEPS_ENV):
        settings["steps"] = int(os.environ[STEPS_ENV])
    sft_warm_start(directory, **settings, eval_n=EVAL_N, threads=1)
