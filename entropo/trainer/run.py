"""Build a run from its configuration and train: the body of ``entropo train``."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from entropo.config import TrainConfig, as_dict
from entropo.trainer.errors import RunError


def train(cfg: TrainConfig) -> dict:
    """Train to ``trainer.total_steps``; returns the run summary (also in ``summary.json``)."""
    from entropo.data.sampler import PromptSampler
    from entropo.models.loading import check_model_path, load_tokenizer
    from entropo.rewards import RewardFailureError, RewardManager, RewardSpecError
    from entropo.telemetry.sinks import make_sinks
    from entropo.trainer.checkpoint import (
        MARKER,
        CheckpointError,
        Checkpoints,
        CheckpointWriteError,
    )
    from entropo.trainer.cluster import Cluster, WorkerHungError, WorkerLostError, connect
    from entropo.trainer.controller import Controller
    from entropo.trainer.decode import NonFiniteLogitsError
    from entropo.trainer.errors import LearnerLostError, NonFiniteUpdateError

    started = time.time()
    marks = [("start", time.perf_counter())]
    try:
        check_model_path(cfg.model.path)  # here, before any actor loads it
        tokenizer = load_tokenizer(cfg.model.path)
    except (FileNotFoundError, ValueError) as e:
        raise RunError(str(e)) from None
    rows, eval_rows = prompts(cfg, tokenizer)
    run_dir = Path(cfg.trainer.output_dir)
    writable(run_dir)

    checkpoints = Checkpoints(run_dir / "checkpoints")
    try:
        resume_from = checkpoints.resolve(cfg.trainer.resume)
    except CheckpointError as e:
        raise RunError(str(e)) from None

    marks.append(("prepare", time.perf_counter()))
    connect(cfg)  # trainer.ray_address / RAY_ADDRESS, else a local Ray sized for the actors
    marks.append(("ray", time.perf_counter()))
    try:
        rewards = RewardManager(cfg.reward, tokenizer)
    except (RewardSpecError, ValueError) as e:
        raise RunError(str(e)) from None
    print(rewards.correctness_rule())
    cluster = Cluster(cfg)
    _wait_for_rewards(rewards, cluster)
    marks.append(("actors", time.perf_counter()))
    sampler = PromptSampler(rows, cfg.trainer.prompts_per_step, cfg.trainer.seed)
    controller = Controller(cfg, cluster, sampler, tokenizer, rewards, sinks=None, eval_rows=eval_rows)
    if resume_from is not None:
        controller.restore(resume_from)
        print(f"[resume] continuing from {resume_from} (step {controller.state.step}); the lines of later "
              f"steps in metrics.jsonl are replaced as those steps run again")
    if cfg.trainer.resume:
        for partial in checkpoints.incomplete():
            print(f"[resume] ignoring {partial}: an interrupted save (no {MARKER} marker), left on disk "
                  f"for inspection until a save of the same step replaces it")
    sinks = make_sinks(cfg.logger.backends, run_dir, cfg.trainer.total_steps, cfg.logger.project,
                       run_dir.name, as_dict(cfg), start_step=controller.state.step + 1)
    controller.sinks = sinks
    try:
        last = controller.fit()
    except (RewardFailureError, NonFiniteUpdateError) as e:
        raise RunError(f"{e} (steps before it are in {run_dir / 'metrics.jsonl'})") from None
    except NonFiniteLogitsError as e:  # raised in a rollout worker; Ray's error is also one
        cause = getattr(e, "cause", e)
        raise RunError(f"step {controller.state.step + 1}: {cause}; lower learner.lr (now {cfg.learner.lr:g}) "
                       f"(steps before it are in {run_dir / 'metrics.jsonl'})") from None
    except CheckpointWriteError as e:
        cluster.shutdown()  # no learner rank writes into the partial save any more
        raise RunError(e.remove_partial()) from None
    except (LearnerLostError, WorkerHungError, WorkerLostError) as e:
        # a learner dies in a step or in the checkpoint after it (state.step: the last completed step)
        step = controller.state.step + (0 if getattr(e, "during", "").startswith("checkpoint") else 1)
        done = checkpoints.complete()
        since = f"the last complete checkpoint, {done[-1]}" if done else "step 0 (no complete checkpoint yet)"
        raise RunError(f"step {step}: {e}; resume with trainer.resume=auto (from {since})") from None
    finally:
        sinks.close()
        rewards.close()
        cluster.shutdown()
    marks.append(("fit", time.perf_counter()))
    st = controller.state
    summary = {
        "steps": st.step,
        "wall_seconds": time.time() - started,
        # where the time went: model/tokenizer/data checks, Ray, actors up, the training loop
        "phase_seconds": {name: t - marks[i][1] for i, (name, t) in enumerate(marks[1:])},
        "accuracy_start": st.accuracy_start,
        "accuracy_end": st.accuracy_end,
        "entropy_start": st.entropy_start,
        "entropy_end": st.entropy_end,
        "reward_errors": st.reward_errors,
        "run_dir": str(run_dir.resolve()),
        "final": last,
    }
    (run_dir / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2))
    return summary


def _wait_for_rewards(rewards, cluster) -> None:
    """The reward workers (started in the background) are up, or the run stops in one line."""
    try:
        rewards.ready()
    except RuntimeError as e:
        cluster.shutdown()
        rewards.close()
        raise RunError(f"reward.fns: {e}") from None


def writable(run_dir: Path) -> None:
    """Create ``run_dir`` and write a probe file in it, or stop in one line (before any actor starts).

    Raises:
        RunError: naming ``trainer.output_dir``, the path and the OS's reason.
    """
    probe = run_dir / f".write-probe-{os.getpid()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RunError(f"trainer.output_dir: cannot write to {run_dir} ({e.strerror or type(e).__name__}); "
                       "choose a writable directory") from None


def _json_safe(value):
    """Strict JSON: NaN and infinities become null (as in metrics.jsonl)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def prompts(cfg: TrainConfig, tokenizer, train: bool = True) -> tuple[list, list]:
    """The run's training and evaluation prompts (``data.eval=auto`` resolved, long prompts
    dropped), with what was chosen printed once.

    Args:
        cfg: the run config.
        tokenizer: the policy's tokenizer (prompt lengths).
        train: whether the training prompts are needed; without, ``data.train`` is read only
            when ``data.eval=auto`` derives the evaluation prompts from it.

    Raises:
        RunError: a dataset that cannot be loaded or has no usable prompt (the key named).
    """
    from entropo.data.eval_split import AUTO, split_eval
    from entropo.data.loading import DataError, load_rows
    from entropo.data.prompts import filter_long

    rows = []
    if train or cfg.data.eval == AUTO:
        try:
            rows = load_rows(cfg.data.train, split="train")
        except DataError as e:
            raise RunError(f"data.train: {e}") from None
    try:
        choice = split_eval(cfg.data.train, cfg.data.eval, rows, cfg.evaluation.max_prompts)
    except DataError as e:
        raise RunError(f"data.eval: {e}") from None
    print(f"[data] {choice.source}")
    limit = cfg.data.max_prompt_tokens
    train_rows: list = []
    if train:
        train_rows, dropped = filter_long(choice.train, tokenizer, limit)
        if dropped:
            print(f"[data] dropped {dropped} training prompts longer than data.max_prompt_tokens={limit}")
        if not train_rows:
            raise RunError(f"data.train: no usable prompts in '{cfg.data.train}'")
    eval_rows, dropped = filter_long(choice.eval, tokenizer, limit)
    if dropped:
        print(f"[data] dropped {dropped} evaluation prompts longer than data.max_prompt_tokens={limit}")
    return train_rows, eval_rows


