"""``python -m framework.bench <benchmark>``: benchmarks that print markdown tables.

  batching   padding, batch count and speed of the batching strategies side by side
  convergence  time to a target CER of the batching strategies: real runs, several seeds
  ds2        DeepSpeech2 on the DeepMark corpus: fwd/bwd timing, throughput, framework overhead
  loader     the same corpus read from per-file FLAC, HDF5 audio and HDF5 features
"""

from __future__ import annotations

import argparse
import sys

from framework.cli import parse_with_overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m framework.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="benchmark", required=True)
    b = sub.add_parser("batching", help="batching strategies side by side")
    b.add_argument("--budget", type=float, default=544.0, help="max_batch_length in seconds")
    b.add_argument("--buckets", type=int, default=60)
    b.add_argument("--no-million", dest="million", action="store_false", help="skip the 1M-length timing")
    d = sub.add_parser("ds2", help="DeepSpeech2 DeepMark timing; config overrides follow as key=value")
    d.add_argument("--batch-size", type=int, default=32)
    d.add_argument("--sweep-batch", help="comma-separated batch sizes to try; the fastest is reported")
    d.add_argument("--batching", choices=["equal", "config"], default="equal",
                   help="equal: the reference's equal-length minibatches; config: the batching= config group")
    d.add_argument("--max-batches", type=int, help="time this many minibatches spread over the epoch")
    d.add_argument("--repeats", type=int, default=3, help="timed passes per loop (median reported)")
    d.add_argument("--no-compare", dest="compare", action="store_false", help="skip the framework-vs-plain comparison")
    lo = sub.add_parser("loader", help="loader throughput: FLAC vs HDF5 audio vs HDF5 features")
    lo.add_argument("--utterances", type=int, default=600)
    lo.add_argument("--root", default="/tmp/loader-bench", help="where the benchmark corpus is written")
    c = sub.add_parser("convergence", help="time to accuracy of the batching strategies; overrides go to every run")
    c.add_argument("--corpora", default="speech,tones", help="comma-separated: speech, tones")
    c.add_argument("--variants", default="fitted,wide,duration,mix2,mix3,sorted,fixed", help="comma-separated")
    c.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    c.add_argument("--out", default="runs/convergence", help="run folders (cached), tables and plots")
    c.add_argument("--jobs", type=int, default=1, help="training runs at a time")
    c.add_argument("--threads", type=int, default=1, help="intra-op threads per run")
    c.add_argument("--report-only", action="store_true", help="tables and plots from the runs already there")
    args, overrides = parse_with_overrides(parser, argv)
    if args.benchmark == "loader":
        from framework.bench.loader import main as loader

        loader(args.utterances, args.root)
    elif args.benchmark == "ds2":
        from framework.bench.ds2 import main as ds2

        sizes = [int(x) for x in args.sweep_batch.split(",")] if args.sweep_batch else [args.batch_size]
        ds2(overrides, sizes, args.batching, args.max_batches, args.repeats, args.compare)
    elif args.benchmark == "batching":
        from framework.bench.batching import main as batching

        batching(args.budget, args.buckets, args.million)
    elif args.benchmark == "convergence":
        from pathlib import Path

        from framework.bench.convergence import main as convergence

        convergence(args.corpora.split(","), args.variants.split(","), [int(s) for s in args.seeds.split(",")],
                    Path(args.out), args.jobs, args.threads, args.report_only, overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
