"""Pretrained speech encoders with a CTC head: wav2vec 2.0, HuBERT and WavLM as torchaudio
builds them (``torchaudio.models``), for fine-tuning on waveforms (``features=none``).

The weights come from a local file (nothing is downloaded): torchaudio's own state dict
(what ``torchaudio.pipelines`` bundles hold), a Hugging Face model folder (``config.json``
with ``model.safetensors`` or ``pytorch_model.bin``; its architecture is read from the
config) or a fairseq checkpoint (its ``model`` weights; the architecture is this config's
``arch``). Hugging Face and fairseq weights go through torchaudio's importers
(``import_huggingface_model``; fairseq's key mapping). Files are read with
``torch.load(weights_only=True)`` or safetensors: a file that needs more (a pickle with
Python objects, such as a malicious ``pytorch_model.bin``) is refused, never run.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torchaudio
from torch import nn
from torchaudio.models.wav2vec2.utils import import_fairseq, import_huggingface

from framework.errors import BadValue, UserError

log = logging.getLogger(__name__)
ARCHES = ("wav2vec2_base", "wav2vec2_large", "hubert_base", "hubert_large", "wavlm_base", "wavlm_large")


class Wav2Vec2CTC(nn.Module):
    """A pretrained encoder (``arch``, or ``config``: the keyword arguments of
    ``torchaudio.models.wav2vec2_model`` / ``wavlm_model`` for another size) and a linear CTC
    head. The convolutional feature encoder is frozen by default (``freeze_feature_encoder``:
    its gradients and optimizer state are not needed to fine-tune)."""

    def __init__(self, num_bins: int, num_classes: int, arch: str = "wav2vec2_base", pretrained: str | None = None,
                 config: dict[str, Any] | None = None, freeze_feature_encoder: bool = True) -> None:
        super().__init__()
        if num_bins != 1:
            raise BadValue(f"model=wav2vec2_ctc takes waveforms: use features=none (the run gives {num_bins} bins)")
        if arch not in ARCHES:
            raise BadValue(f"arch={arch!r}: choose one of {', '.join(ARCHES)}")
        wavlm = arch.startswith("wavlm")
        if pretrained and _is_huggingface(pretrained):
            self.encoder = load_huggingface(pretrained)
        elif config:
            build = torchaudio.models.wavlm_model if wavlm else torchaudio.models.wav2vec2_model
            self.encoder = build(**dict(config), aux_num_out=None)
        else:
            self.encoder = getattr(torchaudio.models, arch)(aux_num_out=None)
        if pretrained and not _is_huggingface(pretrained):
            load_state(self.encoder, read_weights(Path(pretrained)), pretrained)
        self.encoder.aux = None  # the head below is this model's (sized for the run's tokenizer)
        self.head = nn.Linear(self.encoder.encoder.transformer.layers[0].final_layer_norm.normalized_shape[0],
                              num_classes)
        if freeze_feature_encoder:
            self.encoder.feature_extractor.requires_grad_(False)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms ``[B, S]`` (or ``[B, S, 1]``) and their lengths -> CTC logits ``[B, T, C]``
        and frame counts (one frame per 20 ms)."""
        if inputs.dim() == 3:
            inputs = inputs.squeeze(-1)
        features, out_lengths = self.encoder(inputs, lengths)
        assert out_lengths is not None  # given lengths, torchaudio returns them (and TorchScript needs to know)
        return self.head(features), out_lengths

    def _convs(self) -> list[tuple[int, int]]:
        """(kernel, stride) of each layer of the convolutional feature encoder, in samples."""
        return [(layer.conv.kernel_size[0], layer.conv.stride[0]) for layer in self.encoder.feature_extractor.conv_layers]

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Output frames of waveforms of ``lengths`` samples (torchaudio's rule, layer by layer)."""
        for kernel, stride in self._convs():
            lengths = (torch.div(lengths - kernel, stride, rounding_mode="floor") + 1).clamp(min=0)
        return lengths

    def first_frame_centre(self) -> float:
        """The sample output frame 0 is centred on: the middle of its receptive field."""
        span, step = 1, 1
        for kernel, stride in self._convs():
            span, step = span + (kernel - 1) * step, step * stride
        return (span - 1) / 2


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, without running code from it."""
    if not path.is_file():
        raise UserError(f"model.pretrained={path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        unsafe = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"Python objects ({unsafe.group(1)})" if unsafe else f"something else ({type(exc).__name__})"
        raise UserError(f"model.pretrained={path}: the file holds {what}, not only tensors; it is not loaded, since "
                        "loading it could run arbitrary code: save its weights alone (a state dict) or use the "
                        "model's safetensors file") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # a fairseq checkpoint
        state = import_fairseq._convert_state_dict(state["model"])
    return state


def load_state(encoder: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Weights in torchaudio's names into ``encoder`` (a CTC head of the file is not used)."""
    state = {k: v for k, v in state.items() if not k.startswith("aux.")}
    missing, unexpected = encoder.load_state_dict(_weight_norm_names(state, encoder), strict=False)
    missing = [k for k in missing if not k.startswith("aux.")]
    if missing or unexpected:
        raise UserError(f"model.pretrained={source}: its weights do not fit model.arch ({len(missing)} missing, e.g. "
                        f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]}): choose the arch it "
                        "was trained with")
    log.info("encoder weights from %s", source)


