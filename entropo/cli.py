"""``entropo`` command line.

- ``entropo train [CONFIG] [key=value ...]``: train a policy; CONFIG is a YAML file or a
  shipped recipe's name (``entropo train clip_cov``).
- ``entropo report RUN [RUN ...] [--out DIR]``: an HTML report of one or more run directories
  (default ``DIR``: the first run's ``report/``); prints the path of ``report.html``.
- ``entropo launch CONFIG.yaml --address http://HEAD:8265 [key=value ...]``: train as a Ray
  job on a cluster; ``--stop JOB``; ``--slurm --nodes N`` writes an sbatch script
  (:mod:`entropo.launch.cli`, docs/multinode.md).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="entropo", description="RL for reasoning LMs with entropy control")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, the full traceback instead of the one-line message")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a policy: entropo train [CONFIG.yaml | RECIPE] [key=value ...]")
    train.add_argument("args", nargs="*", help="an optional YAML recipe, then dotted overrides")
    report = sub.add_parser("report", help="plot run directories into one self-contained report.html")
    report.add_argument("runs", nargs="+", metavar="RUN", help="run directories (trainer.output_dir)")
    report.add_argument("--out", metavar="DIR", default=None,
                        help="output folder (default: RUN/report of the first run)")
    evaluate = sub.add_parser("eval", help="evaluate a policy: entropo eval [CONFIG.yaml] [key=value ...] "
                              "(model.path = a checkpoint's hf/ folder or any model)")
    evaluate.add_argument("args", nargs="*", help="an optional YAML recipe, then dotted overrides")
    config = sub.add_parser("config", help="print the configuration reference (every key, default, meaning)")
    config.add_argument("args", nargs="*", help="optionally a YAML recipe and overrides: print the resolved config")
    from entropo.launch.cli import add_arguments as add_launch_arguments

    launch = sub.add_parser("launch", help="train on a Ray cluster: as a Ray job, or a Slurm script "
                            "(docs/multinode.md)")
    add_launch_arguments(launch)
    ns = parser.parse_args(argv)

    if ns.command == "launch":
        from entropo.launch.cli import run as run_launch

        return run_launch(ns)

    if ns.command == "report":
        return _report(ns.runs, ns.out)

    if ns.command == "config":
        return _config(ns.args, ns.debug)

    if ns.command == "eval":
        return _eval(ns.args, ns.debug)

    if ns.command == "train":
        from entropo.config import ConfigError, load_config, split_args
        from entropo.trainer.errors import RunError

        config, overrides = split_args(ns.args)
        try:
            cfg = load_config(config, overrides)
            # the run's modules import torch, Ray and DeepSpeed: a config error is reported first
            from entropo.trainer.run import train as run_train

            summary = run_train(cfg)
        except (ConfigError, RunError) as e:
            if ns.debug:
                raise
            print(f"entropo: error: {e}", file=sys.stderr)
            return 2
        _print_summary(summary)
        return 0
    return 1


def _report(runs: list[str], out: str | None) -> int:
    from pathlib import Path

    from entropo.telemetry.report import ReportError, write_report

    try:
        path = write_report([Path(r) for r in runs], Path(out) if out else Path(runs[0]) / "report")
    except (ReportError, OSError) as e:
        print(f"entropo: error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _config(args: list[str], debug: bool = False) -> int:
    if not args:
        from entropo.config_docs import markdown

        print(markdown(), end="")
        return 0
    from entropo.config import ConfigError, load_config, split_args, to_yaml

    config, overrides = split_args(args)
    try:
        print(to_yaml(load_config(config, overrides)), end="")
    except ConfigError as e:
        if debug:
            raise
        print(f"entropo: error: {e}", file=sys.stderr)
        return 2
    return 0


def _eval(args: list[str], debug: bool = False) -> int:
    from entropo.config import ConfigError, load_config, split_args
    from entropo.trainer.errors import RunError

    config, overrides = split_args(args)
    try:
        cfg = load_config(config, overrides)
        from entropo.trainer.run import evaluate_only  # torch, Ray: after the config is known good

        metrics = evaluate_only(cfg)
    except (ConfigError, RunError) as e:
        if debug:
            raise
        print(f"entropo: error: {e}", file=sys.stderr)
        return 2
    width = max(len(k) for k in metrics)
    for key in sorted(metrics):
        print(f"{key:<{width}}  {metrics[key]:.4f}")
    return 0


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _print_summary(summary: dict) -> None:
    run = summary["run_dir"]
    h0, h1 = summary.get("entropy_start"), summary.get("entropy_end")
    entropy = "n/a" if h0 is None else f"{h0:.3f} -> {h1:.3f} nats"
    print(f"\nrun finished: {summary['steps']} steps in {summary['wall_seconds']:.0f} s")
    print(f"  held-out accuracy {_pct(summary.get('accuracy_start'))} -> {_pct(summary.get('accuracy_end'))}; "
          f"token entropy {entropy}")
    errors = summary.get("reward_errors") or 0
    if errors:
        print(f"  reward errors: {errors:.0f} (function, response) calls fell back to reward.fallback_score "
              "(reward/errors in metrics.jsonl)")
    print(f"  run directory: {run}  (config.yaml, metrics.jsonl, summary.json, checkpoints/)")
    print(f"  look at it:    entropo report {run}   (plots in {run}/report/report.html)")


if __name__ == "__main__":
    sys.exit(main())
