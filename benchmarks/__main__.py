"""``python -m benchmarks <benchmark>``: benchmarks that print markdown tables. They live in
the checkout beside the package, not in it: run them from the repository root.

  batching   padding, batch count and speed of the batching strategies side by side
  convergence  time to a target CER of the batching strategies: real runs, several seeds
  ds2        DeepSpeech2 on the DeepMark corpus: fwd/bwd timing, throughput, framework overhead
  recurrences  DeepSpeech2's recurrences on the CPU: packed sequences against the padded path, an epoch's batches
  vs-speechbrain  the whole training loop against SpeechBrain's Brain (SpeechBrain installed beside)
  gpu        every GPU path in one command: DS2 precisions and batch sizes, memory tips, batch-budget
             finder, OOM skip, mixed-precision CER, data loading; writes report.md and report.json
  shards     a corpus behind a slow HTTP server: streamed shards against per-file reads and local HDF5
  fsdp       FSDP against DDP on 2 ranks: per-rank memory of the model's state, the loss of every step
  freeze-memory  trainable parameters, optimizer state and peak memory with each trainer.freeze setting
  threads    epoch time with PyTorch's thread count, num_threads=auto and 1; idle or beside busy processes
  budget     units, models and schedules at an equal time budget on the sentence corpus (3 seeds)
  loader     the same corpus read from per-file FLAC, HDF5 audio, per-file .npy and HDF5 features
"""

from __future__ import annotations

import argparse
import sys

