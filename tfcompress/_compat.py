"""The one place that chooses Keras for tfcompress.

Hugging Face Transformers 4.x TF models and TFMOT 0.8 are written against Keras 2, which on
TensorFlow >= 2.16 lives in the separate ``tf_keras`` package. TensorFlow picks the Keras it exposes
as ``tf.keras`` when it is first imported, from ``TF_USE_LEGACY_KERAS``; so this module sets that
variable *before* importing TensorFlow, and every other tfcompress module imports ``tf`` and
``keras`` from here. Mixing Keras 3 objects (``import keras``) with tf_keras ones fails in obscure
ways deep inside TFMOT; :func:`check_keras_object` turns that into a clear error.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ start-up chatter out of logs
_previous = os.environ.get("TF_USE_LEGACY_KERAS")
if "tensorflow" in sys.modules and _previous not in ("1", "true", "True"):
    # TensorFlow is already imported with Keras 3 as tf.keras; setting the variable now is too late.
    import tensorflow as _tf_probe  # noqa: E402

    if not _tf_probe.keras.__name__.startswith("tf_keras"):
        raise ImportError(
            "tfcompress needs tf.keras to be tf_keras (Keras 2), but TensorFlow was imported before "
            "tfcompress with Keras 3 as tf.keras. Import tfcompress first, or set "
            "TF_USE_LEGACY_KERAS=1 in the environment before importing TensorFlow."
        )
os.environ["TF_USE_LEGACY_KERAS"] = "1"

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

if not tf.keras.__name__.startswith("tf_keras"):  # pragma: no cover - guarded above
    raise ImportError(f"tf.keras resolved to {tf.keras.__name__!r}, expected tf_keras")


def check_keras_object(obj, what: str = "object") -> None:
    """Raise TypeError if ``obj`` is a Keras 3 object rather than a tf_keras one.

    Args:
        obj: a layer, model, optimizer or loss.
        what: how to name ``obj`` in the message (e.g. ``"model"``).
    """
    module = type(obj).__module__ or ""
    if module == "keras" or module.startswith("keras."):
        raise TypeError(
            f"{what} is a Keras 3 object ({type(obj).__module__}.{type(obj).__name__}); tfcompress, "
            "Hugging Face TF models and TFMOT use tf_keras (Keras 2). Build it with "
            "`from tfcompress._compat import keras` instead of `import keras`."
        )


def versions() -> dict[str, str]:
    """Versions of the stack, for `tfcompress env`, reports and benchmark records."""
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for dist in (
        "tensorflow", "tf-keras", "tensorflow-model-optimization", "transformers",
        "ai-edge-litert", "numpy", "safetensors", "seqeval", "scikit-learn", "mediapipe",
    ):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out



__all__ = ["tf", "keras", "check_keras_object", "versions"]
