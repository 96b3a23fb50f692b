"""Pretrained speech encoders from local files: torchaudio's, Hugging Face's and fairseq's
formats round-trip a small randomly initialised model (the same outputs); a file that would
run code is refused and never run."""

from __future__ import annotations

import json
import os
import pickle
import re

import pytest
import torch
import torchaudio
from safetensors.torch import save_file

from framework.errors import BadValue, UserError
from framework.models.wav2vec2 import Wav2Vec2CTC

TINY = dict(extractor_mode="group_norm", extractor_conv_layer_config=[(8, 10, 5), (8, 3, 2)], extractor_conv_bias=False,
            encoder_embed_dim=16, encoder_projection_dropout=0.0, encoder_pos_conv_kernel=4, encoder_pos_conv_groups=2,
            encoder_num_layers=2, encoder_num_heads=2, encoder_attention_dropout=0.0, encoder_ff_interm_features=32,
            encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_norm_first=False, encoder_layer_drop=0.0)
HF_CONFIG = {"architectures": ["Wav2Vec2ForCTC"], "feat_extract_norm": "group", "conv_dim": [8, 8],
             "conv_kernel": [10, 3], "conv_stride": [5, 2], "conv_bias": False, "hidden_size": 16,
             "feat_proj_dropout": 0.0, "num_conv_pos_embeddings": 4, "num_conv_pos_embedding_groups": 2,
             "num_hidden_layers": 2, "num_attention_heads": 2, "attention_dropout": 0.0, "intermediate_size": 32,
             "activation_dropout": 0.0, "hidden_dropout": 0.0, "do_stable_layer_norm": False, "layerdrop": 0.0,
             "vocab_size": 5}
# torchaudio's names -> fairseq's (the inverse of torchaudio's import_fairseq key mapping)
TO_FAIRSEQ = [(r"feature_extractor\.conv_layers\.0\.layer_norm\.", "feature_extractor.conv_layers.0.2."),
              (r"feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
              (r"encoder\.feature_projection\.projection\.", "post_extract_proj."),
              (r"encoder\.feature_projection\.layer_norm\.", "layer_norm."),
              (r"encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original0", "encoder.pos_conv.0.weight_g"),
              (r"encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original1", "encoder.pos_conv.0.weight_v"),
              (r"encoder\.transformer\.pos_conv_embed\.conv\.", "encoder.pos_conv.0."),
              (r"encoder\.transformer\.layer_norm\.", "encoder.layer_norm."),
              (r"encoder\.transformer\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
              (r"encoder\.transformer\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
              (r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
              (r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
              (r"encoder\.transformer\.layers\.(\d+)\.final_layer_norm\.", r"encoder.layers.\1.final_layer_norm.")]


@pytest.fixture()
def original():
    torch.manual_seed(3)
    model = torchaudio.models.wav2vec2_model(**TINY, aux_num_out=None).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # unlike a fresh initialisation
    return model


def encoded(model: Wav2Vec2CTC, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval().encoder(waves, lengths)[0]


@pytest.fixture()
def waves():
    torch.manual_seed(0)
    return torch.randn(2, 4000), torch.tensor([4000, 3000])


def test_torchaudio_weights_load_into_the_same_outputs(tmp_path, original, waves):
    path = tmp_path / "encoder.pt"
    torch.save(original.state_dict(), path)
    model = Wav2Vec2CTC(1, 7, pretrained=str(path), config=TINY)
    assert torch.equal(encoded(model, *waves), original(*waves)[0])
    logits, lengths = model(*waves)
    assert logits.shape[-1] == 7 and lengths.tolist() == original(*waves)[1].tolist()
    assert not any(p.requires_grad for p in model.encoder.feature_extractor.parameters())  # frozen by default


@pytest.mark.parametrize("weight_norm_names", ["parametrizations", "weight_g"])
def test_a_hugging_face_folder_imports_through_torchaudio(tmp_path, original, waves, weight_norm_names):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(HF_CONFIG))
    state = original.state_dict()
    hf = {f"wav2vec2.feature_extractor.{k[len('feature_extractor.'):]}": v for k, v in state.items()
          if k.startswith("feature_extractor.")}
    hf |= {f"wav2vec2.feature_projection.{k[len('encoder.feature_projection.'):]}": v for k, v in state.items()
           if k.startswith("encoder.feature_projection.")}
    hf |= {f"wav2vec2.encoder.{k[len('encoder.transformer.'):]}": v for k, v in state.items()
           if k.startswith("encoder.transformer.")}
    if weight_norm_names == "weight_g":  # how older files name the positional convolution's weight norm
        hf = {k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                                 "weight_v"): v for k, v in hf.items()}
    hf |= {"lm_head.weight": torch.randn(5, 16), "lm_head.bias": torch.zeros(5)}
    save_file({k: v.contiguous() for k, v in hf.items()}, str(folder / "model.safetensors"))
    model = Wav2Vec2CTC(1, 7, pretrained=str(folder))
    assert torch.allclose(encoded(model, *waves), original(*waves)[0], atol=1e-6)


def test_fairseq_weights_import_through_torchaudios_key_mapping(tmp_path, original, waves):
    fairseq = {}
    for key, value in original.state_dict().items():
        for pattern, replacement in TO_FAIRSEQ:
            if re.match(pattern, key):
                key = re.sub(pattern, replacement, key)
                break
        fairseq[key] = value
    path = tmp_path / "checkpoint_best.pt"
    torch.save({"model": fairseq}, path)
    model = Wav2Vec2CTC(1, 7, pretrained=str(path), config=TINY)
    assert torch.equal(encoded(model, *waves), original(*waves)[0])


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(HF_CONFIG))
    torch.save({"weights": Payload(marker)}, folder / "pytorch_model.bin")  # a pickle, as these files are
    with pytest.raises(UserError, match=r"holds Python objects \(.*system\).*not loaded, since loading it could run "
                                        r"arbitrary code"):
        Wav2Vec2CTC(1, 7, pretrained=str(folder))
    with open(folder / "pytorch_model.bin", "wb") as f:  # a bare pickle
        pickle.dump({"weights": Payload(marker)}, f)
    with pytest.raises(UserError, match="not loaded, since loading it could run arbitrary code"):
        Wav2Vec2CTC(1, 7, pretrained=str(folder))
    assert not marker.exists()


def test_weights_for_another_architecture_and_features_are_refused(tmp_path, original):
    path = tmp_path / "encoder.pt"
    torch.save(original.state_dict(), path)
    with pytest.raises(UserError, match="do not fit model.arch"):
        Wav2Vec2CTC(1, 7, pretrained=str(path), config=TINY | {"encoder_num_layers": 3})
    with pytest.raises(BadValue, match="use features=none"):
        Wav2Vec2CTC(40, 7, config=TINY)