def _weight_norm_names(state: dict[str, torch.Tensor], encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The positional convolution's weight-norm tensors under the names this torch uses
    (``weight_g``/``weight_v`` or ``parametrizations.weight.original0/1``)."""
    own = set(encoder.state_dict())
    pairs = (("weight_g", "parametrizations.weight.original0"), ("weight_v", "parametrizations.weight.original1"))
    out = {}
    for key, value in state.items():
        for a, b in pairs:
            if key.endswith(a) and key not in own and key[: -len(a)] + b in own:
                key = key[: -len(a)] + b
            elif key.endswith(b) and key not in own and key[: -len(b)] + a in own:
                key = key[: -len(b)] + a
        out[key] = value
    return out


def _is_huggingface(path: str) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def load_huggingface(folder: str) -> nn.Module:
    """A Hugging Face wav2vec2 / HuBERT / WavLM folder, through torchaudio's importer (which
    reads a transformers model's ``config`` and submodules' state dicts: a view over the
    file's tensors stands in for the transformers model)."""
    root = Path(folder)
    config = json.loads((root / "config.json").read_text())
    files = [root / n for n in ("model.safetensors", "pytorch_model.bin") if (root / n).is_file()]
    if not files:
        raise UserError(f"model.pretrained={folder}: no model.safetensors or pytorch_model.bin beside config.json")
    # older files keep the positional convolution's weight norm as weight_g / weight_v
    weights = {re.sub(r"pos_conv_embed\.conv\.weight_([gv])$",
                      lambda m: f"pos_conv_embed.conv.parametrizations.weight.original{'0' if m[1] == 'g' else '1'}", k): v
               for k, v in read_weights(files[0]).items()}
    kind = (config.get("architectures") or ["Wav2Vec2Model"])[0]
    model = type(kind, (_StateView,), {})(weights, "", SimpleNamespace(**config))  # the importer reads the class name
    encoder = import_huggingface.import_huggingface_model(model)
    log.info("encoder and its config from %s (%s)", folder, kind)
    return encoder


class _StateView:
    """What torchaudio's Hugging Face importer reads of a transformers model: ``config``,
    submodules by attribute and their ``state_dict()``; served from a flat dict of tensors."""

    def __init__(self, weights: dict[str, torch.Tensor], prefix: str, config: SimpleNamespace) -> None:
        self._weights, self._prefix, self.config = weights, prefix, config

    def __getattr__(self, name: str) -> _StateView:
        prefix = f"{self._prefix}{name}."
        if name.startswith("_") or not any(k.startswith(prefix) for k in self._weights):
            raise AttributeError(name)
        return _StateView(self._weights, prefix, self.config)

    def state_dict(self) -> dict[str, torch.Tensor]:
        n = len(self._prefix)
        return {k[n:]: v for k, v in self._weights.items() if k.startswith(self._prefix)}
