"""The ``int4`` export: int4 weights in the matmuls and the word-embedding table, float activations.

The stock converter's ``dynamic`` artifact stores int8 weights. Google's LiteRT quantizer (PyPI
``ai-edge-quantizer``, ``pip install -r requirements-integer.txt``) stores them in int4, symmetric, with
one scale per block of ``block_size`` input weights (its ``dynamic_wi4b*`` recipes; 0 = one per output
channel, ``dynamic_wi4c``): activations stay float and are quantized on the fly by the kernels, as in
``dynamic``. On the 6-layer SST-2 student (2,693 test sentences, seq 44; benchmarks/RESULTS.md,
2026-12-02) blocks of 128 kept its Keras accuracy (0.9142 vs 0.9138) where per-channel scales lost
0.56 pt, for 6 % more gzip and -7 to +20 % time (noisy, shared CPU); blocks of 32 cost 20 % more
gzip and ~50 % more time. For the file to shrink, the word-embedding table (half of
MiniLM-L6's 22.7 M weights) must be int4 too: the converter makes HF's lookup a GATHER, which the
quantizer leaves float, so the model is traced through :func:`tfcompress.export.rewrites.embedding_lookups`
and the converter emits EMBEDDING_LOOKUP, whose table the recipe quantizes. The position and
token-type tables, biases and LayerNorm stay float (small).

The result is checked from its graph before anything is written: an EMBEDDING_LOOKUP with an int4
table, no FULLY_CONNECTED with a float kernel and every int4 weight at the block size asked for, or
:class:`Int4ExportError` naming what is not.

Example:
    >>> content = to_int4_tflite(model, seq_length=64, output_path="out/export/int4.tflite")
    >>> weight_storage(content)  # 4-layer SST-2 student: {"int4": 18799104, "float32": 38409, "int32": 26}
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np

from tfcompress._compat import tf
from tfcompress.config.constants import DEFAULT_INT4_BLOCK_SIZE, INT4_BLOCK_SIZES
from tfcompress.config.recipe import check_int4_block_size
from tfcompress.errors import ArtifactError, ConfigError
from tfcompress.evaluate.integer import read_graph
from tfcompress.export.rewrites import embedding_lookups
from tfcompress.export.tflite import check_builtin_only, convert, serving_function
from tfcompress.models.facts import model_input_names
from tfcompress.utils import atomic_write_bytes, get_logger

log = get_logger("export")
WEIGHT_OPS = ("FULLY_CONNECTED", "EMBEDDING_LOOKUP")  # the ops whose constant operand the recipe quantizes


class Int4ExportError(ArtifactError, RuntimeError):
    """The quantized graph kept a matmul kernel or the word-embedding table in float (named in the message)."""


def weight_storage(model) -> dict[str, int]:
    """Parameters of a ``.tflite`` (path or bytes) by storage type: ``{"int4": n, "int8": n, "float32": n}``.

    Every constant tensor an op reads counts once (biases, LayerNorm, the position table...), so the
    ``int4`` share is the share of the weights stored in four bits.
    """
    graph = read_graph(model)
    seen, counts = set(), Counter()
    for op in graph["ops"]:
        for tensor in op["inputs"]:
            if tensor["constant"] and tensor["index"] not in seen:
                seen.add(tensor["index"])
                counts[tensor["dtype"]] += int(np.prod(tensor["shape"])) if tensor["shape"] else 1
    return dict(counts)


def _weights(ops: list[dict]):
    """``(op, constant weight tensor)`` of every FULLY_CONNECTED (kernel) and EMBEDDING_LOOKUP (table)."""
    for op in ops:
        weight = op["inputs"][1] if op["op"] in WEIGHT_OPS and len(op["inputs"]) > 1 else None  # FC: (x, kernel)
        if weight is not None and weight["constant"]:
            yield op, weight


def _not_int4(content: bytes, block_size: int) -> list[str]:
    """The weights that stayed float or got another block size (``"OP tensor-name (...)"``), and a missing
    lookup."""
    ops = read_graph(content)["ops"]
    left = []
    for op, weight in _weights(ops):
        if weight["dtype"] != "int4" or weight.get("block_size", 0) != block_size:
            left.append(f"{op['op']} {weight['name']} ({weight['dtype']}, {weight['shape']}, "
                        f"block {weight.get('block_size', 0)})")
    if not any(op["op"] == "EMBEDDING_LOOKUP" for op in ops):
        left.append("no EMBEDDING_LOOKUP: the word embeddings are still a GATHER")
    return left


def int4_recipe(block_size: int = DEFAULT_INT4_BLOCK_SIZE) -> list[dict]:
    """The LiteRT quantizer's dynamic int4 recipe with one scale per ``block_size`` weights (0: per channel)."""
    from ai_edge_quantizer import recipe  # optional dependency (requirements-integer.txt)

    check_int4_block_size(block_size)
    rules = recipe.dynamic_wi4c_afp32()
    if block_size:
        for rule in rules:
            rule["op_config"]["weight_tensor_config"]["granularity"] = f"BLOCKWISE_{block_size}"
    return rules


