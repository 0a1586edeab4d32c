"""Entropy mechanism showcase: train several methods on the embedded task and compare them.

    .venv/bin/python benchmarks/entropy_mechanism.py [--methods grpo clip_cov kl_cov entropy_mask clip_b spurious_reward]
        [--all] [--steps 60] [--seed 0] [--seeds 1] [--lr 5e-5] [--paper-n]
        [--out runs/entropy_mechanism] [--set key=value ...]

Each method is its recipe ``configs/<name>.yaml`` on the defaults of
:func:`entropo.config.load_config` (model ``embedded:tiny-qwen2-addition``, data
``embedded:addition``), plus the same overrides for every method (:func:`method_overrides`):
``rollout.n=8``, ``trainer.prompts_per_step=16``, one ``learner.lr`` (``--lr``),
``evaluation.every=0`` (evaluation before the first and after the last step),
``reward.mode=local``, ``logger.backends=[jsonl]``, ``trainer.output_dir=<out>/<name>``,
``trainer.total_steps`` and ``trainer.seed``. A recipe that sets its own ``rollout.n`` (the
papers' 16, AEPO's 5, EMPO's 7) keeps it only with ``--paper-n``. A recipe whose overlong
``cache_len`` exceeds ``rollout.max_new_tokens`` (64 by default) gets a quarter of it, as
the DAPO recipe does. PEAR gets a weight-0 ``embedded`` checker after it (``reward.fns=[pear,
embedded*0]``): PEAR needs π_old entropies, which evaluation does not compute, so without it
the held-out accuracy reads 0. A recipe that trains its step in mini-batches
(``learner.mini_batch_prompts``) keeps their number at 16 prompts per step. The random
(spurious) reward's own ``reward.random.seed`` follows the run's seed. ``--set`` overrides
come last and win.

``--all`` runs every recipe in ``configs/`` except those in :data:`EXCLUDED` (none at present:
every recipe fits the embedded task with the overrides above) and those whose config
:func:`load_config` rejects with them; the output names each one left out and why.

The methods train one after another in one Ray session (each :func:`entropo.trainer.run.train`
creates and kills its own actors; Ray is restarted only after a failed run). A method whose
run raises becomes a ``failed`` row with the first line of its error, and the next method
runs. Then one comparison report (:func:`entropo.telemetry.report.write_report`) is written
to ``<out>/report.html``, with ``<out>/table.md`` and ``<out>/results.json``; the table is
printed, and the last line of output is ``wrote <out>/report.html``.

Seeds: ``--seeds N`` trains each method with ``trainer.seed`` = ``--seed``, ``--seed`` + 1, …,
``--seed`` + N − 1 (the warm-started model is the same for every seed; the seed changes the
prompt order and the sampling), one run directory per seed (``<out>/<name>/seed<k>``). The
table then gives, per method, the mean ± standard error over the seeds (sample standard
deviation / √N) of the final held-out accuracy and of entropy end/start, and the paired
difference to the first method (GRPO by default): the mean ± standard error of the per-seed
differences, the same seed giving both runs the same prompts. A difference whose magnitude is
below two standard errors is marked "within noise". The report draws each method's entropy
curve as the mean over seeds with a ± one-standard-error band. With one seed (the default)
the table is per run, as below.

Columns: final accuracy = ``accuracy_end`` (held-out ``eval/pass@1`` after the last step,
greedy), start accuracy = ``accuracy_start`` (before the first), final entropy =
``entropy_end`` (token-mean entropy of π_old at the last step, nats), and its ratio to
``entropy_start`` (the first step's). The ratio is what the entropy controls act on: plain
GRPO's entropy collapses (ratio well below 1), Clip-Cov and KL-Cov hold it up.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from omegaconf import OmegaConf  # noqa: E402

from entropo.config import TrainConfig, _normalise_overrides, load_config  # noqa: E402

CONFIGS = ROOT / "configs"
SHOWCASE = ("grpo", "clip_cov", "kl_cov", "entropy_mask", "clip_b", "spurious_reward")
"""The default methods: GRPO, four entropy controls (Clip-Cov, KL-Cov, the 80/20 mask, Clip_B)
and the spurious-reward control (GRPO on a random reward)."""
NOISE_SE = 2.0
"""A paired difference whose magnitude is below this many standard errors is "within noise"."""
LAPTOP_N = 8
"""G of every method unless ``--paper-n`` keeps the recipe's own ``rollout.n``."""
PROMPTS_PER_STEP = 16
DEFAULT_LR = 5e-5
DEFAULT_STEPS = 60
DEFAULT_OUT = "runs/entropy_mechanism"
EXCLUDED: dict[str, str] = {}
"""Recipes ``--all`` leaves out, and why: they need a setting the embedded task cannot provide.
Recipes that fail :func:`load_config` with :func:`method_overrides` are left out too."""
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def recipes() -> list[str]:
    """The recipe names in ``configs/`` (``configs/<name>.yaml``), sorted."""
    return sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def recipe_path(name: str) -> Path:
    return CONFIGS / f"{name}.yaml"


