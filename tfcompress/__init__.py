"""tfcompress: fine-tune, prune, quantize, distil and export Hugging Face TF encoders to TFLite.

The package follows the data flow: ``data`` -> ``models`` -> ``train`` -> ``compress`` (prune, distill,
qat) -> ``export`` -> ``evaluate`` -> ``release``; ``pipeline`` chains them as resumable stages and
``cli`` is the ``tfcompress`` command. Importing tfcompress selects tf_keras (Keras 2) for TensorFlow
before anything else imports it (:mod:`tfcompress._compat`).

Example::

    import tfcompress as tfc

    tokenizer = tfc.load_tokenizer()                       # packaged all-MiniLM-L6-v2
    train = tfc.read_text_classification("train.tsv")       # header: sentence<TAB>label
    model = tfc.load_model(labels=train.label_names)
    trainer = tfc.Trainer(model, "sequence", tfc.TrainConfig(epochs=1), "runs/mine/finetune")
    trainer.fit(tfc.encode(tokenizer, train, max_length=64))
    tfc.prune.apply(model, tfc.PruneConfig(final_sparsity=0.5), total_steps=1000)
"""
from tfcompress._compat import keras, tf, versions  # noqa: F401  (must come first: selects tf_keras)
from tfcompress.compress import distill, prune, qat
from tfcompress.config import DataConfig, DistillConfig, PruneConfig, QATConfig, RecipeConfig, TrainConfig
from tfcompress.data import DataError, EncodedData, encode, read_conll, read_text_classification
from tfcompress.evaluate import TFLiteModel, compute_metrics, evaluate, primary_metric
from tfcompress.export import to_tflite
from tfcompress.models import DEFAULT_MODEL, load_model, load_tokenizer, make_student, save_model
from tfcompress.train import Hook, Trainer

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL", "DataConfig", "DataError", "DistillConfig", "EncodedData", "Hook", "PruneConfig", "QATConfig",
    "RecipeConfig", "TFLiteModel", "TrainConfig", "Trainer", "compute_metrics", "distill", "encode", "evaluate",
    "keras", "load_model", "load_tokenizer", "make_student", "primary_metric", "prune", "qat", "read_conll",
    "read_text_classification", "save_model", "tf", "to_tflite", "versions",
]
