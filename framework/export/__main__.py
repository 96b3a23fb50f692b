"""``python -m framework.export RUN_DIR --format onnx|torch_export|torchscript [--quantize int8]
[--checkpoint best|latest|averaged|PATH] [--out DIR] [overrides]``

Writes one self-contained folder (default ``RUN_DIR/export/<format>[-int8]``): the network with
its feature extraction inside the graph (``model.onnx``, ``model.pt2`` or ``model.ts``; a
transducer's encoder, with its ``predictor`` and ``joiner`` graphs beside it), what each label
spells (``tokenizer.json``; a subword run's ``tokenizer.model`` too), ``feature_stats.pt``
where the run has them, ``inference.py`` (needs torch or onnxruntime, numpy and soundfile,
not the framework; it holds a transducer's decoding loop) and ``artifact.json``. The weights
are those evaluation uses (the weight average with ``trainer.ema_decay``).

Then the artifact, as written, runs on the run's test set beside the PyTorch model: an fp32
export must agree within 1e-4 and give the same CER / WER (accuracy for a classifier), or
the command fails with status 1 naming the difference (the folder is kept as
``DIR.failed`` to look at); an int8 export reports how far it moved them and its size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch

from framework.augment.quiet import quiet_lead_of
from framework.cli import exit_on_error
from framework.config import split_given
from framework.data.pauses import lead_for
from framework.errors import UserError
from framework.experiment import build_datasets
from framework.export import formats, inference, parity
from framework.export.graph import frame_geometry, inference_graphs
from framework.files import write_text_atomic
from framework.models.transducer import Transducer
from framework.run_dir import load_run_config, open_brain


def example_inputs(test_set) -> tuple[torch.Tensor, torch.Tensor]:
    """Two test examples, padded: the shapes and types the graph is captured with (a batch of
    two, so no size is taken for a constant 1)."""
    from framework.data.collate import SkippedExample, collate

    usable = [test_set[i] for i in range(min(len(test_set), 10))]
    usable = [e for e in usable if not isinstance(e, SkippedExample)][:2]
    if not usable:
        raise UserError("the test set's first examples are unreadable: the export needs two to capture the graph")
    batch = collate(usable * (3 - len(usable)) if len(usable) == 1 else usable)
    return batch.inputs, batch.inputs_lens


def prepare_folder(out: Path) -> Path:
    """A fresh staging folder beside ``out``; refuses an ``out`` that holds something else."""
    if out.exists() and not (out / "artifact.json").is_file() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not an exported model folder; choose another --out")
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def install(staging: Path, target: Path) -> None:
    """Puts the finished folder in place of ``target`` (an earlier export there is replaced)."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old)
    else:
        staging.rename(target)


def write_artifact(brain, run_dir: str, fmt: str, quantize: str | None, weights: Path,
                   example: tuple[torch.Tensor, torch.Tensor], folder: Path) -> dict:
    """The graphs, the files they need and ``artifact.json`` (without the parity record) in ``folder``."""
    speech = hasattr(brain, "tokenizer")
    transducer = isinstance(brain.module, Transducer)
    suffix = Path(formats.FORMATS[fmt]).suffix
    meta: dict = {"format": fmt, "model": formats.FORMATS[fmt], "quantized": quantize,
                  "task": "transducer" if transducer else "ctc" if speech else "classification",
                  "sample_rate": int(brain.cfg.sample_rate),
                  "features": brain.features.describe() if brain.features is not None else None,
                  "source": {"run": str(Path(run_dir).resolve()), "checkpoint": str(weights), "step": brain.step}}
    with brain.eval_weights():
        graphs = inference_graphs(brain, (example[0].cpu(), example[1].cpu()), onnx=fmt == "onnx")
        pad_to = {name: formats.save(graph, fmt, folder / (name + suffix), quantize) for name, graph in graphs.items()}
    meta["pad_to"] = pad_to["model"]  # the graph that takes the inputs
    meta["min_samples"] = 0
    if transducer:
        lstm = brain.module.predictor.lstm
        meta["transducer"] = {"predictor": "predictor" + suffix, "joiner": "joiner" + suffix,
                              "state": [lstm.num_layers, lstm.hidden_size],
                              "max_symbols_per_frame": brain.decoder.max_symbols}
    if speech:
        acoustic = brain.module.encoder if transducer else brain.module
        unit, meta["min_samples"], meta["first_frame_centre"] = frame_geometry(brain.features, acoustic)
        meta["samples_per_frame"], meta["pad_to"] = unit, max(meta["pad_to"], meta["min_samples"])
        meta["stretch_lead_s"] = lead_for(quiet_lead_of(brain.features))  # before a stretch cut at pauses
        # what each label id spells, for inference.py; the run's own tokenizer file for the framework
        meta["tokenizer"] = "tokenizer.json"
        write_text_atomic(folder / "tokenizer.json", json.dumps({"symbols": brain.tokenizer.surface[1:]},
                                                                ensure_ascii=False))
        units = Path(run_dir) / "tokenizer.model"
        if units.is_file():
            meta["subword_model"] = units.name
            shutil.copy(units, folder / units.name)
    stats = Path(run_dir) / "feature_stats.pt"
    if brain.features is not None and brain.features.normalize == "global" and stats.is_file():
        shutil.copy(stats, folder / "feature_stats.pt")  # also inside the graph, as buffers
        meta["feature_stats"] = "feature_stats.pt"
    shutil.copy(inference.__file__, folder / "inference.py")
    write_text_atomic(folder / "artifact.json", json.dumps(meta, indent=1))
    return meta


