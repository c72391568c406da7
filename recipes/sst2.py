#!/usr/bin/env python
"""SST-2 sentiment: fine-tune the packaged all-MiniLM-L6-v2, prune it, export TFLite, gate, release.

Command (full data, the acceptance run)::

    python recipes/sst2.py --output-dir runs/sst2

Stages (default): finetune -> prune -> export -> evaluate -> release. ``--student-layers 3`` adds a
distill stage after finetune (``--distill-from DIR`` uses an existing fine-tuned teacher instead of
fine-tuning); ``--qat-epochs 1`` adds quantization-aware training after pruning. Rerunning the same
command skips finished stages and resumes an interrupted one from its last checkpoint.

Data: ``../shared/data/sst2`` (train.tsv 60,614 sentences for training, validation.tsv 6,735 for
checkpoint selection, test.tsv = the 872-sentence GLUE dev set for the reported number).

Defaults: fine-tune 2 epochs (batch 32, lr 1e-4), prune the encoder Dense kernels to 50 % with a
polynomial schedule during half an epoch more, export fp32, fp16, dynamic and int8 artifacts (int16x8 on request) at the
99th-percentile training length, evaluate each with ai_edge_litert on the test set (1 pt parity budget
against the Keras model it came from), release the ones that pass.

Expected time on 2 CPU cores: 38 min for the whole default chain (2,282 s measured 2026-11-22 on a
quiet 2-core CPU: finetune 1,488 s, prune 487 s, export 146 s, evaluate 88 s, release 55 s).
Expected results of that run: finetune 0.8922 on test.tsv; prune 50 % 0.8911 (-0.11 pt); artifacts at
seq 44: fp32 0.8899, fp16 0.8899 (45 MB), dynamic 0.8876 (23 MB, 14.9 MB gzip, p50 2.46 ms at 2
threads), int8 0.8830 (23.3 MB, 14.1 MB gzip, 3.23 ms); all four released.
Other measured runs (2026-11-22):
* finetune: accuracy 0.8945 on test.tsv (872), 0.9464 on validation.tsv -- below the 0.905 goal of
  issue 2; ``--epochs 3 --set train.warmup_ratio=0.1`` gave 0.8968 (val 0.9479) in 60 min.
* prune 50 % (``tfcompress prune`` on that model, 20,000 training sentences, 625 steps): 0.8888.
* int8 artifact (LayerNorm ops and attention matmuls in float, the default): 0.8968, 23.3 MB, p50
  6.87 ms at seq 64 vs 2.82 ms for the dynamic-range one (benchmarks/export_variants.py, quiet machine).
* ``--student-layers 3 --distill-epochs 1 --set distill.cache_teacher=true``: student 0.8819, int8
  p50 0.47x the teacher's.

Smoke mode, about a minute, same code path::

    python recipes/sst2.py --smoke --output-dir runs/sst2-smoke

Outputs: OUTPUT/report.json, report.md, tradeoff.png, release/<artifact>/, tensorboard/
(``tensorboard --logdir OUTPUT/tensorboard``).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tfcompress.pipeline import DataConfig, RecipeConfig, recipe_main  # noqa: E402
from tfcompress.prune import PruneConfig  # noqa: E402
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
    prune=PruneConfig(final_sparsity=0.5, schedule="polynomial"),
    # Prune-and-fine-tune: half an epoch (948 steps, ~30k sentences: the measured 50 % runs used
    # 625-938 steps) so the default chain fits an hour on 2 cores; masks reach 50 % at 75 % of it,
    # the rest recovers. Evaluated once, at the end (restore_best off: a less sparse model must not win).
    prune_train=TrainConfig(epochs=0.5, batch_size=32, learning_rate=5e-5, warmup_ratio=0.0, eval_every=0,
                            log_every=50, checkpoint_every=200, restore_best=False),
    distill_train=TrainConfig(epochs=2, batch_size=32, learning_rate=1e-4, eval_every=950, log_every=50,
                              checkpoint_every=200),
    qat_train=TrainConfig(epochs=1, batch_size=32, learning_rate=2e-5, warmup_ratio=0.0, log_every=50,
                          checkpoint_every=200, restore_best=False),
    stages=["finetune", "prune", "export", "evaluate", "release"],
)
FILES = {"train": "train.tsv", "eval": "validation.tsv", "test": "test.tsv"}

if __name__ == "__main__":
    recipe_main(DEFAULTS, FILES, "sst2", __doc__)
