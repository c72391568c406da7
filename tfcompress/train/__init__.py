"""Training: the Trainer (one custom step with hooks) and its TensorBoard tracking."""
from tfcompress.train.tracking import Tracker  # noqa: F401
from tfcompress.train.trainer import Hook, Trainer, WarmupLinearDecay, set_mixed_precision  # noqa: F401
