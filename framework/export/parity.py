"""The export's parity check: the written artifact and the PyTorch model on the run's test set.

Both see the same padded batches (the first example alone, then batches of eight). Speech:
the largest difference of log-probabilities over valid frames, and CER / WER of greedy
decoding of each against the references, and how many transcripts differ. Classification:
the largest difference of logits and the accuracy of each. An fp32 artifact must agree
within ``TOLERANCE`` and give the same transcripts (or accuracy); an int8 one reports how
much it moved them.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from framework.data.collate import SkippedExample, collate, length_mask
from framework.export.inference import Artifact
from framework.export.runners import artifact_runner, brain_runner
from framework.text.decoders import GreedyDecoder
from framework.text.metrics import ErrorRate
from framework.text.transducer_decoders import TransducerGreedyDecoder

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


class Transcripts:
    """CER / WER of each side's greedy transcripts, and how many of them differ."""

    def __init__(self) -> None:
        self.rates = {side: (ErrorRate("char"), ErrorRate("word")) for side in ("pytorch", "exported")}
        self.differing = 0

    def update(self, texts: list[str], pytorch: list[str], exported: list[str]) -> None:
        for side, hyps in (("pytorch", pytorch), ("exported", exported)):
            for rate in self.rates[side]:
                rate.update(texts, hyps)
        self.differing += sum(a != b for a, b in zip(pytorch, exported))

    def record(self) -> dict[str, float]:
        out: dict[str, float] = {"differing_transcripts": self.differing}
        for side, (cer, wer) in self.rates.items():
            out[f"{side}_cer"], out[f"{side}_wer"] = cer.value, wer.value
        return out


def check(brain, test_set, artifact: Artifact) -> dict[str, float]:
    """The parity record: examples, the largest output difference, the metrics of both."""
    if artifact.transducer:
        return check_transducer(brain, test_set, artifact)
    ctc = artifact.meta["task"] == "ctc"
    run_artifact = artifact_runner(artifact)
    greedy = GreedyDecoder(brain.tokenizer) if ctc else None
    transcripts = Transcripts()
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
                transcripts.update([t.lower() for t in batch.text], greedy.decode(ref, ref_lens),
                                   greedy.decode(got, got_lens))
            else:
                ref, got = reference.float().cpu(), exported[0].float()
                worst = max(worst, float((ref - got).abs().max()))
                labels = batch.label.cpu()
                correct["pytorch"] += int((ref.argmax(-1) == labels).sum())
                correct["exported"] += int((got.argmax(-1) == labels).sum())
    record: dict[str, float] = {"examples": examples, "max_abs_diff": worst}
    if ctc:
        return record | transcripts.record()
    for side in ("pytorch", "exported"):
        record[f"{side}_accuracy"] = correct[side] / max(examples, 1)
    return record


def check_transducer(brain, test_set, artifact: Artifact) -> dict[str, float]:
    """A transducer's three graphs against the model's: the encoder's frames; the prediction
    network stepped through each reference transcript and the joiner over every (frame,
    label position) pair, as the transducer loss sees them; and greedy decoding, the
    artifact's loop against the recipe's decoder."""
    model = brain.module
    greedy = TransducerGreedyDecoder(brain.tokenizer, artifact.transducer["max_symbols_per_frame"])
    transcripts = Transcripts()
    worst, examples = 0.0, 0

    def encode(batch):
        return model.transcribe(*brain.features(batch.inputs, batch.inputs_lens, augment=False))

    def differ(ref: torch.Tensor, got, mask: torch.Tensor) -> float:
        gap = (ref.float().cpu() - torch.as_tensor(got).float()).abs()
        return float(gap[mask].max()) if mask.any() else 0.0

    with brain_runner(brain, encode) as run_pytorch:  # evaluation weights, no gradients, for the whole check
        for batch in test_batches(test_set):
            ref, ref_lens = run_pytorch(batch.inputs, batch.inputs_lens)
            got, got_lens = artifact.run(batch.inputs.cpu().numpy(), batch.inputs_lens.cpu().numpy())
            got_lens = torch.as_tensor(got_lens)
            if not torch.equal(ref_lens.cpu(), got_lens.to(ref_lens.dtype)):
                raise ParityError(f"the exported encoder gives {got_lens.tolist()} frames where PyTorch gives "
                                  f"{ref_lens.cpu().tolist()}")
            examples += len(batch)
            got = got[:, : ref.shape[1]]  # a batch padded to the graph's shortest has more frames past the valid ones
            worst = max(worst, differ(ref, got, length_mask(got_lens, got.shape[1])))
            # the prediction network through the references (the blank first), the joiner over every pair
            texts = [t.lower() for t in batch.text]
            targets, target_lens = brain.tokenizer.encode_batch(texts, drop_unknown=True)
            rows = nn.utils.rnn.pad_sequence(list(targets.split(target_lens.tolist())), batch_first=True)
            labels = F.pad(rows, (1, 0)).to(brain.device)
            ref_pred = model.predict(labels, target_lens.to(brain.device) + 1, None)[0].float()
            state, predictions = artifact.initial_state(len(batch)), []
            for column in labels.cpu().numpy().T:
                prediction, state = artifact.predict(column, state)
                predictions.append(prediction)
            got_pred = np.stack(predictions, 1)  # [B, U + 1, J]
            worst = max(worst, differ(ref_pred, got_pred, length_mask(target_lens + 1, labels.shape[1])))
            for i, (n, u) in enumerate(zip(got_lens.tolist(), (target_lens + 1).tolist())):  # [n, u] pairs
                ref_joint = model.joiner(ref[i:i + 1, :n].float(), ref_pred[i:i + 1, :u])[0]
                pairs = (n, u, got.shape[2])
                joint = artifact.join(np.broadcast_to(got[i, :n, None], pairs).reshape(n * u, -1),
                                      np.broadcast_to(got_pred[i, None, :u], pairs).reshape(n * u, -1))
                worst = max(worst, differ(ref_joint, joint.reshape(n, u, -1), torch.ones(n, u, dtype=torch.bool)))
            transcripts.update(texts, greedy.decode(model, ref, ref_lens),
                               [brain.tokenizer.decode(ids) for ids in artifact.search(got, got_lens.numpy())])
    return {"examples": examples, "max_abs_diff": worst} | transcripts.record()


def agrees(record: dict[str, float]) -> bool:
    """Within ``TOLERANCE``, the same metrics and the same transcripts (what an fp32 artifact must give)."""
    same = all(record[f"pytorch_{m}"] == record[f"exported_{m}"] for m in ("cer", "wer", "accuracy")
               if f"pytorch_{m}" in record) and not record.get("differing_transcripts")
    return math.isfinite(record["max_abs_diff"]) and record["max_abs_diff"] <= TOLERANCE and same


def describe(record: dict[str, float]) -> str:
    metrics = [m for m in ("cer", "wer", "accuracy") if f"pytorch_{m}" in record]
    shown = ", ".join(f"{m.upper()} {record[f'exported_{m}']:.4f} (PyTorch {record[f'pytorch_{m}']:.4f})"
                      for m in metrics)
    differing = record.get("differing_transcripts")
    shown += f"; {differing} transcripts differ" if differing else ""
    return f"max |difference| {record['max_abs_diff']:.3g} over {record['examples']} test examples; {shown}"
