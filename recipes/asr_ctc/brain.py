"""Speech recognition with CTC, the whole story in one file.

features (conf/features, with conf/augment in training) -> acoustic model (conf/model,
DeepSpeech2 by default, or a Conformer) -> log-probabilities over the tokenizer's units
(conf/tokenizer: characters by default, or BPE / unigram subword pieces) -> CTC loss in
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
from hydra.utils import get_class, instantiate
from torch import nn

from framework.brain import Brain, Stage
from framework.errors import UserError
from framework.files import write_text_atomic
from framework.models.transducer import Transducer
from framework.text import ErrorRate
from framework.text.decoders import GreedyDecoder, training_words
from framework.text.tokenizer import Tokenizer
from framework.text.units import RUN_FILES, CharUnits
from framework.trainer import distributed
from framework.trainer.distributed import all_reduce_sum, gather_objects

log = logging.getLogger(__name__)


class ASRBrain(Brain):
    model_arguments = ("num_bins", "num_classes")
    ctc = True  # framework.transcribe merges chunks of long recordings at the CTC level, and aligns words
    greedy_decoder: type = GreedyDecoder  # validation decodes greedily: fast, and picks the checkpoint
    decoder_options = "decoder=greedy or decoder=beam"  # the decoders of conf/decoder that suit the model

    def build_model(self, train_set) -> nn.Module:
        self.setup_decoding(train_set)
        self.ctc_loss = nn.CTCLoss(blank=0, zero_infinity=True)
        model = instantiate(self.cfg.model, num_bins=self.features.num_bins, num_classes=len(self.tokenizer))
        if isinstance(model, Transducer):
            raise UserError(f"model {self.cfg.model._target_} is a transducer: train it with recipe=asr_transducer")
        self.intermediate_weight = float(self.cfg.get("intermediate_ctc_weight", 0.3))
        if getattr(model, "intermediate_layer", None) and not 0.0 < self.intermediate_weight < 1.0:
            raise UserError(f"intermediate_ctc_weight={self.intermediate_weight}: must be in (0, 1) when "
                            f"model.intermediate_layer is set (the loss is (1 - w) x CTC + w x intermediate CTC)")
        return model

    def setup_decoding(self, train_set) -> None:
        """The run's tokenizer and decoders: greedy in validation; in test and transcription the
        config's decoder group, if it has one, else greedy too."""
        self.tokenizer = self.run_tokenizer(train_set)
        self.greedy = self.decoder = self.greedy_decoder(self.tokenizer)
        self.warned_unknown = False
        if not self.cfg.get("decoder"):
            return
        kind = getattr(get_class(self.cfg.decoder._target_), "kind", None)
        if kind != self.greedy.kind:
            raise UserError(f"decoder {self.cfg.decoder._target_} decodes {kind} outputs; this recipe's model needs "
                            f"a {self.greedy.kind} decoder: {self.decoder_options}")
        lexicon = {"lexicon": str(self.run_dir / "lexicon.txt")} if self.cfg.decoder.get("lexicon") == "train" else {}
        self.decoder = instantiate(self.cfg.decoder, tokenizer=self.tokenizer, **lexicon)

    def run_tokenizer(self, train_set) -> Tokenizer:
        """The run's tokenizer (``cfg.tokenizer``; characters in runs from before it existed),
        learnt from the training transcripts by rank 0 when the run starts and kept in the run
        dir with the words of the transcripts (in fit only), so evaluation and transcription
        decode with the same units and lexicon."""
        units = instantiate(self.cfg.tokenizer) if self.cfg.get("tokenizer") else CharUnits()
        path, words = self.run_dir / units.file_name, self.run_dir / "lexicon.txt"
        if train_set is not None:
            if not any(train_set.texts):
                raise UserError("the training set has no transcripts: speech recognition needs a text field in "
                                "its manifest (words, text, ...; or name it with text_key=)")
            for other in (self.run_dir / name for name in RUN_FILES if name != units.file_name):
                if other.is_file():
                    raise UserError(f"{other} holds the tokenizer this run started with; resume with the same "
                                    "tokenizer option or start a new run")
            if self.dist.is_main and not path.is_file():
                units.fit(train_set.texts).save(path)
                write_text_atomic(words, "".join(f"{w}\n" for w in training_words(train_set.texts)))
            distributed.barrier()  # every rank, whether or not rank 0 had to write it
        if not path.is_file():
            raise UserError(f"{path} not found: the run's tokenizer is saved there by framework.train; evaluation "
                            "and transcription need the run directory of a training run")
        tokenizer = units.load(path)
        if train_set is not None:
            units.check(tokenizer, path)
        return tokenizer

    def compute_forward(self, batch, stage: Stage):
        feats, feat_lens = self.features(batch.inputs, batch.inputs_lens, augment=stage == Stage.TRAIN)
        logits, out_lens, *intermediate = self.model(feats, feat_lens)  # intermediate logits in training only
        return logits.float().log_softmax(-1), out_lens, [i.float().log_softmax(-1) for i in intermediate]

    def compute_objectives(self, outputs, batch, stage: Stage) -> torch.Tensor:
        log_probs, out_lens, intermediate = outputs
        targets, target_lens = self.targets(batch, stage)
        loss = self.ctc_loss(log_probs.transpose(0, 1), targets, out_lens, target_lens)
        if intermediate:  # the model has an intermediate layer, and this is training
            lower = self.ctc_loss(intermediate[0].transpose(0, 1), targets, out_lens, target_lens)
            loss = (1 - self.intermediate_weight) * loss + self.intermediate_weight * lower
        if stage != Stage.TRAIN:
            self.score(batch, (self.decoder if stage == Stage.TEST else self.greedy).decode(log_probs, out_lens))
        return loss

    def targets(self, batch, stage: Stage) -> tuple[torch.Tensor, torch.Tensor]:
        """The transcripts' label ids, concatenated, and their lengths, on the device."""
        if stage != Stage.TRAIN:  # evaluation transcripts may hold characters training never saw
            self.unknown.update(c for t in batch.text for c in self.tokenizer.unknown(t))
        targets, target_lens = self.tokenizer.encode_batch(batch.text, drop_unknown=stage != Stage.TRAIN)
        return targets.to(self.device), target_lens.to(self.device)

    def score(self, batch, hyps: list[str]) -> None:
        """Character and word errors of the hypotheses against the normalised transcripts."""
        refs = [self.tokenizer.normalize(t) for t in batch.text]
        char_edits = self.cer.update(refs, hyps)
        self.wer.update(refs, hyps)
        self.examples.extend(zip(batch.id, refs, hyps, char_edits))

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
            log.warning("%s transcripts hold characters outside the training alphabet, left out of the loss's targets "
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

    def recognize(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> list[str]:
        """Transcripts of a batch of features, decoded with the test decoder."""
        logits, out_lens = self.model(feats, feat_lens)
        return self.decoder.decode(logits.float().log_softmax(-1), out_lens)
