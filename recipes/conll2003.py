#!/usr/bin/env python
"""CoNLL-2003 NER: fine-tune the packaged all-MiniLM-L6-v2 as a token classifier; entity-level F1.

Command (full data, the acceptance run)::

    python recipes/conll2003.py --output-dir runs/conll2003

Data: ``../shared/data/conll2003`` (train.txt 14,041 sentences, dev.txt 3,250 for checkpoint
selection, test.txt 3,453 for the reported number). F1 is seqeval's strict entity-level F1
(IOB2), never token-level F1 with ``O``. The model is uncased, which costs NER some accuracy.
Expected on a 2-core CPU: see the recipe table in README.md (numbers measured by this command).
Smoke mode::

    python recipes/conll2003.py --smoke --output-dir runs/conll2003-smoke
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tfcompress.pipeline import DataConfig, RecipeConfig, recipe_main  # noqa: E402
from tfcompress.train import TrainConfig  # noqa: E402

DEFAULTS = RecipeConfig(
    name="conll2003",
    task="token",
    output_dir="runs/conll2003",
    # 128 sub-tokens keep all but a handful of CoNLL sentences whole (the count is logged).
    data=DataConfig(max_length=128),
    # 14,041 / 32 = 439 steps per epoch.
    train=TrainConfig(epochs=3, batch_size=32, learning_rate=1e-4, warmup_ratio=0.1, eval_every=0,
                      log_every=50, checkpoint_every=200),
    stages=["finetune"],
)
FILES = {"train": "train.txt", "eval": "dev.txt", "test": "test.txt"}

if __name__ == "__main__":
    recipe_main(DEFAULTS, FILES, "conll2003", __doc__)
