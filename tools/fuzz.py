#!/usr/bin/env python
"""Fuzz the pruner: run seeded random CNNs through onnxprune.api.check_random_plans.

    python tools/fuzz.py --graphs N --seed S [--plans K] [--max-nodes M] [--traceback]

Graph i uses seed S + i for both the graph (models/fuzzgraphs.random_cnn) and its
plans. Failures are printed as they happen, one line each (rebuild the model with
random_cnn(seed, max_nodes)); the last line is "N graphs, K plans, F failures".
Exit status: 0 if no failure, 1 on any failure, 2 if onnxprune.api cannot be imported.
"""
from __future__ import annotations

import argparse
import sys
import traceback

from onnxprune.models.fuzzgraphs import random_cnn  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--graphs", type=int, default=100, help="number of graphs (default 100)")
    p.add_argument("--seed", type=int, default=0, help="first graph seed (default 0)")
    p.add_argument("--plans", type=int, default=2, help="random plans per graph (default 2)")
    p.add_argument("--max-nodes", type=int, default=14, help="random_cnn max_nodes (default 14)")
    p.add_argument("--traceback", action="store_true", help="print full tracebacks of failures")
    return p.parse_args(argv)


def one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from onnxprune.api import check_random_plans
    except ImportError as exc:
        print(f"cannot import onnxprune.api.check_random_plans: {one_line(exc)}", file=sys.stderr)
        return 2
    done = plans = failures = 0
    try:
        for seed in range(args.seed, args.seed + args.graphs):
            try:
                plans += check_random_plans(random_cnn(seed, args.max_nodes), seed, args.plans)
            except Exception as exc:  # a fuzzer records every failure and goes on
                failures += 1
                print(f"seed {seed} (random_cnn({seed}, {args.max_nodes})): {one_line(exc)}",
                      flush=True)
                if args.traceback:
                    traceback.print_exc()
            done += 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    print(f"{done} graphs, {plans} plans, {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
