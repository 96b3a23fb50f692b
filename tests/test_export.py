"""Trained models leave the framework: every shipped model exports (TorchScript, torch.export,
ONNX) with outputs equal to the eager ones at other lengths and batch sizes than the example's;
``framework.export`` writes an artifact whose ``inference.py`` runs without the framework; and
``framework.transcribe`` reads long recordings in chunks, with word times and subtitles."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import soundfile
import torch

from framework.data.synthetic import letter_tone
from framework.export import formats
from framework.export.graph import Graph
from framework.models import ConformerCTC, DeepSpeech2, WideResNet
from framework.models.wav2vec2 import Wav2Vec2CTC
from tests.conftest import run_cli, run_result
from tests.test_wav2vec2 import TINY as WAV2VEC2_TINY

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ the shipped models
def ds2(**kw) -> DeepSpeech2:
    args = dict(num_classes=11, num_bins=40, conv_channels=(4, 4), hidden_size=24, num_layers=2, fc_size=24)
    return DeepSpeech2(**{**args, **kw})


MODELS = {  # the shipped configs' kinds of layer, at test sizes
    "ds2": lambda: ds2(),  # the DeepMark spec: ReLU RNN clipped inside the recurrence, shared projection
    "ds2_small": lambda: ds2(rnn_type="gru", shared_projection=False, conv_kernels=((5, 11), (5, 11)),
                             conv_padding=((0, 5), (0, 5)), intermediate_layer=1),
    "ds2_lstm": lambda: ds2(rnn_type="lstm", merge="concat"),
    "conformer": lambda: ConformerCTC(num_bins=40, num_classes=11, d_model=32, num_layers=2, num_heads=2,
                                      conv_kernel=7, subsampling_channels=8),
    "wideresnet": lambda: WideResNet(depth=10, widen_factor=1, num_classes=4, in_channels=1),
    "wav2vec2": lambda: Wav2Vec2CTC(1, 11, config=WAV2VEC2_TINY),  # torchaudio's encoder, on waveforms
}
WAVEFORM_SAMPLES = 20  # wav2vec2's examples: this many samples for each frame a feature model gets


def trained(name: str) -> torch.nn.Module:
    """The model after a few training batches (batch-norm statistics of its own), in evaluation."""
    torch.manual_seed(0)
    model = MODELS[name]()
    with torch.no_grad():
        for _ in range(3):
            model(*example(name, [120, 90, 70]))
    return model.eval()


def example(name: str, lengths: list[int]) -> tuple[torch.Tensor, ...]:
    if name == "wideresnet":  # images: the batch size varies (an image's size is fixed in an export)
        return (torch.randn(len(lengths), 1, 16, 16),)
    if name == "wav2vec2":
        lengths = [n * WAVEFORM_SAMPLES for n in lengths]
        x = torch.randn(len(lengths), max(lengths))
        for i, n in enumerate(lengths):
            x[i, n:] = 0
        return x, torch.tensor(lengths)
    x = torch.randn(len(lengths), max(lengths), 40)
    for i, n in enumerate(lengths):
        x[i, n:] = 0
    return x, torch.tensor(lengths)


CASES = [[200, 77, 150], [61], [333, 333], [43], [90, 45]]  # batches of one, unpadded, near the shortest input


def eager_and_exported(name: str, run) -> None:
    model = trained(name)
    for lengths in CASES:
        inputs = example(name, lengths)
        with torch.no_grad():
            expected, got = model(*inputs), run(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = got if isinstance(got, (tuple, list)) else (got,)
        assert len(got) == len(expected)
        for e, g in zip(expected, got):
            torch.testing.assert_close(torch.as_tensor(g).to(e.dtype), e, rtol=1e-4, atol=1e-4,
                                       msg=f"{name} at lengths {lengths}")


@pytest.mark.parametrize("name", MODELS)
def test_every_model_scripts_with_the_eager_outputs_at_every_length(name, tmp_path):
    model = trained(name)
    path = tmp_path / "model.ts"
    torch.jit.save(torch.jit.script(model), str(path))
    eager_and_exported(name, torch.jit.load(str(path)))


@pytest.mark.slow  # 15-30 s: `make test-slow` runs it
def test_torch_compile_keeps_the_eager_recurrence_and_its_outputs(monkeypatch):
    """trainer.compile: dynamo answers True to ``torch.compiler.is_exporting()`` too, and the
    export-only ``scan`` of the recurrence fails to compile on a GPU; compiled training keeps
    cuDNN's fused RNN (or the clipped step loop)."""
    from framework.models.deepspeech2 import RecurrentLayer

    def export_only(*args, **kwargs):
        raise AssertionError("the export path ran under torch.compile")

    model = trained("ds2_lstm")  # nn.LSTM: the fused kernel's path (the clipped loop compiles 2x slower)
    monkeypatch.setattr(RecurrentLayer, "scanned", export_only)
    torch._dynamo.reset()
    eager_and_exported("ds2_lstm", torch.compile(model, backend="eager", dynamic=True))


