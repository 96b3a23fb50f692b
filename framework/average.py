"""``python -m framework.average RUN_DIR (--last N | --best N)``: one checkpoint from several.

Averages the model weights of the run's last N checkpoints (by step) or its N best (by
``trainer.checkpoint.monitor``), as ESPnet and icefall do before decoding, and writes
``checkpoints/averaged.pt`` (with its SHA-256) for ``framework.evaluate RUN_DIR
--checkpoint averaged`` and ``framework.transcribe``. Floating-point tensors are averaged,
batch-norm running statistics included; integer tensors (``num_batches_tracked``) and
everything else (the weight average of ``trainer.ema_decay``, if kept, averaged the same
way) come from the newest of the checkpoints. Keep enough checkpoints to average:
``trainer.checkpoint.keep_last=5`` (or ``keep_best=5``).

It starts by removing the temporary files a killed average left in ``checkpoints/`` (and a
killed training's, unless a training run holds the run directory); SIGTERM or Ctrl-C while
it writes leaves no temporary file either.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

from framework.cli import exit_on_error
from framework.errors import UserError
from framework.files import remove_leftovers
from framework.run_dir import load_run_config
from framework.trainer.checkpoint import (
    AVERAGED,
    load_checkpoint,
    materialize,
    run_checkpointer,
    save_verified,
    written_by_average,
    written_by_training,
)
from framework.trainer.run_lock import RunLock
from framework.trainer.state import upgrade

log = logging.getLogger(__name__)


def average_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """The newest state (the last one) with its model weights, and weight average, replaced
    by the mean over ``states`` (checkpoint states of any format version)."""
    states = [upgrade(s, Path("<checkpoint>")) for s in states]
    newest = dict(states[-1])
    newest["model"] = mean_tensors([s["model"] for s in states])
    if all(s.get("ema") for s in states):
        ema = dict(newest["ema"])
        ema["averaged"] = mean_tensors([s["ema"]["averaged"] for s in states])
        newest["ema"] = ema
    newest["averaged_from"] = [int(s["progress"]["step"]) for s in states]
    return newest


def mean_tensors(dicts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in dicts[-1].items():
        if value.is_floating_point():
            out[key] = (torch.stack([d[key].double() for d in dicts]).mean(0)).to(value.dtype)
        else:
            out[key] = value.clone()
    return out


def average(run_dir: str | Path, last: int | None = None, best: int | None = None) -> Path:
    if (last is None) == (best is None):
        raise UserError("give one of --last N or --best N")
    n = last if last is not None else best
    if n < 1:
        raise UserError(f"--{'last' if last is not None else 'best'} must be >= 1, got {n}")
    checkpointer = run_checkpointer(run_dir, load_run_config(run_dir))
    remove_leftovers(checkpointer.directory, written_by_average)
    if RunLock(run_dir).held_by() is None:  # else a training run's writes are in flight
        remove_leftovers(checkpointer.directory, written_by_training)
    entries = checkpointer.index()
    if best is not None:
        chosen = checkpointer.ranked(entries)[:best]
        what = f"the {best} best by valid {checkpointer.monitor}"
    else:
        chosen = entries[-last:]
        what = f"the last {last}"
    if len(chosen) < n:
        raise UserError(f"{checkpointer.directory} holds {len(chosen)} checkpoint(s) for {what}; keep more while "
                        f"training (trainer.checkpoint.keep_last / keep_best) or average fewer")
    chosen = sorted(chosen, key=lambda e: e["step"])  # the newest last: its other state is kept
    states = [materialize(load_checkpoint(checkpointer.directory / e["file"])) for e in chosen]
    averaged = average_states(states)
    path = checkpointer.directory / AVERAGED
    save_verified(averaged, path)
    print(f"{path}: the average of {what}: steps {', '.join(str(e['step']) for e in chosen)}")
    return path


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m framework.average", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--last", type=int, help="average the newest N checkpoints")
    group.add_argument("--best", type=int, help="average the N best by the monitored validation metric")
    args = parser.parse_args(argv)
    return exit_on_error(lambda: average(args.run_dir, args.last, args.best))


if __name__ == "__main__":
    main()
