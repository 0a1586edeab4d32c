"""``entropo`` command line: ``entropo train [CONFIG.yaml] [key=value ...]``."""

from __future__ import annotations

import argparse
import sys

from entropo.config import ConfigError, load_config


def _split(args: list[str]) -> tuple[str | None, list[str]]:
    config = None
    if args and "=" not in args[0] and (args[0].endswith((".yaml", ".yml"))):
        config, args = args[0], args[1:]
    return config, args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="entropo", description="RL for reasoning LMs with entropy control")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a policy: entropo train [CONFIG.yaml] [key=value ...]")
    train.add_argument("args", nargs="*", help="an optional YAML recipe, then dotted overrides")
    ns = parser.parse_args(argv)

    if ns.command == "train":
        from entropo.trainer.run import RunError
        from entropo.trainer.run import train as run_train

        config, overrides = _split(ns.args)
        try:
            cfg = load_config(config, overrides)
            summary = run_train(cfg)
        except (ConfigError, RunError) as e:
            print(f"entropo: error: {e}", file=sys.stderr)
            return 2
        _print_summary(summary)
        return 0
    return 1


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _print_summary(summary: dict) -> None:
    run = summary["run_dir"]
    h0, h1 = summary.get("entropy_start"), summary.get("entropy_end")
    entropy = "n/a" if h0 is None else f"{h0:.3f} -> {h1:.3f} nats"
    print(f"\nrun finished: {summary['steps']} steps in {summary['wall_seconds']:.0f} s")
    print(f"  held-out accuracy {_pct(summary.get('accuracy_start'))} -> {_pct(summary.get('accuracy_end'))}; "
          f"token entropy {entropy}")
    print(f"  run directory: {run}  (config.yaml, metrics.jsonl, summary.json, checkpoints/)")
    print(f"  look at it:    tensorboard --logdir {run}   or   less {run}/metrics.jsonl")


if __name__ == "__main__":
    sys.exit(main())
