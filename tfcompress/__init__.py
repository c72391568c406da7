"""tfcompress: fine-tune, prune, quantize, distil and export Hugging Face TF encoders to TFLite.

Importing tfcompress selects tf_keras (Keras 2) for TensorFlow before anything else imports it;
see :mod:`tfcompress._compat`.
"""
from tfcompress._compat import keras, tf, versions  # noqa: F401  (must come first)
from tfcompress.data import (
    DataError,
    EncodedData,
    encode,
    read_conll,
    read_text_classification,
)
from tfcompress.metrics import compute_metrics, evaluate, primary_metric
from tfcompress.models import (
    DEFAULT_MODEL,
    ModelLoadError,
    ModelNotFoundError,
    encoder_dense_layers,
    find_layers,
    load_model,
    load_tokenizer,
    replace_layer,
    save_model,
)
from tfcompress import distill, export, heads, prune, quantize, runtime, vocab  # noqa: F401  (technique modules)
from tfcompress.distill import DistillConfig, Distiller, make_student
from tfcompress.export import to_tflite
from tfcompress.pipeline import DataConfig, RecipeConfig, run
from tfcompress.prune import PruneConfig
from tfcompress.quantize import QATConfig
from tfcompress.runtime import TFLiteModel
from tfcompress.report import Report
from tfcompress.train import Hook, TrainConfig, Trainer

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL", "DataConfig", "DistillConfig", "Distiller", "PruneConfig", "QATConfig", "TFLiteModel",
    "distill", "export", "heads", "make_student", "prune", "quantize", "runtime", "to_tflite", "vocab", "DataError", "EncodedData", "Hook", "ModelLoadError", "ModelNotFoundError",
    "RecipeConfig", "Report", "TrainConfig", "Trainer", "compute_metrics", "encode", "encoder_dense_layers",
    "evaluate", "find_layers", "load_model", "load_tokenizer", "primary_metric", "read_conll",
    "read_text_classification", "replace_layer", "run", "save_model", "versions",
]
