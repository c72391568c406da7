"""Export: graph rewrites for quantization, TFLite conversion, the LiteRT quantizer's integer artifact, metadata."""
from tfcompress.export.tflite import (  # noqa: F401
    ExportConfig,
    FlexOpsError,
    check_builtin_only,
    representative_features,
    serving_function,
    to_tflite,
    to_tflite_from_qat,
)
