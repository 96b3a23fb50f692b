"""Speech recognition with CTC, the whole story in one file.

features (conf/features, with conf/augment in training) -> acoustic model (conf/model,
DeepSpeech2 by default, or a Conformer) -> log-probabilities over characters -> CTC loss in
training (with ``model.intermediate_layer`` set, mixed with the CTC loss of a lower layer's
head by ``intermediate_ctc_weight``); character / word error rates in validation (greedy
decoding) and test (conf/decoder: greedy, or beam search with a lexicon and a word n-gram LM;
every test utterance's transcript and errors go to ``test_transcripts.tsv`` in the run dir).

Run: python -m framework.train recipe=asr_ctc [overrides]
"""

from __future__ import annotations

import logging
import os
from collections import Counter

import torch
from hydra.utils import instantiate
from torch import nn

from framework.brain import Brain, Stage
from framework.errors import UserError
from framework.files import write_text_atomic
from framework.text import CharTokenizer, ErrorRate
from framework.text.decoders import GreedyDecoder, training_words
from framework.trainer import distributed
from framework.trainer.distributed import all_reduce_sum, gather_objects

log = logging.getLogger(__name__)


class ASRBrain(Brain):
    model_arguments = ("num_bins", "num_classes")

    def build_model(self, train_set) -> nn.Module:
        # The alphabet and the words of the training transcripts (in fit only) are kept in the
        # run dir, so evaluation and transcription decode with the same symbols and lexicon.
        path, words = self.run_dir / "tokenizer.json", self.run_dir / "lexicon.txt"
        if train_set is not None:
            if not any(train_set.texts):
                raise UserError("the training set has no transcripts: speech recognition needs a text field in "
                                "its manifest (words, text, ...; or name it with text_key=)")
            if self.dist.is_main and not path.is_file():
                CharTokenizer.from_texts(train_set.texts).save(path)
                write_text_atomic(words, "".join(f"{w}\n" for w in training_words(train_set.texts)))
            distributed.barrier()  # every rank, whether or not rank 0 had to write it
        if not path.is_file():
            raise UserError(f"{path} not found: the run's alphabet is saved there by framework.train; evaluation "
                            "and transcription need the run directory of a training run")
        self.tokenizer = CharTokenizer.load(path)
        self.greedy = GreedyDecoder(self.tokenizer)  # validation decodes greedily: fast, and picks the checkpoint
        self.decoder = self.greedy  # test and transcription: the config's decoder group, if it has one
        if self.cfg.get("decoder"):
            lexicon = {"lexicon": str(words)} if self.cfg.decoder.get("lexicon") == "train" else {}
            self.decoder = instantiate(self.cfg.decoder, tokenizer=self.tokenizer, **lexicon)
        self.warned_unknown = False
        self.ctc_loss = nn.CTCLoss(blank=0, zero_infinity=True)
        model = instantiate(self.cfg.model, num_bins=self.features.num_bins, num_classes=len(self.tokenizer))
        self.intermediate_weight = float(self.cfg.get("intermediate_ctc_weight", 0.3))
        if getattr(model, "intermediate_layer", None) and not 0.0 < self.intermediate_weight < 1.0:
            raise UserError(f"intermediate_ctc_weight={self.intermediate_weight}: must be in (0, 1) when "
                            f"model.intermediate_layer is set (the loss is (1 - w) x CTC + w x intermediate CTC)")
        return model

    def compute_forward(self, batch, stage: Stage):
        feats, feat_lens = self.features(batch.inputs, batch.inputs_lens, augment=stage == Stage.TRAIN)
        logits, out_lens, *intermediate = self.model(feats, feat_lens)  # intermediate logits in training only
        return logits.float().log_softmax(-1), out_lens, [i.float().log_softmax(-1) for i in intermediate]

    def compute_objectives(self, outputs, batch, stage: Stage) -> torch.Tensor:
        log_probs, out_lens, intermediate = outputs
        if stage != Stage.TRAIN:  # evaluation transcripts may hold characters training never saw
            self.unknown.update(c for t in batch.text for c in t.lower() if c not in self.tokenizer.index)
        targets, target_lens = self.tokenizer.encode_batch(batch.text, drop_unknown=stage != Stage.TRAIN)
        targets, target_lens = targets.to(self.device), target_lens.to(self.device)
        loss = self.ctc_loss(log_probs.transpose(0, 1), targets, out_lens, target_lens)
        if intermediate:  # the model has an intermediate layer, and this is training
            lower = self.ctc_loss(intermediate[0].transpose(0, 1), targets, out_lens, target_lens)
            loss = (1 - self.intermediate_weight) * loss + self.intermediate_weight * lower
        if stage != Stage.TRAIN:
            hyps = (self.decoder if stage == Stage.TEST else self.greedy).decode(log_probs, out_lens)
            refs = [t.lower() for t in batch.text]
            char_edits = self.cer.update(refs, hyps)
            self.wer.update(refs, hyps)
            self.examples.extend(zip(batch.id, refs, hyps, char_edits))
        return loss

    def on_stage_start(self, stage: Stage, epoch: int) -> None:
        self.cer, self.wer = ErrorRate("char"), ErrorRate("word")
        self.examples: list[tuple[str, str, str, int]] = []  # id, reference, hypothesis, character edits
        self.unknown: Counter[str] = Counter()

    def on_stage_end(self, stage: Stage, loss: float, epoch: int) -> dict[str, float]:
        if stage == Stage.TRAIN:
            return {"loss": loss}
        if self.unknown and not self.warned_unknown:
            self.warned_unknown = True
            chars = ", ".join(f"{c!r} x{n}" for c, n in self.unknown.most_common())
            log.warning("%s transcripts hold characters outside the training alphabet, left out of the CTC targets "
                        "(they still count as errors in CER/WER): %s", stage.value, chars)
        counts = torch.tensor([self.cer.edits, self.cer.total, self.wer.edits, self.wer.total], dtype=torch.float64)
        c_edits, c_total, w_edits, w_total = all_reduce_sum(counts.to(self.device)).tolist()
        shown = "\n".join(f"{uid}: ref={ref!r} hyp={hyp!r}" for uid, ref, hyp, _ in self.examples[: self.cfg.decode_examples])
        if shown and not self.sanity_checking:
            log.info("%s examples:\n%s", stage.value, shown)
            self.logger.text(f"{stage.value}/examples", shown.replace("\n", "  \n"), self.step)
        if stage == Stage.TEST:
            self.write_test_transcripts()
        return {"loss": loss, "cer": c_edits / max(c_total, 1), "wer": w_edits / max(w_total, 1)}

    def write_test_transcripts(self) -> None:
        """One line per test utterance (every rank's), sorted by id: where the errors are, and
        what to compare between runs. Each test (the end of training, every evaluate) rewrites it."""
        rows = sorted(row for rank_rows in gather_objects(self.examples) for row in rank_rows)
        if not self.dist.is_main:
            return
        path = self.run_dir / "test_transcripts.tsv"
        if not os.access(self.run_dir, os.W_OK):  # an archived, read-only run being evaluated
            log.warning("%s is not writable: %s is not written", self.run_dir, path.name)
            return
        lines = [f"{uid}\t{edits}\t{len(ref)}\t{ref}\t{hyp}\n" for uid, ref, hyp, edits in rows]
        write_text_atomic(path, "id\tchar_errors\tchars\treference\thypothesis\n" + "".join(lines))
        log.info("test transcripts, one line per utterance: %s (%d wrong of %d)", path,
                 sum(edits > 0 for *_, edits in rows), len(rows))
