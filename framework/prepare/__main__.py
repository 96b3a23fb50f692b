"""``python -m framework.prepare <command>``: get a corpus ready for training.

  stats     length histogram and summary of a manifest; with --batching, the batches a
            batching config makes of it (count, padding %, batch sizes), without training
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m framework.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    st = sub.add_parser("stats", help="length statistics, histogram and batching summary of a manifest")
    st.add_argument("manifest")
    st.add_argument("--png", help="write the length histogram here")
    st.add_argument("--batching", help="a batching option (conf/batching): dynamic, fixed or sorted")
    st.add_argument("--epochs", type=int, default=1, help="epochs of batches to summarise")
    st.epilog = "Batching overrides follow as key=value, e.g. max_batch_length=200 num_buckets=30."

    args, rest = parser.parse_known_args(argv)
    overrides = [a for a in rest if "=" in a and not a.startswith("-")]
    if len(overrides) != len(rest):
        parser.error(f"unrecognized arguments: {' '.join(a for a in rest if a not in overrides)}")
    if args.command == "stats":
        from framework.prepare.stats import run_stats

        run_stats(args.manifest, args.png, args.batching, overrides, args.epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
