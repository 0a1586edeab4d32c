"""Build the supervised warm start of the tiny model into a directory and print its accuracy.

The same build as ``embedded:tiny-qwen2-addition`` (settings of
:data:`entropo.models.warm_start.DEFAULTS` unless overridden), for re-running or tuning it
by hand::

    .venv/bin/python scripts/build_warm_start.py /tmp/warm --steps 300 --sampled

It prints the record of ``warm_start.json`` (settings, training time, greedy accuracy on the
200 default eval problems) and, with ``--sampled``, the accuracy of temperature-1 samples
(8 per problem on the first 64 eval problems), which is what RL starts from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    from entropo.models.warm_start import DEFAULTS, EVAL_N, EVAL_SEED, MODEL_KWARGS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="output directory (created; existing files are overwritten)")
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    parser.add_argument("--digits", type=int, default=DEFAULTS["digits"])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--stop-at", type=float, default=DEFAULTS["stop_at"],
                        help="stop at this greedy accuracy on held-aside train problems; "
                             "a negative value trains all steps")
    parser.add_argument("--hidden-size", type=int, default=MODEL_KWARGS["hidden_size"])
    parser.add_argument("--num-layers", type=int, default=MODEL_KWARGS["num_layers"])
    parser.add_argument("--num-heads", type=int, default=MODEL_KWARGS["num_heads"])
    parser.add_argument("--intermediate-size", type=int, default=MODEL_KWARGS["intermediate_size"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: available cores)")
    parser.add_argument("--sampled", action="store_true", help="also measure temperature-1 accuracy")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from entropo.data.embedded import make_split
    from entropo.models.warm_start import accuracy, available_cores, sft_warm_start

    start = time.perf_counter()
    record = sft_warm_start(
        args.directory,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        digits=args.digits,
        seed=args.seed,
        stop_at=args.stop_at if args.stop_at >= 0 else None,
        model_kwargs={
            "hidden_size": args.hidden_size,
            "num_layers": args.num_layers,
            "num_heads": args.num_heads,
            "intermediate_size": args.intermediate_size,
        },
        threads=args.threads,
    )
    record["build_seconds"] = round(time.perf_counter() - start, 2)
    if args.sampled:
        torch.set_num_threads(args.threads or available_cores())
        model = AutoModelForCausalLM.from_pretrained(args.directory)
        tokenizer = AutoTokenizer.from_pretrained(args.directory)
        problems = make_split(EVAL_N, seed=EVAL_SEED, digits=args.digits, split="eval")[:64]
        record["eval_accuracy_sampled_t1"] = accuracy(
            model, tokenizer, problems, do_sample=True, num_samples=8, seed=args.seed
        )
    record.pop("losses")
    print(json.dumps(record, indent=2))
    print(f"greedy accuracy on {EVAL_N} eval problems: {record['eval_accuracy_greedy']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