def check_block_size(float_content: bytes, block_size: int) -> None:
    """Every kernel's input width and the word-embedding width must be a multiple of ``block_size``."""
    if not block_size:
        return
    widths = {weight["shape"][-1] for _, weight in _weights(read_graph(float_content)["ops"])}
    odd = sorted(width for width in widths if width % block_size)
    if odd:
        fits = [size for size in INT4_BLOCK_SIZES if size and math.gcd(*widths) % size == 0] or [0]
        raise ConfigError(f"export.int4_block_size={block_size}: the model's weight rows of width {odd} are "
                          f"not a multiple of it; use one of {fits} (0: one scale per channel)")


def quantize_weights(float_content: bytes, block_size: int = DEFAULT_INT4_BLOCK_SIZE) -> bytes:
    """Apply the LiteRT quantizer's dynamic int4 recipe to a float ``.tflite``; verify the result."""
    from ai_edge_quantizer import quantizer  # optional dependency (requirements-integer.txt)

    rules = int4_recipe(block_size)
    check_block_size(float_content, block_size)
    engine = quantizer.Quantizer(bytearray(float_content))
    engine.load_quantization_recipe(rules)
    content = bytes(engine.quantize(enable_progress_report=False).quantized_model)
    left = _not_int4(content, block_size)
    if left:
        wanted = f"blocks of {block_size}" if block_size else "per channel"
        raise Int4ExportError(f"the int4 recipe left {len(left)} weight(s) outside int4 {wanted}: "
                              + "; ".join(left[:10]))
    return content


def to_int4_tflite(model, seq_length: int = 128, input_names: Sequence[str] | None = None,
                   output_path=None, allow_flex_ops: bool = False,
                   block_size: int = DEFAULT_INT4_BLOCK_SIZE) -> bytes:
    """Export ``model`` with int4 weights (matmul kernels and word embeddings) and float activations.

    Args:
        model: a built HF TF encoder (strip pruning wrappers first).
        seq_length: fixed sequence length of the signature.
        input_names: override the signature inputs.
        output_path: if given, the bytes are written there atomically (only once verified).
        allow_flex_ops: permit SELECT_TF_OPS (artifacts then need the flex delegate).
        block_size: weights per int4 scale along each kernel's input (32, 64, 128, 256; a divisor of
            the hidden and intermediate widths), or 0 for one scale per output channel.

    Returns:
        The flatbuffer bytes.

    Raises:
        Int4ExportError: a kernel or the word-embedding table stayed float; nothing is written.
        ConfigError: a block size that is not one of those, or does not divide the model's widths.
        NotImplementedError: the model has no embeddings layer the lookup rewrite knows.
    """
    check_int4_block_size(block_size)  # before the trace and conversion
    names = list(input_names or model_input_names(model))
    undo = embedding_lookups(model)
    try:
        concrete = serving_function(model, seq_length, names)
    finally:
        undo()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS] + (
        [tf.lite.OpsSet.SELECT_TF_OPS] if allow_flex_ops else [])
    content = quantize_weights(convert(converter), block_size)
    check_builtin_only(content, allow_flex_ops=allow_flex_ops)
    if output_path is not None:
        atomic_write_bytes(output_path, content)
        storage = weight_storage(content)
        log.info("wrote %s (int4 weights, %s: %.1f M of %.1f M parameters; seq %d, %.1f MB)", output_path,
                 f"blocks of {block_size}" if block_size else "per channel", storage.get("int4", 0) / 1e6,
                 sum(storage.values()) / 1e6, seq_length, len(content) / 1e6)
    return content
