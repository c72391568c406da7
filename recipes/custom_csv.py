#!/usr/bin/env python
"""Your own text classification data (CSV, TSV or JSONL, any number of string labels) -> TFLite.

The path a new user takes first. Command::

    python recipes/custom_csv.py --train-file my/train.csv --eval-file my/dev.csv \\
        --test-file my/test.csv --text-column text --label-column label --output-dir runs/mine

File formats, chosen by extension: ``.csv`` (header row, standard quoting), ``.tsv`` (header row,
tab-separated), ``.jsonl`` (one object per line). Labels may be any strings ("positive", "billing",
"spam"...) or integers; the classes are the training file's labels (strings sorted, integers in
numeric order) and evaluation files must use the same ones. ``--eval-file`` defaults to the training
file, ``--test-file`` to the eval file (hold out data of your own for honest numbers).

Stages (default): finetune -> prune -> export -> evaluate -> release (recipes/sst2.py adds a 3-layer
student and vocabulary trimming by default; here ``--student-layers 3`` and ``--trim-vocab`` add them);
the same flags (``--student-layers``, ``--trim-vocab``, ``--qat-epochs``, ``--export``,
``--accuracy-budget``, ``--set``...).
The released bundle (``OUTPUT/release/<mode>/``) carries ``labels.txt`` with your label strings.

Expected time on 2 CPU cores: grows with your data; about 0.34 s per training step of 32 examples at
32 tokens with the default model (1 epoch = ceil(N / 32) steps for fine-tuning and 1 for pruning), plus
a few minutes of export and evaluation. Expected results: depend on your data (to be measured on it:
OUTPUT/report.md).

Smoke mode (first 256 training rows, 1 epoch per stage)::

    python recipes/custom_csv.py --smoke --train-file my/train.csv --output-dir runs/mine-smoke
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tfcompress.pipeline import DataConfig, RecipeConfig, recipe_main  # noqa: E402
from tfcompress.prune import PruneConfig  # noqa: E402
from tfcompress.train import TrainConfig  # noqa: E402

DEFAULTS = RecipeConfig(
    name="custom_csv",
    task="sequence",
    output_dir="runs/custom_csv",
    data=DataConfig(text_column="text", label_column="label", max_length=128),
    train=TrainConfig(epochs=3, batch_size=32, learning_rate=5e-5, warmup_ratio=0.06, log_every=50,
                      checkpoint_every=200),
    prune=PruneConfig(final_sparsity=0.5, schedule="polynomial"),
    prune_train=TrainConfig(epochs=1, batch_size=32, learning_rate=3e-5, warmup_ratio=0.0, log_every=50,
                            checkpoint_every=200, restore_best=False),
    stages=["finetune", "prune", "export", "evaluate", "release"],
)

if __name__ == "__main__":
    recipe_main(DEFAULTS, None, None, __doc__)
