"""``python -m framework.bench <benchmark>``: benchmarks that print markdown tables.

  batching   padding, batch count and speed of the batching strategies side by side
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m framework.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="benchmark", required=True)
    b = sub.add_parser("batching", help="batching strategies side by side")
    b.add_argument("--budget", type=float, default=544.0, help="max_batch_length in seconds")
    b.add_argument("--buckets", type=int, default=60)
    b.add_argument("--no-million", dest="million", action="store_false", help="skip the 1M-length timing")
    args = parser.parse_args(argv)
    if args.benchmark == "batching":
        from framework.bench.batching import main as batching

        batching(args.budget, args.buckets, args.million)
    return 0


if __name__ == "__main__":
    sys.exit(main())
