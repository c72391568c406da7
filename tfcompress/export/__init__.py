"""Export: graph rewrites for quantization, TFLite conversion, selective int8."""
from tfcompress.export.selective import layer_errors, select_float_nodes, selective_int8  # noqa: F401
from tfcompress.export.tflite import (  # noqa: F401
    ExportConfig,
    FlexOpsError,
    check_builtin_only,
    representative_features,
    serving_function,
    to_tflite,
    to_tflite_from_qat,
)
