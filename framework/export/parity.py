"""The export's parity check: the written artifact and the PyTorch model on the run's test set.

Both see the same padded batches (the first example alone, then batches of eight). Speech:
the largest difference of log-probabilities over valid frames, and CER / WER of greedy
decoding of each against the references. Classification: the largest difference of logits
and the accuracy of each. An fp32 artifact must agree within ``TOLERANCE`` and give the same
error rates (or accuracy); an int8 one reports how much it moved them.
"""

from __future__ import annotations

import itertools
import math

import torch

from framework.data.collate import SkippedExample, collate
from framework.export.inference import Artifact
from framework.export.runners import artifact_runner, brain_runner
from framework.text.decoders import GreedyDecoder
from framework.text.metrics import ErrorRate

TOLERANCE = 1e-4


class ParityError(RuntimeError):
    """An fp32 artifact whose outputs differ from the PyTorch model's."""


def test_batches(test_set, batch_size: int = 8):
    """The first example alone (a batch of one), then the rest in order, padded as collate pads."""
    examples = (test_set[i] for i in range(len(test_set)))
    examples = (e for e in examples if not isinstance(e, SkippedExample))  # unreadable ones, with skip_bad
    first = next(examples, None)
    if first is None:
        return
    yield collate([first])
    while batch := list(itertools.islice(examples, batch_size)):
        yield collate(batch)


def check(brain, test_set, artifact: Artifact) -> dict[str, float]:
    """The parity record: examples, the largest output difference, the metrics of both."""
    ctc = artifact.meta["task"] == "ctc"
    run_artifact = artifact_runner(artifact)
    greedy = GreedyDecoder(brain.tokenizer) if ctc else None
    rates = {side: (ErrorRate("char"), ErrorRate("word")) for side in ("pytorch", "exported")}
    correct = {"pytorch": 0, "exported": 0}
    worst, examples = 0.0, 0
    with brain_runner(brain) as run_pytorch:
        for batch in test_batches(test_set):
            reference = run_pytorch(batch.inputs, batch.inputs_lens)
            exported = run_artifact(batch.inputs.cpu(), batch.inputs_lens.cpu())
            examples += len(batch)
            if ctc:
                (ref, ref_lens), (got, got_lens) = reference[:2], exported[:2]
                ref, ref_lens = ref.float().cpu(), ref_lens.cpu()
                if not torch.equal(ref_lens, got_lens.to(ref_lens.dtype)):
                    raise ParityError(f"the exported model gives {got_lens.tolist()} frames where PyTorch gives "
                                      f"{ref_lens.tolist()}")
                for i, n in enumerate(ref_lens.tolist()):
                    worst = max(worst, float((ref[i, :n] - got[i, :n]).abs().max()) if n else 0.0)
                texts = [t.lower() for t in batch.text]
                for side, (lp, lens) in (("pytorch", (ref, ref_lens)), ("exported", (got, got_lens))):
                    hyps = greedy.decode(lp, lens)
                    for rate in rates[side]:
                        rate.update(texts, hyps)
            else:
                ref, got = reference.float().cpu(), exported[0].float()
                worst = max(worst, float((ref - got).abs().max()))
                labels = batch.label.cpu()
                correct["pytorch"] += int((ref.argmax(-1) == labels).sum())
                correct["exported"] += int((got.argmax(-1) == labels).sum())
    record: dict[str, float] = {"examples": examples, "max_abs_diff": worst}
    for side in ("pytorch", "exported"):
        if ctc:
            record[f"{side}_cer"], record[f"{side}_wer"] = (r.value for r in rates[side])
        else:
            record[f"{side}_accuracy"] = correct[side] / max(examples, 1)
    return record


def agrees(record: dict[str, float]) -> bool:
    """Within ``TOLERANCE`` and the same metrics (what an fp32 artifact must give)."""
    same = all(record[f"pytorch_{m}"] == record[f"exported_{m}"] for m in ("cer", "wer", "accuracy")
               if f"pytorch_{m}" in record)
    return math.isfinite(record["max_abs_diff"]) and record["max_abs_diff"] <= TOLERANCE and same


def describe(record: dict[str, float]) -> str:
    metrics = [m for m in ("cer", "wer", "accuracy") if f"pytorch_{m}" in record]
    shown = ", ".join(f"{m.upper()} {record[f'exported_{m}']:.4f} (PyTorch {record[f'pytorch_{m}']:.4f})"
                      for m in metrics)
    return f"max |difference| {record['max_abs_diff']:.3g} over {record['examples']} test examples; {shown}"
