"""The SpeechBrain side of ``python -m benchmarks vs-speechbrain``: CTC speech
recognition written the way SpeechBrain's tutorials write it, around the framework's own
model, features, optimizer and schedule.

    python -m benchmarks.speechbrain_recipe OUT_DIR THREADS [framework overrides...]

SpeechBrain's way: a ``DynamicItemDataset`` per split from the JSON manifests, dynamic-item
pipelines (``takes``/``provides``) that read the audio (``sb.dataio.dataio.read_audio``)
and encode the text (``CTCTextEncoder``), SpeechBrain's ``DynamicBatchSampler``, an
``sb.Brain`` subclass with ``compute_forward`` / ``compute_objectives`` / ``on_stage_end``,
``sb.nnet.losses.ctc_loss``, ``ctc_greedy_decode``, ``ErrorRateStats``, a ``Checkpointer``
that keeps the best checkpoint by CER, ``fit`` then ``evaluate(min_key="CER")``.

The same as the framework's run: the composed framework config (the same overrides) gives
the model (``framework.models.DeepSpeech2``), the fbank pipeline (the same torchaudio
transform and per-utterance normalisation), the optimizer, the OneCycle schedule (over
this side's own steps per epoch x epochs, stepped per optimizer step), the batch budget
and bucket count, the epochs and the seed; gradient clipping at 5 is SpeechBrain's
default as it is the framework's. Writes ``OUT_DIR/result.json`` with per-epoch times,
padding and steps, and the final valid/test CER.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import speechbrain as sb
import torch
from hydra.utils import instantiate
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.encoder import CTCTextEncoder
from speechbrain.dataio.sampler import DynamicBatchSampler
from speechbrain.utils.metric_stats import ErrorRateStats

from benchmarks.common import compose
from framework.experiment import seed_everything
from framework.trainer.optim import build_optimizer


class CTCBrain(sb.Brain):
    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        lengths = (wav_lens * wavs.shape[1]).round().long()
        if stage == sb.Stage.TRAIN:
            self.padded += wavs.shape[0] * wavs.shape[1]
            self.real += int(lengths.sum())
        feats, feat_lens = self.modules.features(wavs, lengths)
        logits, out_lens = self.modules.model(feats, feat_lens)[:2]  # an intermediate CTC head is not compared
        return logits.float().log_softmax(-1), out_lens

    def compute_objectives(self, predictions, batch, stage):
        p_ctc, out_lens = predictions
        rel_lens = out_lens.float() / p_ctc.shape[1]
        tokens, tokens_lens = batch.tokens
        loss = sb.nnet.losses.ctc_loss(p_ctc, tokens, rel_lens, tokens_lens, blank_index=self.hparams.blank_index)
        if stage != sb.Stage.TRAIN:
            sequences = sb.decoders.ctc_greedy_decode(p_ctc, rel_lens, blank_id=self.hparams.blank_index)
            hyps = ["".join(self.hparams.label_encoder.decode_ndim(s)) for s in sequences]
            self.cer_metric.append(batch.id, [list(h) for h in hyps], [list(w) for w in batch.words])
        return loss

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        if should_step:
            self.scheduler.step()
            self.steps += 1

    def init_optimizers(self):
        super().init_optimizers()
        total = self.hparams.steps_per_epoch * self.hparams.epochs
        self.scheduler = instantiate(self.hparams.scheduler, optimizer=self.optimizer, total_steps=total)

    def on_stage_start(self, stage, epoch=None):
        self.t_stage = time.perf_counter()
        if stage == sb.Stage.TRAIN:
            self.t_epoch = self.t_stage
            self.padded = self.real = self.steps = 0
        else:
            self.cer_metric = ErrorRateStats()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.epoch_stats = {"epoch": epoch, "train_loss": stage_loss, "train_s": time.perf_counter() - self.t_stage,
                                "padding_fraction": 1 - self.real / max(self.padded, 1), "steps": self.steps}
            return
        cer = self.cer_metric.summarize("error_rate") / 100
        if stage == sb.Stage.VALID:
            self.checkpointer.save_and_keep_only(meta={"CER": cer}, min_keys=["CER"])
            self.history.append({**self.epoch_stats, "valid_loss": stage_loss, "valid_cer": cer,
                                 "epoch_s": time.perf_counter() - self.t_epoch})
        else:
            self.test_cer = cer


def datasets(cfg, label_encoder: CTCTextEncoder) -> dict[str, DynamicItemDataset]:
    data = {}
    for split in ("train", "valid", "test"):
        s = cfg.dataset[split]
        data[split] = DynamicItemDataset.from_json(json_path=s.path, replacements={"data_root": s.data_root})

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return sb.dataio.dataio.read_audio(wav)

    @sb.utils.data_pipeline.takes("words")
    @sb.utils.data_pipeline.provides("words", "char_list", "tokens")
    def text_pipeline(words):
        words = words.lower()
        yield words
        char_list = list(words)
        yield char_list
        # characters training never saw are left out of the targets, as the framework's recipe does
        yield torch.LongTensor(label_encoder.encode_sequence([c for c in char_list if c in label_encoder.lab2ind]))

    sb.dataio.dataset.add_dynamic_item(list(data.values()), audio_pipeline)
    sb.dataio.dataset.add_dynamic_item(list(data.values()), text_pipeline)
    sb.dataio.dataset.set_output_keys(list(data.values()), ["id", "sig", "words", "tokens"])
    return data


def main(out_dir: str, threads: int, overrides: list[str]) -> dict:
    torch.set_num_threads(threads)
    cfg = compose(overrides)
    seed_everything(cfg.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    label_encoder = CTCTextEncoder()
    data = datasets(cfg, label_encoder)
    label_encoder.load_or_create(path=str(out / "label_encoder.txt"), from_didatasets=[data["train"]],
                                 output_key="char_list", special_labels={"blank_label": 0}, sequence_input=True)
    b = cfg.batching
    samplers = {split: DynamicBatchSampler(data[split], max_batch_length=b.max_batch_length, num_buckets=b.num_buckets,
                                           length_func=lambda x: x["duration"], shuffle=split == "train",
                                           batch_ordering="random" if split == "train" else "ascending")
                for split in data}
    features = instantiate(cfg.features)
    model = instantiate(cfg.model, num_bins=features.num_bins, num_classes=len(label_encoder))
    epoch_counter = sb.utils.epoch_loop.EpochCounter(limit=cfg.trainer.max_epochs)
    modules = {"features": features, "model": model}
    checkpointer = sb.utils.checkpoints.Checkpointer(checkpoints_dir=str(out / "save"),
                                                     recoverables={"model": model, "counter": epoch_counter})
    hparams = {"label_encoder": label_encoder, "blank_index": 0, "scheduler": cfg.scheduler,
               "steps_per_epoch": len(samplers["train"]), "epochs": cfg.trainer.max_epochs}
    # the framework's optimizer groups (optimizer.groups) name the model's parameters, so the optimizer is built
    # over the model, not over the parameters SpeechBrain passes (the same: the features have none)
    brain = CTCBrain(modules=modules, opt_class=lambda params: build_optimizer(cfg.optimizer, model),
                     hparams=hparams, run_opts={"device": "cpu", "noprogressbar": True,
                                                "max_grad_norm": cfg.trainer.max_grad_norm},
                     checkpointer=checkpointer)
    brain.history = []
    brain.fit(epoch_counter, data["train"], data["valid"], train_loader_kwargs={"batch_sampler": samplers["train"]},
              valid_loader_kwargs={"batch_sampler": samplers["valid"]})
    brain.evaluate(data["test"], min_key="CER", test_loader_kwargs={"batch_sampler": samplers["test"]})
    result = {"history": brain.history, "valid_cer": brain.history[-1]["valid_cer"], "test_cer": brain.test_cer,
              "threads": torch.get_num_threads(), "speechbrain": sb.__version__}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