from framework.cli import parse_with_overrides


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["gpu"]:  # its own options: python -m benchmarks gpu --help
        from benchmarks.gpu import main as gpu

        return gpu(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
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
    r = sub.add_parser("recurrences", help="DeepSpeech2's recurrences on the CPU, packed vs padded; overrides follow")
    r.add_argument("--rnn-types", default="gru,lstm", help="comma-separated model.rnn_type values")
    r.add_argument("--threads", type=int, default=1, help="intra-op threads")
    r.add_argument("--max-batches", type=int, help="time only the epoch's first N batches")
    lo = sub.add_parser("loader", help="loader throughput: FLAC vs HDF5 audio vs .npy vs HDF5 features")
    lo.add_argument("--utterances", type=int, default=4000)
    lo.add_argument("--workers", default="0,2,4", help="comma-separated DataLoader worker counts")
    lo.add_argument("--min-seconds", type=float, default=3.0, help="time whole epochs for at least this long")
    lo.add_argument("--root", default="/tmp/loader-bench", help="where the benchmark corpus is written")
    sub.add_parser("gpu", help="every GPU path in one command (see: python -m benchmarks gpu --help)")
    v = sub.add_parser("vs-speechbrain", help="the whole loop against SpeechBrain's; overrides apply to both sides")
    v.add_argument("--corpora", default="speech,tones", help="comma-separated: speech, tones")
    v.add_argument("--seeds", default="0,1", help="comma-separated: one framework/SpeechBrain pair per seed")
    v.add_argument("--targets", default="0.2,0.1", help="comma-separated validation CERs to time both sides to")
    v.add_argument("--threads", type=int, default=2, help="intra-op threads on both sides")
    v.add_argument("--out", help="folder for the runs (default runs/vs-speechbrain/<time>)")
    c = sub.add_parser("convergence", help="time to accuracy of the batching strategies; overrides go to every run")
    c.add_argument("--corpora", default="speech,tones", help="comma-separated: speech, tones")
    c.add_argument("--variants", default="fitted,wide,duration,mix2,mix3,sorted,fixed", help="comma-separated")
    c.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    c.add_argument("--out", default="runs/convergence", help="run folders (cached), tables and plots")
    c.add_argument("--jobs", type=int, default=1, help="training runs at a time")
    c.add_argument("--threads", type=int, default=1, help="intra-op threads per run")
    c.add_argument("--report-only", action="store_true", help="tables and plots from the runs already there")
    f = sub.add_parser("freeze-memory", help="optimizer state and peak memory with each trainer.freeze setting")
    f.add_argument("--freeze", default=",convs,convs;rnns", help="settings separated by ',' (patterns within one by ';')")
    f.add_argument("--batch", type=int, default=8, help="examples of the longest length")
    f.add_argument("--steps", type=int, default=2)
    sh = sub.add_parser("shards", help="shards vs per-file reads through a slow HTTP server, vs local HDF5")
    sh.add_argument("--corpus", choices=["tones", "speech"], default="tones")
    sh.add_argument("--utterances", type=int, default=20000, help="size of the tones corpus")
    sh.add_argument("--latency-ms", type=float, default=20.0, help="added to every request")
    sh.add_argument("--workers", type=int, default=2)
    sh.add_argument("--shard-size", type=int, default=200)
    sh.add_argument("--root", default="/tmp/shards-bench", help="where the corpus, its shards and HDF5 are written")
    sh.add_argument("--rounds", type=int, default=2, help="timed turns after the warm-up turn (the fastest is kept)")
    sh.add_argument("--sources", default="per-file,flac-http,wav-http,hdf5,flac-local,wav-local",
                    help="comma-separated, of: per-file, flac-http, wav-http, hdf5, flac-local, wav-local")
    fs = sub.add_parser("fsdp", help="FSDP against DDP on 2 ranks (torchrun): memory per rank and the losses")
    fs.add_argument("--steps", type=int, default=20)
    fs.add_argument("--out", help="folder for the ranks' records (default: a temporary one)")
    t = sub.add_parser("threads", help="epoch time with PyTorch's thread count vs num_threads=auto vs 1")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--repeats", type=int, default=2)
    bu = sub.add_parser("budget", help="units, models and schedules at an equal time budget; overrides go to every run")
    bu.add_argument("--arms", default="char,bpe128,bpe512,transducer,char_epochs", help="comma-separated")
    bu.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    bu.add_argument("--budget", default="10m", help="trainer.max_time of the time-budgeted arms")
    bu.add_argument("--hand-epochs", type=int,
                    help="epochs of char_epochs and speech_epochs (default: the most that fit the budget)")
    bu.add_argument("--jobs", type=int, default=2, help="training runs at a time (one thread each)")
    bu.add_argument("--out", default="runs/budget", help="run folders (cached) and report.md")
    bu.add_argument("--report-only", action="store_true", help="the table from the runs already there")
    args, overrides = parse_with_overrides(parser, argv)
    if args.benchmark == "loader":
        from benchmarks.loader import main as loader

        loader(args.utterances, args.root, tuple(int(w) for w in args.workers.split(",")), args.min_seconds)
    elif args.benchmark == "ds2":
        from benchmarks.ds2 import main as ds2

        sizes = [int(x) for x in args.sweep_batch.split(",")] if args.sweep_batch else [args.batch_size]
        ds2(overrides, sizes, args.batching, args.max_batches, args.repeats, args.compare)
    elif args.benchmark == "recurrences":
        from benchmarks.recurrences import main as recurrences

        recurrences(overrides, args.rnn_types.split(","), args.threads, args.max_batches)
    elif args.benchmark == "vs-speechbrain":
        from benchmarks.vs_speechbrain import main as vs_speechbrain

        vs_speechbrain(args.corpora.split(","), [int(x) for x in args.seeds.split(",")], args.threads, args.out,
                       overrides, [float(x) for x in args.targets.split(",")])
    elif args.benchmark == "batching":
        from benchmarks.batching import main as batching

        batching(args.budget, args.buckets, args.million)
    elif args.benchmark == "threads":
        from benchmarks.threads import main as threads

        threads(args.epochs, args.repeats, overrides)
    elif args.benchmark == "freeze-memory":
        from benchmarks.freeze_memory import main as freeze_memory

        freeze_memory([f.replace(";", ",") for f in args.freeze.split(",")], args.batch, args.steps, overrides)
    elif args.benchmark == "shards":
        from benchmarks.shards import main as shards

        shards(args.corpus, args.utterances, args.latency_ms, args.workers, args.shard_size, args.root, args.rounds,
               args.sources.split(","))
    elif args.benchmark == "fsdp":
        from benchmarks.fsdp import main as fsdp

        fsdp(args.steps, overrides, args.out)
    elif args.benchmark == "budget":
        from pathlib import Path

        from benchmarks.budget import main as budget

        budget(args.arms.split(","), [int(s) for s in args.seeds.split(",")], args.budget, Path(args.out), args.jobs,
               args.hand_epochs, args.report_only, overrides)
    elif args.benchmark == "convergence":
        from pathlib import Path

        from benchmarks.convergence import main as convergence

        convergence(args.corpora.split(","), args.variants.split(","), [int(s) for s in args.seeds.split(",")],
                    Path(args.out), args.jobs, args.threads, args.report_only, overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
