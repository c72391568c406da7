"""Evaluation: metrics, the LiteRT runtime, the parity gate and artifact records."""
from tfcompress.evaluate.gate import artifact_record, parity_gate  # noqa: F401
from tfcompress.evaluate.metrics import (  # noqa: F401
    agreement,
    compute_metrics,
    evaluate,
    predict_logits,
    primary_metric,
)
from tfcompress.evaluate.runtime import TFLiteModel, float_ops, op_names, sizes  # noqa: F401