def graph_files(meta: dict) -> list[str]:
    """The artifact's graph files."""
    return [meta["model"], *([meta["transducer"]["predictor"], meta["transducer"]["joiner"]]
                             if "transducer" in meta else [])]


def export(run_dir: str, fmt: str, quantize: str | None = None, checkpoint: str = "best", out: str | None = None,
           overrides: list[str] | None = None) -> dict:
    formats.check_format(fmt, quantize)
    # checkpointed blocks are a training-time wrapper around forward, which TorchScript cannot compile
    cfg = load_run_config(run_dir, [*(overrides or []), "trainer.activation_checkpointing=[]"])
    if not split_given(cfg, "test"):
        raise UserError(f"{run_dir}: the run's config has no test set, which the parity check runs on; name one with "
                        "dataset.test.path=...")
    target = Path(out) if out else Path(run_dir) / "export" / (fmt + ("-int8" if quantize else ""))
    brain = open_brain(cfg, log_name="export")
    brain.setup(None, trains=False)
    weights = brain.load_weights(checkpoint)
    test_set = build_datasets(cfg, brain.dist.is_main)["test"]
    example = example_inputs(test_set)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = prepare_folder(target)
    try:
        meta = write_artifact(brain, run_dir, fmt, quantize, weights, example, staging)
        record = parity.check(brain, test_set, inference.Artifact(staging))
        record["bytes"] = sum((staging / name).stat().st_size for name in graph_files(meta))
        meta["parity"] = record
        write_text_atomic(staging / "artifact.json", json.dumps(meta, indent=1))
        if not quantize and not parity.agrees(record):
            failed = target.with_name(target.name + ".failed")
            shutil.rmtree(failed, ignore_errors=True)
            staging.rename(failed)
            raise parity.ParityError(f"the exported model disagrees with PyTorch beyond {parity.TOLERANCE:g}: "
                                     f"{parity.describe(record)}; the artifact is kept in {failed}")
        install(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # what is left of it after a failure
        brain.logger.close()
    size = f"{record['bytes'] / 1e6:.2f} MB"
    print(f"exported {target} ({', '.join(graph_files(meta))}, {size}{', int8' if quantize else ''}): {parity.describe(record)}")
    return meta


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m framework.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. dataset.test.path=other.json")
    parser.add_argument("--format", required=True, choices=sorted(formats.FORMATS))
    parser.add_argument("--quantize", choices=["int8"], help="int8 weights (dynamic quantization)")
    parser.add_argument("--checkpoint", default="best", help="best, latest, averaged (framework.average) or a checkpoint path")
    parser.add_argument("--out", help="the folder to write (default RUN_DIR/export/<format>[-int8])")
    args = parser.parse_intermixed_args(argv)
    return exit_on_error(lambda: export(args.run_dir, args.format, args.quantize, args.checkpoint, args.out,
                                        args.overrides))


if __name__ == "__main__":
    main()
