"""``python -m framework.transcribe RUN_DIR FILE [FILE ...] [overrides]``: prints
``file<TAB>transcript`` for each audio file, decoded with the run's best checkpoint and its
decoder (or another: ``decoder=beam decoder.lm=lm.arpa``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from framework.cli import exit_on_error
from framework.errors import UserError
from framework.run_dir import load_run_config, open_brain


def transcribe(run_dir: str, files: list[str], checkpoint: str = "best", overrides: list[str] | None = None) -> list[str]:
    cfg = load_run_config(run_dir, overrides)
    brain = open_brain(cfg, log_name="transcribe")
    if not hasattr(brain, "transcribe"):
        raise UserError(f"{cfg.brain._target_} has no transcribe(); this run is not a speech recognition recipe")
    texts = brain.transcribe(files, checkpoint=checkpoint)
    brain.logger.close()
    for path, text in zip(files, texts):
        print(f"{path}\t{text}")
    return texts


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(prog="python -m framework.transcribe", description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("files", nargs="+", help="audio files, then any config overrides (decoder=beam decoder.lm=...)")
    parser.add_argument("--checkpoint", default="best", help="best, latest, averaged (framework.average) or a checkpoint path")
    args = parser.parse_intermixed_args(argv)  # overrides may follow --checkpoint
    files = [f for f in args.files if "=" not in f or Path(f).exists()]
    overrides = [f for f in args.files if f not in files]
    return exit_on_error(lambda: transcribe(args.run_dir, files, args.checkpoint, overrides))


if __name__ == "__main__":
    main()
