"""Writing an inference graph (:class:`framework.export.graph.Graph`) in one of the export
formats, optionally quantized to int8.

- ``onnx``: ``torch.onnx.export`` (its torch.export-based exporter), one ``.onnx`` file;
  int8 by ``onnxruntime.quantization.quantize_dynamic`` (weights int8, activations
  quantized per batch).
- ``torch_export``: ``torch.export`` saved as ``.pt2``; loaded with ``torch.export.load``.
- ``torchscript``: ``torch.jit.script`` saved as ``.ts``; int8 by torch's dynamic
  quantization of the Linear, GRU and LSTM layers.

The graph names its dynamic axes (batch and time for a model's inputs). torch.export checks
the example's sizes against 0 and 1 and keeps those checks as run-time assertions (an
exported program would then refuse a batch of one); as torch.onnx does, the capture reasons about sizes without them
(``backed_size_oblivious``) and the assertions left are removed, and the export's parity check
runs the artifact at batch sizes of one and more. The shortest batch tensor the graph is
captured for is recorded (``pad_to``): runners pad shorter batches, which changes no output.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from framework.errors import UserError
from framework.export.graph import Graph

FOLD_LIMIT = 1 << 22  # elements: constant weight computations up to this size are folded into the ONNX file
FORMATS = {"onnx": "model.onnx", "torch_export": "model.pt2", "torchscript": "model.ts"}
MISSING_ONNX = "the onnx format needs onnx, onnxscript and onnxruntime: pip install -e .[export]"


def check_format(fmt: str, quantize: str | None) -> None:
    """Refuses a format, a quantization or missing packages before any work is done."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: not a format; use one of {', '.join(FORMATS)}")
    if quantize not in (None, "int8"):
        raise UserError(f"--quantize {quantize}: not a quantization; use int8 (or leave it out for fp32)")
    if fmt == "torch_export" and quantize:
        raise UserError("--quantize int8 with --format torch_export: torch's dynamic quantization keeps its int8 "
                        "weights in packed objects that torch.export cannot save; use --format torchscript or onnx")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError:
            raise UserError(MISSING_ONNX) from None


def save(graph: Graph, fmt: str, path: Path, quantize: str | None = None) -> int:
    """Writes ``graph`` (its module in evaluation mode) to ``path``; returns the shortest time
    axis of a batch the written graph takes (0: any)."""
    with torch.no_grad():
        if fmt == "torchscript":
            fold_parametrizations(graph.module)
            module = quantize_dynamic(graph.module) if quantize else graph.module
            torch.jit.save(torch.jit.script(module), str(path))
        elif fmt == "torch_export":
            program = export_program(graph)
            torch.export.save(program, str(path))
            return min_batch_length(program)
        else:
            save_onnx(graph, path, quantize)
    return 0


def export_program(graph: Graph) -> torch.export.ExportedProgram:
    from torch._export.passes.remove_runtime_assertions import _RemoveRuntimeAssertionsPass

    with torch.fx.experimental._config.patch(backed_size_oblivious=True):  # as torch.onnx captures
        program = torch.export.export(graph.module, graph.example, dynamic_shapes=graph.dynamic,
                                      prefer_deferred_runtime_asserts_over_guards=True)
    _RemoveRuntimeAssertionsPass()(program.graph_module)
    program.graph_module.graph.eliminate_dead_code()
    program.graph_module.recompile()
    return program


def min_batch_length(program: torch.export.ExportedProgram) -> int:
    """The shortest time axis of the first input the exported program accepts (0: any, or an
    input without one, as a transducer's prediction network step takes)."""
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == program.graph_signature.user_inputs[0])
    if node.meta["val"].dim() < 2:
        return 0
    size = node.meta["val"].shape[1]
    if not isinstance(size, torch.SymInt):
        return int(size)
    constraint = program.range_constraints.get(size.node.expr)
    return int(constraint.lower) if constraint is not None else 0


def save_onnx(graph: Graph, path: Path, quantize: str | None) -> None:
    with quiet_onnx_tools():
        _save_onnx(graph, path, quantize)


@contextlib.contextmanager
def quiet_onnx_tools() -> Iterator[None]:
    """torch.onnx, onnxscript's optimizer and ONNX Runtime's quantization report their steps on
    loggers (the root one, for the quantization) and in warnings: some 200 lines an export
    under the framework's console at INFO. Their errors still show."""
    loggers = [logging.getLogger(name) for name in ("", "torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _save_onnx(graph: Graph, path: Path, quantize: str | None) -> None:
    import onnxscript.optimizer

    from framework.models.onnx_recurrence import TRANSLATIONS, onnx_recurrences

    with onnx_recurrences():  # GRU layers as ONNX's GRU operator, not a scan
        program = torch.onnx.export(graph.module, graph.example, dynamic_shapes=graph.dynamic, dynamo=True,
                                    input_names=list(graph.names), verbose=False,
                                    custom_translation_table=TRANSLATIONS)
        computed = graph.module(*graph.example)
    # torch.onnx rebuilds an LSTM's weights from its parameters at every run (a Concat), and folds
    # only inputs up to 8,192 elements: a larger LSTM's weights would then be computed, not
    # stored, and ONNX Runtime's int8 quantization leaves such an LSTM in fp32
    program.model = onnxscript.optimizer.optimize(program.model, input_size_limit=FOLD_LIMIT,
                                                  output_size_limit=FOLD_LIMIT)
    computed = computed if isinstance(computed, (tuple, list)) else (computed,)
    for value, tensor in zip(program.model.graph.outputs, computed):
        # torch.onnx declares an LSTM's final states with one axis too many ([L, 1, B, H]), which
        # ONNX Runtime warns about at every session: such an output's shape is left to inference
        if value.shape is not None and len(value.shape) != tensor.dim():
            value.shape = None
    if not quantize:
        program.save(str(path), external_data=False)
        return
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as onnx_quantize_dynamic

    fp32 = path.with_name(f".{path.name}.fp32")
    program.save(str(fp32), external_data=False)
    # the feature extraction stays fp32: int8 activations cannot hold a power spectrum's range
    features = {n.name for n in program.model_proto.graph.node
                if any(p.key == "namespace" and "FeatureGraph" in p.value for p in n.metadata_props)}
    # the model's own matrix products, where it has any (its FeatureGraph excluded): ONNX Runtime's
    # ConvInteger ran 9x slower than its fp32 Conv in ds2_small, and there is no int8 GRU. A model
    # with none (a convolutional classifier, whose last layer is a Gemm) gets int8 convolutions.
    model_ops = {n.op_type for n in program.model_proto.graph.node if n.name not in features}
    op_types = ["MatMul", "LSTM"] if model_ops & {"MatMul", "LSTM"} else ["Conv"]
    try:
        onnx_quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8, nodes_to_exclude=sorted(features),
                              op_types_to_quantize=op_types, extra_options={"EnableSubgraph": True})
    finally:
        os.remove(fp32)


def fold_parametrizations(graph: nn.Module) -> None:
    """Parametrized weights (wav2vec2's weight-normed positional convolution) replaced, in
    place, by the weights they compute: the same outputs. Scripting does it to what it
    scripts (torchaudio's ``__prepare_scriptable__``), and on a deep copy that breaks the
    original, whose parametrized class the copy shares."""
    from torch.nn.utils import parametrize

    for module in graph.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)


def quantize_dynamic(graph: nn.Module) -> nn.Module:
    """int8 weights for the Linear, GRU and LSTM layers (torch's dynamic quantization)."""
    import copy

    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(graph), {nn.Linear, nn.GRU, nn.LSTM},
                                                  dtype=torch.qint8)
