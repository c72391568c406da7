"""One module per stage; importing this package registers them all in ``runner.STAGES``."""
from tfcompress.pipeline.stages import distill, evaluate, export, finetune, prune, qat, release, teacher, trim  # noqa: F401
