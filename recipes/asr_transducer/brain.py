"""Speech recognition with a transducer (RNN-T): the CTC recipe's tokenizer, metrics and
test transcripts (recipes/asr_ctc/brain.py), with a transducer model and loss.

features -> encoder (conf/model: conformer_transducer, ds2_transducer) -> joiner over
(frame, label position) pairs with the LSTM prediction network -> transducer loss
(``torchaudio.functional.rnnt_loss``), in training mixed with a CTC loss of a linear head on
the encoder's frames by ``ctc_weight`` (``model.ctc_head``); character / word error rates
in validation (greedy decoding) and test (conf/decoder: transducer_greedy, or
transducer_beam, torchaudio's beam search).

Run: python -m framework.train recipe=asr_transducer [overrides]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn
from torchaudio.functional import rnnt_loss

from framework.brain import Stage
from framework.errors import UserError
from framework.models.transducer import Transducer
from framework.text.transducer_decoders import TransducerGreedyDecoder
from recipes.asr_ctc.brain import ASRBrain


class TransducerBrain(ASRBrain):
    ctc = False  # transcribed a whole recording at a time
    greedy_decoder = TransducerGreedyDecoder
    decoder_options = "decoder=transducer_greedy or decoder=transducer_beam"

    def build_model(self, train_set) -> nn.Module:
        self.setup_decoding(train_set)
        model = instantiate(self.cfg.model, num_bins=self.features.num_bins, num_classes=len(self.tokenizer))
        if not isinstance(model, Transducer):
            raise UserError(f"model {self.cfg.model._target_} is not a transducer; recipe=asr_transducer trains "
                            "model=conformer_transducer or model=ds2_transducer")
        self.ctc_weight = float(self.cfg.get("ctc_weight", 0.3))
        if model.ctc_head is not None and not 0.0 < self.ctc_weight < 1.0:
            raise UserError(f"ctc_weight={self.ctc_weight}: must be in (0, 1) with model.ctc_head=true (the loss is "
                            "(1 - w) x transducer + w x CTC); without the CTC loss set model.ctc_head=false")
        return model

    def compute_forward(self, batch, stage: Stage):
        feats, feat_lens = self.features(batch.inputs, batch.inputs_lens, augment=stage == Stage.TRAIN)
        targets, target_lens = self.targets(batch, stage)
        padded = padded_targets(targets, target_lens)
        return *self.model(feats, feat_lens, padded, target_lens), targets, padded, target_lens

    def compute_objectives(self, outputs, batch, stage: Stage) -> torch.Tensor:
        joint, encodings, out_lens, ctc_logits, targets, padded, target_lens = outputs
        # the loss's own log-softmax, in fp32 (the joint may come from bf16 autocast); per utterance, summed over labels
        loss = rnnt_loss(joint.float(), padded.int(), out_lens.int(), target_lens.int(), blank=0,
                         fused_log_softmax=True)
        if ctc_logits is not None:  # the model has a CTC head, and this is training
            log_probs = ctc_logits.float().log_softmax(-1).transpose(0, 1)
            ctc = F.ctc_loss(log_probs, targets, out_lens, target_lens, zero_infinity=True, reduction="sum")
            loss = (1 - self.ctc_weight) * loss + self.ctc_weight * ctc / len(target_lens)
        if stage != Stage.TRAIN:
            decoder = self.decoder if stage == Stage.TEST else self.greedy
            self.score(batch, decoder.decode(self.module, encodings, out_lens))
        return loss

    def recognize(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> list[str]:
        encodings, out_lens = self.module.transcribe(feats, feat_lens)
        return self.decoder.decode(self.module, encodings, out_lens)


def padded_targets(targets: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Concatenated label ids -> ``[B, max(lengths)]``, padded with the blank (id 0)."""
    rows = targets.split(lengths.tolist())
    return nn.utils.rnn.pad_sequence(rows, batch_first=True) if rows else targets.new_zeros(0, 0)