def evaluate_only(cfg: TrainConfig) -> dict[str, float]:
    """``entropo eval``: pass@1, pass@k and maj@k of ``model.path`` on the evaluation prompts.

    Only rollout workers start (no learner): they generate with ``model.path``'s weights, the
    reward functions score, and the metrics are also written to
    ``trainer.output_dir/eval.json``.
    """
    from entropo.models.loading import check_model_path, load_tokenizer
    from entropo.rewards import RewardFailureError, RewardManager, RewardSpecError
    from entropo.trainer.cluster import Cluster, WorkerHungError, WorkerLostError, connect
    from entropo.trainer.controller import Controller
    from entropo.trainer.decode import NonFiniteLogitsError

    if not cfg.data.eval:
        raise RunError("data.eval: set the evaluation prompts (it is null)")
    try:
        check_model_path(cfg.model.path)  # here, before any actor loads it
        tokenizer = load_tokenizer(cfg.model.path)
    except (FileNotFoundError, ValueError) as e:
        raise RunError(str(e)) from None
    _, rows = prompts(cfg, tokenizer, train=False)
    if not rows:
        raise RunError(f"data.eval: no evaluation prompts from data.train='{cfg.data.train}'; set data.eval")
    out = Path(cfg.trainer.output_dir)
    writable(out)  # before the evaluation, not after it
    connect(cfg)
    try:
        rewards = RewardManager(cfg.reward, tokenizer)
    except (RewardSpecError, ValueError) as e:
        raise RunError(str(e)) from None
    print(rewards.correctness_rule())
    cluster = Cluster(cfg, learners=False)
    _wait_for_rewards(rewards, cluster)
    try:
        controller = Controller(cfg, cluster, None, tokenizer, rewards, sinks=None, eval_rows=rows)
        metrics = controller.evaluate()
    except (RewardFailureError, WorkerHungError, WorkerLostError) as e:
        raise RunError(str(e)) from None
    except NonFiniteLogitsError as e:  # raised in a rollout worker; Ray's error is also one
        raise RunError(f"model.path={cfg.model.path}: {getattr(e, 'cause', e)}") from None
    finally:
        rewards.close()
        cluster.shutdown()
    (out / "eval.json").write_text(json.dumps(_json_safe({"model": cfg.model.path, **metrics}), indent=2))
    return metrics