@pytest.mark.slow  # torch.export and ONNX traces: ~10 s each on an idle machine
@pytest.mark.parametrize("fmt", ["torch_export", "onnx"])
@pytest.mark.parametrize("name", MODELS)
def test_every_model_exports_with_the_eager_outputs_at_every_length(name, fmt, tmp_path):
    import onnx
    import onnxruntime

    model = trained(name)
    inputs = example(name, [120, 90])
    args = inputs if len(inputs) == 2 else (*inputs, torch.tensor([16, 16]))
    graph = model if len(inputs) == 2 else ImageGraph(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pad_to = formats.save(Graph.of_batch(graph, args), fmt, tmp_path / formats.FORMATS[fmt])
    if fmt == "torch_export":
        module = torch.export.load(str(tmp_path / "model.pt2")).module()
    else:
        ops = {node.op_type for node in onnx.load(str(tmp_path / "model.onnx")).graph.node}
        if name == "ds2_small":  # GRU layers: ONNX's GRU operator, not a scan over time
            assert "GRU" in ops and "Scan" not in ops, ops
        session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
        names = [i.name for i in session.get_inputs()]

        def module(*xs):
            return session.run(None, dict(zip(names, (x.numpy() for x in xs))))

    def run(*xs):
        if len(xs) == 1:
            return module(xs[0], torch.tensor([16] * len(xs[0])))
        x, lengths = xs
        short = max(0, pad_to - x.shape[1])  # what runners do; no change to the outputs
        x = torch.nn.functional.pad(x, (0, 0, 0, short) if x.dim() == 3 else (0, short))
        return module(x, lengths)

    eager_and_exported(name, run)


@pytest.mark.parametrize("n_fft, win_length, hop_length", [(400, 400, 160), (512, 400, 160), (400, 320, 100),
                                                         (401, 401, 100), (256, 256, 7)])
def test_the_spectrogram_onnx_takes_equals_torchaudios(n_fft, win_length, hop_length):
    """The STFT as ONNX computes it (a DFT matrix product, graph.DFTSpectrogram) against torch's
    FFT, with a window shorter than the frame, at lengths that end mid-frame or before one."""
    import torchaudio

    from framework.export.graph import DFTSpectrogram

    settings = dict(n_fft=n_fft, win_length=win_length, hop_length=hop_length, pad_mode="constant")
    torch.manual_seed(0)
    for transform in (torchaudio.transforms.Spectrogram(**settings),
                      torchaudio.transforms.MelSpectrogram(16000, n_mels=40, **settings)):
        dft = DFTSpectrogram(transform)
        for samples in (1, n_fft - 1, 16000, 16000 + hop_length // 2):
            wave = torch.randn(2, samples) * 0.1
            expected, got = transform(wave), dft(wave)
            assert got.shape == expected.shape
            assert (got - expected).abs().max() <= 1e-5 * expected.abs().max(), (samples, type(transform).__name__)


@pytest.mark.parametrize("options", [dict(bidirectional=False), dict(shared_projection=True, merge="concat")])
def test_gru_layers_export_to_onnx_as_its_gru_operator_with_the_eager_outputs(options, tmp_path):
    """One direction, and a shared projection (a frozen identity input weight), beside the
    shipped ds2_small case of the test above. Padded batches included: each sequence's
    length reaches the operator, as packed sequences do in PyTorch."""
    import onnx
    import onnxruntime

    torch.manual_seed(0)
    model = ds2(rnn_type="gru", **options)
    with torch.no_grad():
        for _ in range(3):
            model(*example("ds2", [120, 90, 70]))
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        formats.save(Graph.of_batch(model, example("ds2", [120, 90])), "onnx", tmp_path / "model.onnx")
    ops = [node.op_type for node in onnx.load(str(tmp_path / "model.onnx")).graph.node]
    assert ops.count("GRU") == 2 and "Scan" not in ops, ops
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    for lengths in CASES:
        inputs = example("ds2", lengths)
        with torch.no_grad():
            expected = model(*inputs)
        got = session.run(None, {"inputs": inputs[0].numpy(), "lengths": inputs[1].numpy()})
        for e, g in zip(expected, got):
            torch.testing.assert_close(torch.as_tensor(g).to(e.dtype), e, rtol=1e-4, atol=1e-4)


def test_the_gru_op_is_the_packed_gru_of_pytorch():
    """What ``framework::gru`` computes when run in PyTorch (its ONNX translation is checked
    above): nn.GRU on packed sequences, both directions, and a consistent fake for tracing."""
    from framework.models import onnx_recurrence

    torch.manual_seed(0)
    for bidirectional in (True, False):
        rnn = torch.nn.GRU(5, 4, batch_first=True, bidirectional=bidirectional)
        x, lengths = torch.randn(3, 7, 5), torch.tensor([7, 4, 1])
        names = ["_l0", "_l0_reverse"][: 2 if bidirectional else 1]
        weights = [torch.stack([getattr(rnn, kind + n) for n in names]).detach()
                   for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        expected, _ = torch.nn.utils.rnn.pad_packed_sequence(rnn(packed)[0], batch_first=True, total_length=7)
        torch.testing.assert_close(onnx_recurrence.gru(x, lengths, *weights), expected.detach())
        torch.library.opcheck(torch.ops.framework.gru.default, (x, lengths, *weights),
                              test_utils=("test_schema", "test_faketensor"))


def test_int8_onnx_quantizes_matrix_products_and_convolutions_only_without_them(tmp_path):
    """ConvInteger ran 9x slower than fp32 Conv in ds2_small: a model with matrix products
    keeps fp32 convolutions; an image classifier (no MatMul) gets int8 ones."""
    import onnx

    ops = {}
    for name in ("ds2_small", "wideresnet"):
        inputs = example(name, [120, 90])
        args = inputs if len(inputs) == 2 else (*inputs, torch.tensor([16, 16]))
        graph = trained(name) if len(inputs) == 2 else ImageGraph(trained(name))
        (tmp_path / name).mkdir()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            formats.save(Graph.of_batch(graph, args), "onnx", tmp_path / name / "model.onnx", quantize="int8")
        ops[name] = {node.op_type for node in onnx.load(str(tmp_path / name / "model.onnx")).graph.node}
    assert ops["ds2_small"] & {"DynamicQuantizeMatMul", "MatMulInteger"} and "ConvInteger" not in ops["ds2_small"]
    assert "ConvInteger" in ops["wideresnet"], ops["wideresnet"]


def test_int8_onnx_quantizes_a_prediction_networks_lstm_whatever_its_size(tmp_path):
    """torch.onnx computes an LSTM's weights at run time from its parameters when they are over
    8,192 elements, which ONNX Runtime's quantization skips; the export folds them."""
    import onnx

    from framework.export.graph import transducer_steps
    from framework.models.transducer import Transducer

    def encoder(num_bins, num_classes):
        return torch.nn.Linear(num_bins, num_classes)

    for hidden in (32, 128):  # W_hh: 4 x 32 x 32 = 4,096 and 4 x 128 x 128 = 65,536 elements
        model = Transducer(encoder, num_bins=8, num_classes=11, joint_dim=16, hidden_size=hidden).eval()
        path = tmp_path / f"predictor-{hidden}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            formats.save(transducer_steps(model)["predictor"], "onnx", path, quantize="int8")
        ops = [node.op_type for node in onnx.load(str(path)).graph.node]
        assert "DynamicQuantizeLSTM" in ops and "LSTM" not in ops, (hidden, ops)


class ImageGraph(torch.nn.Module):
    """A classifier as an export graph: ``(images, lengths) -> logits``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.model(images)


# ------------------------------------------------------------------- the export command
def isolated_env() -> dict[str, str]:
    """No PYTHONPATH: the artifact's inference.py must not need the framework."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}


def test_exported_artifact_runs_without_the_framework_and_transcribes_as_the_framework(one_epoch_run, tmp_path,
                                                                                       data_dir):
    run_dir = one_epoch_run
    out = tmp_path / "export"
    proc = run_cli("framework.export", [str(run_dir), "--format", "torchscript", "--out", str(out)], cwd=tmp_path)
    meta = json.loads((out / "artifact.json").read_text())
    parity = meta["parity"]
    assert parity["examples"] == 16 and parity["max_abs_diff"] <= 1e-4
    assert parity["exported_cer"] == parity["pytorch_cer"] and f"CER {parity['exported_cer']:.4f}" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["artifact.json", "inference.py", "model.ts", "tokenizer.json"]
    assert meta["source"]["checkpoint"].startswith(str(run_dir / "checkpoints"))

    wavs = sorted((data_dir / "tones-tiny" / "test").glob("*.wav"))[:4]
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(out, moved)
    isolated = subprocess.run([sys.executable, "-I", str(moved / "inference.py"), *map(str, wavs)], cwd=tmp_path,
                              env=isolated_env(), capture_output=True, text=True, timeout=300)
    assert isolated.returncode == 0, isolated.stderr
    assert "framework" not in isolated.stderr
    lines = isolated.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(w) for w in wavs]
    from_run = run_cli("framework.transcribe", [str(run_dir), *map(str, wavs)], cwd=tmp_path).stdout.splitlines()
    from_artifact = run_cli("framework.transcribe", [str(moved), *map(str, wavs)], cwd=tmp_path).stdout.splitlines()
    assert lines == from_run == from_artifact


def test_export_refuses_what_it_cannot_do_in_one_line(one_epoch_run, tmp_path, monkeypatch):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    cases = [
        (["--format", "torch_export", "--quantize", "int8"], "torch.export cannot save; use --format torchscript or onnx"),
        (["--format", "torchscript", "--out", str(busy)], f"{busy} exists and is not an exported model folder"),
    ]
    for args, message in cases:
        proc = run_cli("framework.export", [str(one_epoch_run), *args], cwd=tmp_path, check=False)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: "), proc.stderr
        assert message in proc.stderr
    assert (busy / "notes.txt").read_text() == "mine" and len(list(busy.iterdir())) == 1
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the extra were not installed
    with pytest.raises(Exception, match=re.escape("pip install -e .[export]")):
        formats.check_format("onnx", None)


@pytest.mark.slow  # ONNX and torch.export traces, quantization, and a parity check each
def test_export_formats_and_int8(one_epoch_run, tmp_path):
    sizes = {}
    for fmt, quantize in (("onnx", None), ("torch_export", None), ("onnx", "int8"), ("torchscript", "int8")):
        out = tmp_path / f"{fmt}-{quantize}"
        args = [str(one_epoch_run), "--format", fmt, "--out", str(out), *(["--quantize", quantize] if quantize else [])]
        run_cli("framework.export", args, cwd=tmp_path)
        meta = json.loads((out / "artifact.json").read_text())
        parity = meta["parity"]
        sizes[(fmt, quantize)] = parity["bytes"]
        if quantize is None:
            assert parity["max_abs_diff"] <= 1e-4 and parity["exported_cer"] == parity["pytorch_cer"], parity
        else:
            assert meta["quantized"] == "int8" and abs(parity["exported_cer"] - parity["pytorch_cer"]) < 0.2, parity
    assert sizes[("onnx", "int8")] < sizes[("onnx", None)]


@pytest.mark.slow  # ~60 s: a wav2vec2 run, five exports and their parity checks
def test_a_wav2vec2_run_exports_in_every_format_and_its_artifact_transcribes(tmp_path, data_dir):
    """A model on waveforms (features=none) through the export command: parity of each format,
    and the standalone artifact transcribing as the run does."""
    config = ",".join(f"{k}:{json.dumps(v).replace(' ', '')}" for k, v in WAV2VEC2_TINY.items())
    run_dir = tmp_path / "w2v"
    run_cli("framework.train", ["model=wav2vec2_ctc", "features=none", f"model.config={{{config}}}",
                                "dataset.prepare.splits={train:48,valid:16,test:16}", f"dataset.root={data_dir}/tones-tiny",
                                "trainer.max_epochs=1", "trainer.limit_batches=3", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    for fmt, quantize in (("onnx", None), ("torch_export", None), ("torchscript", None), ("onnx", "int8"),
                          ("torchscript", "int8")):
        out = tmp_path / f"{fmt}-{quantize}"
        run_cli("framework.export", [str(run_dir), "--format", fmt, "--out", str(out),
                                     *(["--quantize", quantize] if quantize else [])], cwd=tmp_path)
        parity = json.loads((out / "artifact.json").read_text())["parity"]
        if quantize is None:
            assert parity["max_abs_diff"] <= 1e-4 and parity["exported_cer"] == parity["pytorch_cer"], (fmt, parity)
    audio = sorted((data_dir / "tones-tiny" / "test").glob("*.wav"))[:2]
    from_run = run_cli("framework.transcribe", [str(run_dir), *map(str, audio)], cwd=tmp_path).stdout
    artifact = subprocess.run([sys.executable, str(tmp_path / "onnx-None" / "inference.py"), *map(str, audio)],
                              cwd=tmp_path, env=isolated_env(), capture_output=True, text=True, check=True).stdout
    assert [line.split("\t")[1] for line in from_run.splitlines()] == \
        [line.split("\t")[1] for line in artifact.splitlines()], (from_run, artifact)


@pytest.mark.slow
def test_a_classifier_exports_with_its_accuracy(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    run_cli("framework.train", ["recipe=image_classification", f"dataset.root={data_dir}/digits-tiny",
                                "dataset.prepare.splits={train:200,valid:50,test:50}", "trainer.max_epochs=1",
                                "batch_size=32", "model.widen_factor=1", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    for fmt in ("torchscript", "onnx"):
        run_cli("framework.export", [str(run_dir), "--format", fmt], cwd=tmp_path)
        parity = json.loads((run_dir / "export" / fmt / "artifact.json").read_text())["parity"]
        assert parity["exported_accuracy"] == parity["pytorch_accuracy"] == run_result(run_dir)["metrics"]["test_accuracy"]


# ------------------------------------------------------------ long-audio transcription
def long_recording(path, wavs: list, seconds_between: float = 0.6) -> float:
    """The files one after another with silence (a -60 dBFS noise floor) between them."""
    rng = np.random.default_rng(0)
    pieces = []
    for wav in wavs:
        audio, rate = soundfile.read(str(wav), dtype="float32")
        pieces += [audio, rng.normal(0, 1e-3, int(seconds_between * rate)).astype(np.float32)]
    audio = np.concatenate(pieces)
    soundfile.write(str(path), audio, rate)
    return len(audio) / rate


def transcribe_json(source, files, tmp_path, *options) -> list[dict]:
    out = run_cli("framework.transcribe", [str(source), *map(str, files), "--format", "json", *options],
                  cwd=tmp_path).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_chunked_transcription_equals_one_pass_over_the_whole_recording(train_cli, tmp_path, data_dir):
    # global normalisation: with features.normalize=utterance each chunk is normalised with statistics of
    # its own (not the whole recording's), which changes the outputs by design
    _, run_dir = train_cli("trainer.max_epochs=1", "features.normalize=global")
    wavs = sorted((data_dir / "tones-tiny" / "test").glob("*.wav"))
    recording = tmp_path / "long.wav"
    duration = long_recording(recording, wavs * 2)  # 32 utterances, about a minute
    whole, = transcribe_json(run_dir, [recording], tmp_path, "--chunk", "1000")
    chunked, = transcribe_json(run_dir, [recording], tmp_path, "--chunk", "8", "--overlap", "3", "--batch-size", "3")
    assert duration > 40 and abs(whole["duration"] - duration) < 1e-3
    assert whole["text"] and chunked["text"] == whole["text"]
    assert chunked["words"] == whole["words"]


def test_transcription_builds_no_optimizer(one_epoch_run, tmp_path, data_dir):
    """A torch optimizer imports torch._dynamo (a second of the command's start); a command
    that never trains builds none."""
    wav = sorted((data_dir / "tones-tiny" / "test").glob("*.wav"))[0]
    proc = run_cli("framework.transcribe", [str(one_epoch_run), str(wav)], cwd=tmp_path,
                   env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert proc.stdout.startswith(f"{wav}\t")
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "torch.nn" in imported and "torch._dynamo" not in imported


def test_one_bad_file_is_reported_and_the_others_transcribed(one_epoch_run, tmp_path, data_dir):
    good = sorted((data_dir / "tones-tiny" / "test").glob("*.wav"))[:2]
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00not audio at all")
    missing = tmp_path / "missing.wav"
    nan = tmp_path / "nan.wav"  # float samples, one of them NaN
    wave, rate = soundfile.read(good[0], dtype="float32")
    wave[len(wave) // 2] = np.nan
    soundfile.write(nan, wave, rate, subtype="FLOAT")
    proc = run_cli("framework.transcribe", [str(one_epoch_run), str(good[0]), str(broken), str(missing), str(nan),
                                            str(good[1])], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert [line.split("\t")[0] for line in proc.stdout.splitlines()] == [str(good[0]), str(good[1])]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors[0].startswith(f"error: {broken}: cannot read audio")
    assert errors[1] == f"error: {missing}: audio file not found"
    assert errors[2] == f"error: {nan}: contains NaN or infinite samples"
    assert errors[3] == "error: 3 of 5 files could not be transcribed (named above); the others were transcribed"
    assert "skip_bad" not in proc.stderr


def test_a_manifest_is_transcribed_by_entry(one_epoch_run, tmp_path, data_dir):
    corpus = data_dir / "tones-tiny"
    manifest = json.loads((corpus / "test.json").read_text())
    out = run_cli("framework.transcribe", [str(one_epoch_run), "--manifest", str(corpus / "test.json")],
                  cwd=tmp_path).stdout.splitlines()
    assert [line.split("\t")[0] for line in out] == list(manifest)


# ------------------------------------------------------------ word times and subtitles
WORD_LIST = ["the", "water", "people", "number", "first", "could", "write", "time", "look", "more", "which", "their"]


def spelled_recording(path, words: list[str], rate: int = 16000) -> list[tuple[str, float, float]]:
    """Words spelled in dual tones (the tones corpus's letters) with known times: (word, start, end)."""
    rng = np.random.default_rng(1)
    pieces, times, position = [], [], 0

    def add(samples):
        nonlocal position
        pieces.append(samples.astype(np.float32))
        position += len(samples)

    add(np.zeros(int(0.3 * rate)))
    for word in words:
        start = position / rate
        for letter in word:
            add(0.5 * letter_tone(letter, rng.uniform(0.09, 0.15), rate))
            add(np.zeros(int(rng.uniform(0.0, 0.02) * rate)))
        times.append((word, start, position / rate))
        add(np.zeros(int(rng.uniform(0.12, 0.22) * rate)))
    audio = np.concatenate(pieces)
    audio += rng.normal(0, 0.01, len(audio)).astype(np.float32)
    soundfile.write(str(path), audio, rate, subtype="PCM_16")
    return times


@pytest.fixture(scope="module")
def tones_model(tmp_path_factory, data_dir):
    """A tones model that spells most words right (about a minute of training on 2 cores)."""
    run_dir = tmp_path_factory.mktemp("tones-model") / "run"
    run_cli("framework.train", [f"dataset.root={data_dir}/tones-400", "dataset.prepare.splits={train:400,valid:40,test:40}",
                                "trainer.max_epochs=10", "trainer.num_threads=1", f"hydra.run.dir={run_dir}"],
            cwd=run_dir.parent)
    return run_dir


SRT_CUE = re.compile(r"(\d+)\n(\d\d:\d\d:\d\d,\d\d\d) --> (\d\d:\d\d:\d\d,\d\d\d)\n(.+)\n")
VTT_CUE = re.compile(r"(\d\d:\d\d:\d\d\.\d\d\d) --> (\d\d:\d\d:\d\d\.\d\d\d)\n(.+)\n")


def seconds(stamp: str) -> float:
    h, m, s = stamp.replace(",", ".").split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


@pytest.mark.slow  # trains its model
def test_word_times_fall_on_the_known_boundaries_and_subtitles_parse(tones_model, tmp_path):
    recording = tmp_path / "spelled.wav"
    truth = spelled_recording(recording, WORD_LIST * 5)  # 60 words, about 45 s: chunked at 10 s
    result, = transcribe_json(tones_model, [recording], tmp_path, "--chunk", "10", "--overlap", "2")
    import difflib

    hyp = [w["word"] for w in result["words"]]
    matcher = difflib.SequenceMatcher(a=[t[0] for t in truth], b=hyp, autojunk=False)
    errors = []
    for a, b, n in matcher.get_matching_blocks():
        for k in range(n):
            _, start, end = truth[a + k]
            word = result["words"][b + k]
            errors += [abs(word["start"] - start), abs(word["end"] - end)]
            assert 0 < word["confidence"] <= 1
    assert len(errors) >= 2 * 40, hyp  # most words recognised
    assert float(np.median(errors)) < 0.05, sorted(errors)
    assert result["text"] == " ".join(hyp)

    # the same chunks as the JSON above: other chunk edges may decide a borderline word otherwise
    srt = run_cli("framework.transcribe", [str(tones_model), str(recording), "--format", "srt", "--chunk", "10",
                                           "--overlap", "2"], cwd=tmp_path).stdout
    cues = SRT_CUE.findall(srt)
    assert cues and "\n".join(f"{i}\n{a} --> {b}\n{t}\n" for i, a, b, t in cues) == srt  # nothing else in it
    assert [int(c[0]) for c in cues] == list(range(1, len(cues) + 1))
    assert " ".join(c[3] for c in cues) == result["text"]
    ends = [(seconds(a), seconds(b)) for _, a, b, _ in cues]
    assert all(a < b for a, b in ends) and all(b1 <= a2 for (_, b1), (a2, _) in zip(ends, ends[1:]))

    out = tmp_path / "subtitles"
    run_cli("framework.transcribe", [str(tones_model), str(recording), "--format", "vtt", "--out", str(out), "--chunk",
                                     "10", "--overlap", "2"], cwd=tmp_path)
    vtt = (out / "spelled.wav.vtt").read_text()
    cues = VTT_CUE.findall(vtt)
    assert vtt == "WEBVTT\n\n" + "\n".join(f"{a} --> {b}\n{t}\n" for a, b, t in cues)
    assert " ".join(t for _, _, t in cues) == result["text"]


def test_subtitles_of_several_files_need_a_folder(one_epoch_run, tmp_path, data_dir):
    wavs = sorted((data_dir / "tones-tiny" / "test").glob("*.wav"))[:2]
    proc = run_cli("framework.transcribe", [str(one_epoch_run), *map(str, wavs), "--format", "srt"], cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2 and proc.stderr.strip().endswith("name a folder for them with --out DIR")



# ------------------------------------------------------------ recordings cut at pauses
def test_speech_spans_are_the_stretches_between_long_enough_quiet_runs():
    from framework.data.pauses import speech_spans

    loud, quiet = np.full(50, -20.0), np.full(40, -70.0)  # 0.5 s of speech, 0.4 s of room noise
    energies = np.concatenate([quiet, loud, quiet, loud, np.full(10, -70.0), loud, quiet])
    spans = speech_spans(energies, min_pause_s=0.3)  # the 0.1 s pause is no cut
    assert [(round(a, 3), round(b, 3)) for a, b in spans] == [(0.4, 0.9), (1.3, 2.4)]
    assert [(round(a, 3), round(b, 3)) for a, b in speech_spans(np.full(100, -20.0), 0.3)] == [(0.0, 1.0)]
    assert speech_spans(np.zeros(0), 0.3) == [(0.0, 0.0)]


def test_each_stretch_starts_at_its_onset_to_the_millisecond_and_keeps_its_tail():
    from framework.data.pauses import ONSET_LEAD_S, TAIL_S, refined

    fine = np.full(2000, -60.0)  # 1 ms frames of room noise; speech rising at 503 ms and at 1203 ms
    fine[503:950], fine[1203:1600] = -50.0, -50.0  # 10 dB above the noise: speech
    fine[1203:1205] = -58.0  # a soft onset, under the threshold
    spans = refined([(0.51, 0.95), (1.21, 1.6)], fine)  # the 10 ms frames' starts are late
    assert [round(a, 4) for a, _ in spans] == [round(0.503 - ONSET_LEAD_S, 4), round(1.205 - ONSET_LEAD_S, 4)]
    assert round(spans[0][1], 4) == round(1.205 - ONSET_LEAD_S, 4)  # the tail stops where the next starts
    assert round(spans[1][1], 4) == round(1.6 + TAIL_S, 4)
    # no quiet before it to measure: the start is kept; the tail never passes the end
    assert refined([(0.0, 1.9)], fine) == [(0.0, 2.0)]
    # a pause shorter than the search: the next stretch never starts inside the speech before
    close = refined([(0.51, 0.95), (0.96, 1.6)], fine)
    assert close[1][0] >= 0.95 and all(a < b for a, b in close)


def test_a_model_trained_with_quiet_padding_has_its_stretches_started_where_its_utterances_were(
        train_cli, tmp_path, data_dir):
    """The median quiet padding put before a training utterance (0.15 s of augment=quiet's
    0-0.3 s) before each onset: from the run directory and from its export alike."""
    from framework.data.pauses import ONSET_LEAD_S, lead_for, speech_spans_of

    _, run_dir = train_cli("augment=quiet", "trainer.max_epochs=1")
    wavs = sorted((data_dir / "tones-tiny" / "test").glob("*.wav"))[:4]
    recording = tmp_path / "long.wav"
    long_recording(recording, wavs, seconds_between=1.0)
    trimmed = speech_spans_of(str(recording), None, None, 0.3)
    padded = speech_spans_of(str(recording), None, None, 0.3, 0.15)
    assert lead_for(0.15) == 0.15 and lead_for(0.0) == ONSET_LEAD_S
    for (a, _), (q, _) in zip(trimmed[1:], padded[1:]):  # the first file starts at 0: nothing to lead with
        assert q == pytest.approx(a + ONSET_LEAD_S - 0.15, abs=1e-3)
    segments = tmp_path / "segments.jsonl"
    segments.write_text("".join(json.dumps({"audio_filepath": str(recording), "offset": a, "duration": b - a,
                                            "text": "x"}) + "\n" for a, b in padded))
    alone = " ".join(a["text"] for a in transcribe_json(run_dir, [], tmp_path, "--manifest", str(segments)) if a["text"])
    split, = transcribe_json(run_dir, [recording], tmp_path, "--split-at-pauses", "0.3")
    assert split["text"] == alone
    run_cli("framework.export", [str(run_dir), "--format", "torchscript"], cwd=tmp_path)
    artifact = run_dir / "export" / "torchscript"
    assert json.loads((artifact / "artifact.json").read_text())["stretch_lead_s"] == 0.15
    exported, = transcribe_json(artifact, [recording], tmp_path, "--split-at-pauses", "0.3")
    assert exported["text"] == alone


def test_stretch_times_stay_on_the_clock_at_44_1_khz(tmp_path):
    """1 ms is 44.1 samples at 44.1 kHz: frames of 44 samples, counted as such."""
    from framework.data.pauses import speech_spans_of

    rate, rng = 44100, np.random.default_rng(0)
    wave = rng.normal(0.0, 1e-3, 60 * rate).astype(np.float32)  # a minute of room noise
    for start in (10.0, 30.0, 55.0):  # a second of tone at each
        n = np.arange(rate)
        wave[int(start * rate): int(start * rate) + rate] += (0.3 * np.sin(2 * np.pi * 440 * n / rate)).astype(np.float32)
    path = tmp_path / "long.wav"
    soundfile.write(path, wave, rate)
    starts = [a for a, _ in speech_spans_of(str(path), None, None, 0.3)]
    assert len(starts) == 3 and all(abs(a - t) < 0.01 for a, t in zip(starts, (10.0, 30.0, 55.0))), starts


def test_split_at_pauses_transcribes_each_stretch_with_times_from_the_file(one_epoch_run, tmp_path, data_dir):
    from framework.data.pauses import TAIL_S, speech_spans_of

    wavs = sorted((data_dir / "tones-tiny" / "test").glob("*.wav"))[:4]
    recording = tmp_path / "long.wav"
    duration = long_recording(recording, wavs, seconds_between=1.0)
    spans = speech_spans_of(str(recording), None, None, 0.3)
    assert len(spans) == len(wavs)  # one stretch per file: the pauses between them found
    for (a, b), wav, start in zip(spans, wavs, np.cumsum([0.0] + [soundfile.info(str(w)).duration + 1.0 for w in wavs])):
        assert start - 0.02 <= a and b <= start + soundfile.info(str(wav)).duration + TAIL_S + 0.02
    # the same stretches as manifest segments, each transcribed alone
    segments = tmp_path / "segments.jsonl"
    segments.write_text("".join(json.dumps({"audio_filepath": str(recording), "offset": a, "duration": b - a,
                                            "text": "x"}) + "\n" for a, b in spans))
    alone = transcribe_json(one_epoch_run, [], tmp_path, "--manifest", str(segments))
    split, = transcribe_json(one_epoch_run, [recording], tmp_path, "--split-at-pauses", "0.3")
    assert abs(split["duration"] - duration) < 1e-3
    assert split["text"] == " ".join(a["text"] for a in alone if a["text"])
    shifted = [(w["word"], round(w["start"] + a, 3), round(w["end"] + a, 3)) for seg, (a, _) in zip(alone, spans)
               for w in seg["words"]]
    assert [w["word"] for w in split["words"]] == [w for w, _, _ in shifted]
    for got, (_, start, end) in zip(split["words"], shifted):  # times count from the file's start
        assert abs(got["start"] - start) <= 2e-3 and abs(got["end"] - end) <= 2e-3
    proc = run_cli("framework.transcribe", [str(one_epoch_run), str(recording), "--split-at-pauses", "0"],
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        "error: --split-at-pauses 0.0: give the shortest pause to cut at, in seconds (e.g. 0.3)")
