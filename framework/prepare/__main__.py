"""``python -m framework.prepare <command>``: get a corpus ready for training.

  manifest  a manifest from a corpus folder (LibriSpeech layout, or audio files + a table)
  hdf5      pack a manifest's audio or features into one HDF5 file (N worker processes)
  shards    write a manifest's audio or features as WebDataset tar shards with an index, for
            streaming from a network filesystem or object storage (N worker processes)
  stats     length histogram and summary of a manifest; with --batching, the batches a
            batching config makes of it (count, padding %, batch sizes), without training
  lm        a word n-gram language model (ARPA file) of a manifest's transcripts, for beam search
  tokenizer subword units (a sentencepiece BPE or unigram model) of a manifest's transcripts
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any

from framework.cli import exit_on_error, parse_with_overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m framework.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    command = functools.partial(sub.add_parser, formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    st = command("stats", help="length statistics, histogram and batching summary of a manifest")
    st.add_argument("manifest")
    st.add_argument("--png", help="write the length histogram here")
    st.add_argument("--batching", help="a batching option (conf/batching): dynamic, fixed or sorted")
    st.add_argument("--epochs", type=int, default=1, help="epochs of batches to summarise")
    st.epilog = "Batching overrides follow as key=value, e.g. max_batch_length=200 num_buckets=30."

    ma = command("manifest", help="build a manifest from a corpus folder")
    ma.add_argument("root", help="corpus folder")
    ma.add_argument("out", help="manifest to write: .json (SpeechBrain), .jsonl or .csv")
    ma.add_argument("--layout", choices=["librispeech", "generic"], default="librispeech")
    ma.add_argument("--table", help="generic layout: CSV/TSV with an ID (or file) column; its other columns "
                    "(text, label, ...) become the entries' fields")
    ma.add_argument("--workers", type=int, default=2)
    ma.add_argument("--skip-bad", action="store_true", help="skip unreadable audio, report it at the end")
    ma.add_argument("--absolute", action="store_true", help="absolute paths instead of {data_root}/...")

    h5 = command("hdf5", help="pack a manifest into HDF5 (raw audio or features)")
    h5.add_argument("manifest")
    h5.add_argument("out", help="the .h5 file to write")
    h5.add_argument("--data-root", help="value of {data_root} in the manifest's paths")
    h5.add_argument("--features", default="none", help="a features option (conf/features): none (raw audio), fbank, ...")
    h5.add_argument("--sample-rate", type=int, default=16000)
    h5.add_argument("--workers", type=int, default=2)
    h5.add_argument("--combine", choices=["copy", "virtual"], default="copy")
    h5.add_argument("--skip-bad", action="store_true", help="skip unreadable audio, report it at the end")
    h5.epilog = "Feature overrides follow as key=value, e.g. extractor.n_mels=80."

    sh = command("shards", help="write a manifest as WebDataset tar shards + index.json, for streaming")
    sh.add_argument("manifest")
    sh.add_argument("out", help="the folder to write: shard-000000.tar, ... and index.json")
    sh.add_argument("--shard-size", type=int, required=True, help="utterances per shard")
    sh.add_argument("--data-root", help="value of {data_root} in the manifest's paths")
    sh.add_argument("--features", default="none", help="a features option (conf/features): none (audio, as --audio-format says), fbank, ...")
    sh.add_argument("--sample-rate", type=int, default=16000)
    sh.add_argument("--audio-format", choices=["flac", "wav"], default="flac",
                    help="how audio is stored: flac (smaller) or wav (the same samples, faster to decode)")
    sh.add_argument("--workers", type=int, default=2, help="processes, each writing whole shards")
    sh.add_argument("--skip-bad", action="store_true", help="skip unreadable audio, report it at the end")
    sh.epilog = ("Feature overrides follow as key=value, e.g. extractor.n_mels=80. Killed or stopped, the same command "
                 "again keeps the complete shards and writes the rest.")

    lm = command("lm", help="a word n-gram language model (ARPA) of transcripts, for beam search decoding")
    lm.add_argument("transcripts", help="a manifest (.json, .jsonl, .csv) or a text file of one sentence per line")
    lm.add_argument("out", help="the ARPA file to write")
    lm.add_argument("--order", type=int, default=3, help="n of the n-grams")

    tk = command("tokenizer", help="subword units (sentencepiece .model) of transcripts, for tokenizer.path")
    tk.add_argument("transcripts", help="a manifest (.json, .jsonl, .csv) or a text file of one sentence per line")
    tk.add_argument("out", help="the .model file to write")
    tk.add_argument("--type", choices=["bpe", "unigram"], default="bpe")
    tk.add_argument("--vocab-size", type=int, default=256, help="pieces, <unk> included (the model adds the blank)")

    args, overrides = parse_with_overrides(parser, argv)
    exit_on_error(lambda: run(args, overrides))  # a stop signal: workers and temporary files cleaned up, 143 / 130
    return 0


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    if args.command == "manifest":
        from framework.prepare.corpus import build_manifest

        build_manifest(args.root, args.out, args.layout, args.table, args.workers, args.skip_bad, args.absolute)
    elif args.command == "hdf5":
        from framework.prepare.corpus import pack_hdf5

        extractor, features_config = feature_extractor(args, overrides)
        pack_hdf5(args.manifest, args.out, data_root=args.data_root, sample_rate=args.sample_rate, extractor=extractor,
                  features_config=features_config, workers=args.workers, combine=args.combine, skip_bad=args.skip_bad)
    elif args.command == "shards":
        from framework.prepare.shards import write_shards

        extractor, features_config = feature_extractor(args, overrides)
        write_shards(args.manifest, args.out, shard_size=args.shard_size, data_root=args.data_root,
                     sample_rate=args.sample_rate, extractor=extractor, features_config=features_config,
                     workers=args.workers, skip_bad=args.skip_bad, audio_format=args.audio_format)
    elif args.command == "stats":
        from framework.prepare.stats import run_stats

        run_stats(args.manifest, args.png, args.batching, overrides, args.epochs)
    elif args.command == "lm":
        from framework.prepare.lm import build_lm

        build_lm(args.transcripts, args.out, args.order)
    elif args.command == "tokenizer":
        from framework.prepare.tokenizer import build_tokenizer

        build_tokenizer(args.transcripts, args.out, args.type, args.vocab_size)


def feature_extractor(args: argparse.Namespace, overrides: list[str]) -> tuple[Any, dict | None]:
    """The extractor ``--features`` names (with ``key=value`` overrides) and its config, or
    (None, None) for ``--features none``."""
    if args.features == "none":
        return None, None
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from framework.config import check_command_line

    job = [f"features={args.features}", f"sample_rate={args.sample_rate}",
           *[f"features.{o.lstrip('+')}" for o in overrides]]
    cfg = check_command_line(job)
    return instantiate(cfg.features.extractor), OmegaConf.to_container(cfg.features.extractor, resolve=True)


if __name__ == "__main__":
    sys.exit(main())