def _set_keys(sets: list[str]) -> set[str]:
    return {s.split("=", 1)[0].strip() for s in sets if "=" in s}


def run_dir(name: str, args: argparse.Namespace, seed: int | None = None) -> Path:
    """``<out>/<name>`` for one seed, ``<out>/<name>/seed<k>`` when ``--seeds`` > 1."""
    base = Path(args.out) / name
    return base if args.seeds == 1 else base / f"seed{args.seed if seed is None else seed}"


def seeds(args: argparse.Namespace) -> list[int]:
    """``--seed``, ``--seed`` + 1, …: the ``--seeds`` values of ``trainer.seed``."""
    return [args.seed + i for i in range(args.seeds)]


def method_overrides(name: str, args: argparse.Namespace, seed: int | None = None) -> list[str]:
    """The dotted overrides that make ``configs/<name>.yaml`` one run of this benchmark.

    Args:
        name: the recipe name.
        args: the parsed options (``steps``, ``seed``, ``seeds``, ``lr``, ``out``, ``paper_n``,
            ``set``).
        seed: this run's ``trainer.seed`` (default ``--seed``).

    Returns:
        The overrides for :func:`load_config`: the common ones, those that fit the recipe to
        the embedded task, then ``args.set`` (last, so they win).
    """
    recipe = OmegaConf.load(recipe_path(name))
    recipe_n = OmegaConf.select(recipe, "rollout.n")
    n = recipe_n if args.paper_n and recipe_n is not None else LAPTOP_N
    out = [
        f"rollout.n={n}",
        f"trainer.prompts_per_step={PROMPTS_PER_STEP}",
        f"learner.lr={args.lr}",
        "evaluation.every=0",
        "reward.mode=local",
        "logger.backends=[jsonl]",
        f"trainer.output_dir={run_dir(name, args, seed)}",
        f"trainer.total_steps={args.steps}",
        f"trainer.seed={args.seed if seed is None else seed}",
    ]
    sets = list(args.set or [])
    # What the run would get, unvalidated, to fit the recipe's lengths to it.
    view = OmegaConf.merge(OmegaConf.structured(TrainConfig), recipe,
                           OmegaConf.from_dotlist(_normalise_overrides(out + sets)))
    l_max = int(view.rollout.max_new_tokens)
    overlong = view.algorithm.overlong
    if (overlong.enable and overlong.cache_len > l_max
            and "algorithm.overlong.cache_len" not in _set_keys(sets)):
        out.append(f"algorithm.overlong.cache_len={max(1, l_max // 4)}")
    # A recipe that splits its step into mini-batches keeps their number at this step size.
    mini = view.learner.mini_batch_prompts
    if mini is not None and "learner.mini_batch_prompts" not in _set_keys(sets):
        recipe_prompts = OmegaConf.select(recipe, "trainer.prompts_per_step") or TrainConfig().trainer.prompts_per_step
        count = max(1, int(recipe_prompts) // int(mini))
        out.append(f"learner.mini_batch_prompts={max(1, PROMPTS_PER_STEP // count)}")
    # PEAR needs π_old entropies, which evaluation does not compute: its per-sample call
    # raises there and the held-out accuracy would read 0. A weight-0 embedded checker after
    # it gives evaluation the plain correctness (the first ``acc`` wins, so training keeps
    # PEAR's own) and adds nothing to the reward.
    fns = [str(f) for f in view.reward.fns]
    if (any(f.split("=")[-1].split("*")[0].strip() == "pear" for f in fns)
            and str(view.data.train if view.data.eval == "auto" else view.data.eval or "").startswith("embedded")
            and "reward.fns" not in _set_keys(sets)):
        out.append(f"reward.fns=[{','.join([*fns, 'embedded*0'])}]")
    # The random (spurious) reward has its own seed: each seed of the study draws other rewards.
    if any(f.split("=")[-1].split("*")[0].strip() == "random" for f in fns) and "reward.random.seed" not in _set_keys(sets):
        out.append(f"reward.random.seed={args.seed if seed is None else seed}")
    return out + sets


def select_methods(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The methods to run, and those ``--all`` leaves out with the reason.

    Args:
        args: the parsed options.

    Returns:
        ``(methods, excluded)``; ``excluded`` maps a recipe name to why it is not run.
    """
    if not args.all:
        return list(args.methods), {}
    methods, excluded = [], {}
    for name in recipes():
        if name in EXCLUDED:
            excluded[name] = EXCLUDED[name]
            continue
        try:
            load_config(recipe_path(name), method_overrides(name, args))
        except Exception as e:  # the recipe cannot run on the embedded task at all
            excluded[name] = f"its config does not load with these settings: {_first_line(e)}"
            continue
        methods.append(name)
    return methods, excluded


def _first_line(e: BaseException) -> str:
    """``Type: first line`` of an error; a Ray task error gives its cause's message, not
    Ray's header (``RayTaskError(ValueError): <the ValueError's first line>``)."""
    cause = getattr(e, "cause", None)
    text = _ANSI.sub("", str(cause if isinstance(cause, BaseException) else e)).strip()
    line = text.splitlines()[0].strip() if text else ""
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def _ratio(end: float | None, start: float | None) -> float | None:
    if end is None or start is None or not math.isfinite(end) or not math.isfinite(start) or start == 0:
        return None
    return end / start


def run_method(name: str, args: argparse.Namespace, seed: int | None = None) -> dict[str, Any]:
    """Train one method with one seed; return its result row (``status`` ``ok`` or ``failed``).

    Args:
        name: the recipe name.
        args: the parsed options.
        seed: ``trainer.seed`` (default ``--seed``).

    Returns:
        ``method``, ``seed``, ``status``, ``accuracy_start``, ``accuracy_end``,
        ``entropy_start``, ``entropy_end``, ``entropy_ratio``, ``steps``, ``wall_seconds``,
        ``run_dir``, ``overrides`` and, when failed, ``error``.
    """
    from entropo.trainer.run import train

    seed = args.seed if seed is None else seed
    out = run_dir(name, args, seed)
    for stale in ("summary.json", "metrics.jsonl"):  # a failed run must not show an old one
        (out / stale).unlink(missing_ok=True)
    row: dict[str, Any] = {"method": name, "seed": seed, "status": "ok", "run_dir": str(out)}
    started = time.time()
    try:
        overrides = method_overrides(name, args, seed)
        row["overrides"] = overrides
        summary = train(load_config(recipe_path(name), overrides))
    except Exception as e:
        row.update(status="failed", error=_first_line(e), wall_seconds=time.time() - started)
        print(f"[entropy_mechanism] {name} (seed {seed}) failed: {row['error']}", flush=True)
        return row
    for key in ("accuracy_start", "accuracy_end", "entropy_start", "entropy_end", "steps",
                "wall_seconds", "run_dir"):
        row[key] = summary.get(key)
    row["entropy_ratio"] = _ratio(row["entropy_end"], row["entropy_start"])
    return row


def _num(x: Any, fmt: str) -> str:
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "n/a"
    return format(x, fmt)


def _pct(x: Any) -> str:
    text = _num(100 * x if isinstance(x, (int, float)) else None, ".1f")
    return text if text == "n/a" else text + "%"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def format_table(results: list[dict[str, Any]]) -> str:
    """A markdown table of result rows (as :func:`run_method` returns them).

    Args:
        results: one row per method, in run order.

    Returns:
        The table: method, final and start held-out accuracy (pass@1), final token entropy,
        its end/start ratio, wall seconds, and a status (``failed: <error>`` for a failed run).
    """
    lines = [
        "| method | final accuracy | start accuracy | final entropy | entropy end/start | wall s | status |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        failed = r.get("status") == "failed"
        acc_end = None if failed else r.get("accuracy_end")
        acc_start = None if failed else r.get("accuracy_start")
        h_end = None if failed else r.get("entropy_end")
        ratio = None if failed else r.get("entropy_ratio")
        acc = [_pct(a) for a in (acc_end, acc_start)]
        status = f"failed: {_cell(r.get('error') or 'unknown error')}" if failed else "ok"
        lines.append(
            f"| {_cell(str(r.get('method', '?')))} | {acc[0]} | {acc[1]} | {_num(h_end, '.3f')} | "
            f"{_num(ratio, '.2f')} | {_num(r.get('wall_seconds'), '.0f')} | {status} |"
        )
    return "\n".join(lines)


def mean_se(values: list[float]) -> tuple[float, float | None] | None:
    """``(mean, standard error)`` of the finite values: sample standard deviation / √n; the
    error is None for a single value and the result None for none."""
    xs = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not xs:
        return None
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, None
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    return mean, math.sqrt(var / len(xs))


def paired_difference(rows: list[dict[str, Any]], base: list[dict[str, Any]], key: str) -> tuple[float, float | None] | None:
    """Mean ± standard error of ``row[key] − base_row[key]`` over the seeds both ran (ok)."""
    by_seed = {b["seed"]: b.get(key) for b in base if b.get("status") == "ok"}
    diffs = [r[key] - by_seed[r["seed"]] for r in rows
             if r.get("status") == "ok" and r.get("seed") in by_seed
             and all(isinstance(v, (int, float)) and math.isfinite(v) for v in (r.get(key), by_seed[r["seed"]]))]
    return mean_se(diffs)


def _pm(stat: tuple[float, float | None] | None, scale: float, fmt: str, unit: str = "") -> str:
    if stat is None:
        return "n/a"
    mean, se = stat
    text = format(scale * mean, fmt) + unit
    return text if se is None else f"{text} ± {format(scale * se, fmt.lstrip('+'))}{unit}"


def _noise(stat: tuple[float, float | None] | None) -> str:
    if stat is None or stat[1] is None:
        return ""
    return " (within noise)" if abs(stat[0]) < NOISE_SE * stat[1] else ""


def format_seed_table(results: list[dict[str, Any]], methods: list[str]) -> str:
    """One row per method over its seeds (as :func:`run_method` returns the rows).

    Args:
        results: every run's row.
        methods: the methods in table order; the first is the baseline of the paired differences.

    Returns:
        A markdown table: seeds that ran, held-out accuracy at the start and the end and
        entropy end/start (mean ± standard error), and the paired differences to the baseline
        of the final accuracy (points) and of entropy end/start, marked "within noise" below
        :data:`NOISE_SE` standard errors.
    """
    base_name = methods[0]
    by_method = {m: [r for r in results if r.get("method") == m] for m in methods}
    lines = [
        f"| method | seeds | start accuracy | final accuracy | entropy end/start | "
        f"Δ final accuracy vs {base_name} (points) | Δ entropy end/start vs {base_name} |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in methods:
        rows = by_method[m]
        ok = [r for r in rows if r.get("status") == "ok"]
        seeds_text = f"{len(ok)}/{len(rows)}"
        acc0, acc1, ratio = (mean_se([r.get(k) for r in ok]) for k in ("accuracy_start", "accuracy_end", "entropy_ratio"))
        if m == base_name:
            d_acc = d_ratio = "—"
        else:
            da = paired_difference(rows, by_method[base_name], "accuracy_end")
            dr = paired_difference(rows, by_method[base_name], "entropy_ratio")
            d_acc = _pm(da, 100, "+.1f") + _noise(da)
            d_ratio = _pm(dr, 1, "+.3f") + _noise(dr)
        lines.append(f"| {_cell(m)} | {seeds_text} | {_pm(acc0, 100, '.1f', '%')} | {_pm(acc1, 100, '.1f', '%')} | "
                     f"{_pm(ratio, 1, '.3f')} | {d_acc} | {d_ratio} |")
    failed = [r for r in results if r.get("status") == "failed"]
    for r in failed:
        lines.append(f"\nfailed: {r.get('method')} seed {r.get('seed')}: {_cell(r.get('error') or 'unknown error')}")
    return "\n".join(lines)


def _excluded_text(excluded: dict[str, str]) -> str:
    if not excluded:
        return ""
    return "\n".join(["Not run (--all leaves them out):"] + [f"- {k}: {v}" for k, v in excluded.items()])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    names = recipes()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(SHOWCASE), metavar="NAME",
                   help=f"recipes of configs/ to run (default: {' '.join(SHOWCASE)}); one of: {', '.join(names)}")
    p.add_argument("--all", action="store_true",
                   help="run every recipe of configs/ that fits the embedded task (says which are left out and why)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"training steps of each method (default {DEFAULT_STEPS})")
    p.add_argument("--seed", type=int, default=0, help="trainer.seed of every method (default 0)")
    p.add_argument("--seeds", type=int, default=1,
                   help="seeds per method: --seed, --seed+1, ... (default 1); > 1 prints mean ± standard error "
                        "and paired differences to the first method")
    p.add_argument("--lr", type=float, default=DEFAULT_LR, help=f"learner.lr of every method (default {DEFAULT_LR})")
    p.add_argument("--paper-n", action="store_true",
                   help=f"keep a recipe's own rollout.n (e.g. 16) instead of {LAPTOP_N}")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a dotted override applied to every method, after the others (repeatable), e.g. learner.lr=1e-5")
    args = p.parse_args(argv)
    unknown = [m for m in args.methods if m not in names]
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}: not in configs/ ({', '.join(names)})")
    bad = [s for s in args.set if "=" not in s]
    if bad:
        p.error(f"--set {bad[0]}: not of the form key=value")
    if args.steps < 1:
        p.error("--steps must be >= 1")
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the methods, write ``table.md``, ``results.json`` and ``report.html`` in ``--out``.

    Args:
        argv: the command line without the program name (None: ``sys.argv[1:]``).

    Returns:
        0 when the report was written (even with failed methods), 1 when no run left metrics.
    """
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    methods, excluded = select_methods(args)
    if excluded:
        print(_excluded_text(excluded), flush=True)
    elif args.all:
        print("--all: every recipe in configs/ fits the embedded task; none left out", flush=True)
    seed_list = seeds(args)
    seed_text = f"seed {args.seed}" if len(seed_list) == 1 else f"seeds {seed_list[0]}-{seed_list[-1]}"
    print(f"[entropy_mechanism] {len(methods)} method(s), {args.steps} step(s) each, {seed_text}, "
          f"lr {args.lr}: {' '.join(methods)}", flush=True)

    import ray

    results = []
    runs = [(name, seed) for seed in seed_list for name in methods]  # seed-major: a cut run still pairs
    try:
        for i, (name, seed) in enumerate(runs, 1):
            print(f"\n[entropy_mechanism] ({i}/{len(runs)}) {name}, seed {seed}", flush=True)
            row = run_method(name, args, seed)
            results.append(row)
            if row["status"] == "failed" and ray.is_initialized():
                ray.shutdown()  # leave no actor or placement group of the failed run behind
    finally:
        if ray.is_initialized():
            ray.shutdown()

    table = format_table(results) if len(seed_list) == 1 else format_seed_table(results, methods)
    settings = dict(vars(args))
    md = [f"# Entropy mechanism: {args.steps} steps, {seed_text}, lr {args.lr}", "", table]
    if excluded:
        md += ["", _excluded_text(excluded)]
    (out / "table.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    (out / "results.json").write_text(
        json.dumps({"settings": settings, "results": results, "excluded": excluded}, indent=2, default=str),
        encoding="utf-8",
    )

    print("\n" + table)
    if excluded:
        print("\n" + _excluded_text(excluded))
    run_dirs = [Path(r["run_dir"]) for r in results
                if (Path(r["run_dir"]) / "metrics.jsonl").is_file()
                and (Path(r["run_dir"]) / "metrics.jsonl").stat().st_size > 0]
    if not run_dirs:
        print(f"no report: no run wrote metrics (see {out / 'results.json'})", file=sys.stderr)
        return 1
    from entropo.telemetry.report import write_report

    groups = None
    if len(seed_list) > 1:
        groups = {m: [d for d in run_dirs if d.parent.name == m] for m in methods}
        groups = {m: ds for m, ds in groups.items() if ds}
    path = write_report(run_dirs, out, groups=groups)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
