"""Configuration: typed dataclasses for every stage, and the constants they share (one source each)."""
from tfcompress.config.constants import (  # noqa: F401
    DEFAULT_ATTENTION_MASK_FLOOR,
    DEFAULT_INT8_FLOAT_OPS,
    DEFAULT_OUTLIER_PERCENTILE,
    EXAMPLE_INDEX_KEY,
    EXPORT_MODES,
    IGNORE_INDEX,
    LAYER_NORM_OPS,
    MODEL_STAGES,
    OUTPUT_NAME,
    SIGNATURE_KEY,
    STAGE_ORDER,
    TASKS,
    ExportMode,
)
from tfcompress.config.recipe import (  # noqa: F401
    DataConfig,
    EvaluateStageConfig,
    ExportStageConfig,
    RecipeConfig,
    ReleaseStageConfig,
    StudentConfig,
    TeacherStageConfig,
    TrimStageConfig,
)
from tfcompress.config.training import DistillConfig, PruneConfig, QATConfig, TrainConfig  # noqa: F401
