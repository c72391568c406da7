#!/usr/bin/env python
"""SST-2 sentiment: fine-tune the packaged all-MiniLM-L6-v2 and report test accuracy.

Command (full data, the acceptance run)::

    python recipes/sst2.py --output-dir runs/sst2

Data: ``../shared/data/sst2`` (train.tsv 60,614 sentences for training, validation.tsv 6,735 for
checkpoint selection, test.tsv = the 872-sentence GLUE dev set for the reported number).
Expected on a 2-core CPU: see the recipe table in README.md (numbers measured by this command).
Smoke mode, seconds to a minute, same code path::

    python recipes/sst2.py --smoke --output-dir runs/sst2-smoke
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tfcompress.pipeline import DataConfig, RecipeConfig, recipe_main  # noqa: E402
from tfcompress.train import TrainConfig  # noqa: E402

DEFAULTS = RecipeConfig(
    name="sst2",
    task="sequence",
    output_dir="runs/sst2",
    # SST-2's 99th-percentile length is well under 64 MiniLM tokens; batches are padded to their own
    # longest sentence, so max_length only caps the rare long one.
    data=DataConfig(text_column="sentence", label_column="label", max_length=64),
    # 60,614 / 32 = 1,895 steps per epoch; evaluate on validation twice an epoch.
    train=TrainConfig(epochs=2, batch_size=32, learning_rate=1e-4, warmup_ratio=0.06, eval_every=950,
                      log_every=50, checkpoint_every=200),
    stages=["finetune"],
)
FILES = {"train": "train.tsv", "eval": "validation.tsv", "test": "test.tsv"}

if __name__ == "__main__":
    recipe_main(DEFAULTS, FILES, "sst2", __doc__)
