"""Stage chaining with resume: see :mod:`tfcompress.pipeline.runner`."""
from tfcompress.pipeline import stages  # noqa: F401  (registers every stage)
from tfcompress.pipeline.runner import STAGES, Context, run, stage  # noqa: F401
