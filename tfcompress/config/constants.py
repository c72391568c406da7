"""Constants shared across the package, each defined once."""
from __future__ import annotations

import enum

IGNORE_INDEX = -100  # label of positions the losses and metrics skip (special tokens, sub-tokens)
TASKS = ("sequence", "token")


class ExportMode(str, enum.Enum):
    """TFLite artifact kinds: float, half-float weights, int8 weights, full integer, int16 activations, int4 weights."""

    FP32 = "fp32"
    FP16 = "fp16"
    DYNAMIC = "dynamic"
    INT8 = "int8"
    INT16X8 = "int16x8"
    INTEGER = "integer"  # mixed int8/int16, integer-only, by the LiteRT quantizer (export.litert_quantizer)
    INT4 = "int4"  # int4 weights (matmuls, word embeddings), float activations, by the LiteRT quantizer (export.int4)


EXPORT_MODES = tuple(mode.value for mode in ExportMode)
MODEL_STAGES = ("finetune", "distill", "prune", "trim", "qat")  # stages that save a model for the next one
STAGE_ORDER = ("teacher", "finetune", "distill", "prune", "trim", "qat", "export", "evaluate", "release")
QUANTIZED_ACTIVATION_MODES = ("int8", "int16x8")  # the stock converter's calibrated modes
LITERT_QUANTIZER_MODES = ("integer", "int4")  # made by the optional LiteRT quantizer (requirements-integer.txt)
# The int4 export's weights per scale (0: one per output channel). 128 kept the 6-layer SST-2 student's
# accuracy where per-channel scales lost 0.56 pt (benchmarks/RESULTS.md, 2026-12-02).
INT4_BLOCK_SIZES = (0, 32, 64, 128, 256)
DEFAULT_INT4_BLOCK_SIZE = 128
IO_TYPES = ("float", "int8")
SIGNATURE_KEY = "serving_default"
# release.tflite_metadata: "auto" packs MediaPipe metadata where the artifact fits and mediapipe is
# installed (else the manifest says why not), "required" makes either an error, "off" never packs it.
TFLITE_METADATA_MODES = ("auto", "required", "off")
OUTPUT_NAME = "logits"
# Floor for the additive attention mask in quantized modes. HF BERT adds -10000 at padded keys; a
# masked key's weight after softmax is exp(floor - (max_score - score)) relative to the row's
# largest, so -30 leaves < 1e-13 per masked key (float outputs unchanged to ~1e-6) while the
# pre-softmax range calibration sees shrinks from ~10,000 to ~30 + the real score spread.
DEFAULT_ATTENTION_MASK_FLOOR = -30.0


# Ops of LayerNorm (as rewritten by export.rewrites.explicit_layer_norms) and of the residual adds that
# feed it. Keeping these in float (``denylisted_ops=LAYER_NORM_OPS``) is what makes int8 MiniLM
# usable: the residual stream has outlier channels (range [-9, 222] after layer 0 of MiniLM-L6,
# step 0.9 in int8 for values that are mostly within +-2), and the LayerNorm variance/rsqrt chain
# loses 35-60 quantization steps per op (measured with QuantizationDebugger). With this list
# alone the matmuls (FULLY_CONNECTED, BATCH_MATMUL), SOFTMAX and GELU stay int8; the pipeline's
# default (ExportStageConfig.int8_float_ops) also keeps BATCH_MATMUL, SOFTMAX and GELU in float, for
# which XNNPACK has no int8 kernels (CPU latency; benchmarks/RESULTS.md, 2026-11-25).
LAYER_NORM_OPS = ("MEAN", "RSQRT", "ABS", "SQUARED_DIFFERENCE", "SUB", "MUL", "ADD")

# The pipeline's int8 artifact keeps these in float by default: the LayerNorm/residual ops, and the
# attention matmuls, SOFTMAX and GELU (XNNPACK has no int8 kernels for those three).
DEFAULT_INT8_FLOAT_OPS = LAYER_NORM_OPS + ("BATCH_MATMUL", "SOFTMAX", "GELU")
DEFAULT_OUTLIER_PERCENTILE = 90.0
# The integer export's int8 x int8 op types (nearly all the MACs); every other op gets int16 activations.
DEFAULT_INTEGER_INT8_OPS = ("FULLY_CONNECTED", "BATCH_MATMUL")
# A trained dense kernel has no exact zeros; a pruned one (prune.strip) has >= its sparsity. The
# same 1 % rule as prune.sparsity_report decides which kernels count as pruned.
PRUNED_ZERO_FRACTION = 0.01
SCHEDULES = ("polynomial", "constant")
STRUCTURES = ("unstructured", "2:4")
PRUNE_DURING = ("prune", "distill")  # the stage that trains under the pruning schedule
QAT_TARGETS = ("int8", "integer")  # QATConfig.target: the Dense-only int8 artifact, or the integer export's graph
# Derived frequency: about this many mask updates between begin_step and end_step. Zhu & Gupta
# (arXiv:1710.01878) prune in many small steps; 20 updates of a cubic schedule move the sparsity by
# at most ~15 points at a time (the first step: 1 - (1 - 1/20)^3 = 0.14 of the way).
DERIVED_MASK_UPDATES = 20
WEIGHT_FILE_PATTERNS = ("*.h5", "*.safetensors", "*.tflite", "*.npz")


EXAMPLE_INDEX_KEY = "example_index"  # feature key carrying each example's row in the training data
TEMPERATURE_SCHEDULES = ("constant", "linear")

# Fields that existed once, with what replaces them (named in the error of a --set that uses one).
REMOVED_FIELDS = {
    "export.int8_select_budget": "the debugger-driven selective int8 search was removed: the default int8 artifact "
                                 "keeps its float ops by rule; for accelerators export 'integer'",
    "export.int8_select_examples": "removed with export.int8_select_budget",
}
