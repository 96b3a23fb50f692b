"""FSDP against DDP on 2 ranks: per-rank memory of parameters, gradients and optimizer state,
and the loss of every step.

``python -m benchmarks fsdp [--steps N] [overrides]`` starts ``torchrun --nproc_per_node=2``
once per strategy (gloo on the CPU unless the overrides say ``trainer.device=cuda``). Each
rank builds the run's Brain from the same config and seed, trains ``N`` optimizer steps on
the training loader through the Brain's own step, and records the step's loss averaged over
the ranks, and what it holds: the bytes of its parameters, gradients and optimizer state
(the local shards under FSDP).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import ROOT, child_env, compose

STRATEGIES = ("ddp", "fsdp")


def worker(out: Path, steps: int, overrides: Sequence[str]) -> None:
    """One rank under torchrun: ``steps`` optimizer steps, then ``out``/rank<r>.json."""
    import torch

    from framework.brain import Stage
    from framework.experiment import build_datasets, seed_everything
    from framework.run_dir import open_brain
    from framework.trainer import distributed
    from framework.tune_batch import state_bytes

    cfg = compose([*overrides, "logger.tensorboard=false"])
    seed_everything(cfg.seed)
    brain = open_brain(cfg, "fsdp_bench", out / "run")
    train = build_datasets(cfg, brain.dist.is_main)["train"]
    brain.setup(train)
    loader = brain.make_dataloader(train, Stage.TRAIN)
    brain.plan_schedule(len(loader.batch_sampler))
    brain.set_mode(training=True)
    losses: list[float] = []
    while len(losses) < steps:
        for batch in loader:
            loss, _ = brain.train_step([batch], [1.0])
            losses.append(float(distributed.all_reduce_sum(loss.detach().reshape(1))) / brain.dist.world_size)
            if len(losses) == steps:
                break
    memory = state_bytes(brain.module, brain.optimizer)
    params = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in brain.module.parameters())
    record = {"losses": losses, "state_bytes": memory, "local_parameters": params,
              "peak_cuda_bytes": torch.cuda.max_memory_allocated() if brain.device.type == "cuda" else None}
    (out / f"rank{brain.dist.rank}.json").write_text(json.dumps(record))
    brain.logger.close()
    torch.distributed.destroy_process_group()


def run(strategy: str, steps: int, overrides: Sequence[str], out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "benchmarks.fsdp", "--worker", "--out", str(out), "--steps", str(steps), *overrides,
           f"trainer.strategy={strategy}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(threads=1), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{strategy} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def compare(steps: int, overrides: Sequence[str], out: Path) -> dict:
    """Both strategies' records and their comparison."""
    ranks = {s: run(s, steps, overrides, out / s) for s in STRATEGIES}
    ddp, fsdp = (ranks[s][0]["losses"] for s in STRATEGIES)
    return {"ranks": ranks, "max_loss_difference": max(abs(a - b) for a, b in zip(ddp, fsdp)),
            "memory_ratio": [f["state_bytes"] / d["state_bytes"] for d, f in zip(ranks["ddp"], ranks["fsdp"])]}


def main(steps: int, overrides: Sequence[str], out: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = compare(steps, overrides, Path(out or tmp))
    print(f"\n2 ranks, {steps} optimizer steps; overrides: {' '.join(overrides) or '(none)'}\n")
    print("| strategy | rank | parameters held | parameters + gradients + optimizer state MB | vs DDP |")
    print("| --- | --- | --- | --- | --- |")
    for strategy in STRATEGIES:
        for rank, (r, d) in enumerate(zip(result["ranks"][strategy], result["ranks"]["ddp"])):
            print(f"| {strategy} | {rank} | {r['local_parameters']:,} | {r['state_bytes'] / 2**20:.2f} "
                  f"| {r['state_bytes'] / d['state_bytes']:.2f}x |")
    ddp, fsdp = (result["ranks"][s][0]["losses"] for s in STRATEGIES)
    print(f"\nloss per step (mean over ranks), ddp: {' '.join(f'{x:.4f}' for x in ddp)}")
    print(f"loss per step (mean over ranks), fsdp: {' '.join(f'{x:.4f}' for x in fsdp)}")
    print(f"largest difference over {steps} steps: {result['max_loss_difference']:.2e}")
    return result


if __name__ == "__main__":  # a rank under torchrun (python -m benchmarks fsdp starts them)
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, required=True)
    args, rest = parser.parse_known_args()
    worker(Path(args.out), args.steps, rest)
