"""``python -m framework.transcribe RUN_DIR FILE [FILE ...]``: prints ``file<TAB>transcript``
for each audio file, decoded with the run's best checkpoint."""

from __future__ import annotations

import argparse

from framework.run_dir import load_run_config, open_brain


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(prog="python -m framework.transcribe", description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("files", nargs="+")
    parser.add_argument("--checkpoint", default="best", help="best, latest or a checkpoint path")
    args = parser.parse_args(argv)
    cfg = load_run_config(args.run_dir)
    brain = open_brain(cfg, log_name="transcribe")
    if not hasattr(brain, "transcribe"):
        raise SystemExit(f"{cfg.brain._target_} has no transcribe(); this run is not a speech recognition recipe")
    texts = brain.transcribe(args.files, checkpoint=args.checkpoint)
    for path, text in zip(args.files, texts):
        print(f"{path}\t{text}")
    return texts


if __name__ == "__main__":
    main()
