#!/usr/bin/env python
"""SST-2 sentiment: fine-tune the packaged all-MiniLM-L6-v2, distil a 3-layer student, prune it, trim
its vocabulary, export TFLite, gate, release.

Command (full data, the acceptance run)::

    python recipes/sst2.py --output-dir runs/sst2

Stages (default): finetune -> distill -> prune -> trim -> export -> evaluate -> release. The released
artifacts are the student's: the default chain is built for the phone (small and fast), and the
6-layer fine-tuned teacher stays in OUTPUT/finetune/model. ``--student-layers 0 --no-trim-vocab``
ships the pruned 6-layer model instead (finetune -> prune -> export -> evaluate -> release: more
accurate, 1.6x the download, about 2x the latency); ``--student-layers 4`` a larger student;
``--distill-from DIR`` distils an existing fine-tuned teacher instead of fine-tuning one;
``--qat-epochs 1`` adds quantization-aware training after pruning. Rerunning the same command skips
finished stages and resumes an interrupted one from its last checkpoint.

Data: ``../shared/data/sst2`` (train.tsv 60,614 sentences for training, validation.tsv 6,735 for
checkpoint selection, test.tsv = the 872-sentence GLUE dev set for the reported number).

Defaults: fine-tune 2 epochs (batch 32, lr 1e-4) with the head the checkpoint was trained for
(``--pooling auto``: the packaged all-MiniLM-L6-v2 is a mean-pooling sentence-transformers model, so the
classifier reads the masked mean of the token vectors, not the untrained [CLS] pooler); distil a
3-layer student (teacher blocks 0, 2, 5) for 1 epoch over the training set plus two augmented copies
of each sentence (``--augment-copies 2``: word masking and n-gram sampling after Tang et al. 2019;
172,951 texts, 5,405 steps) on the teacher's cached logits (alpha 0.5, T 2) and, for the original
sentences, the labels; prune the student's encoder Dense kernels to 50 % with a polynomial schedule
during half an epoch more, and its word-embedding table with them (``--prune-embeddings``), learning
from the unpruned student's cached logits as well as the labels (``--prune-distill-alpha 0.5``);
trim the vocabulary to the tokens train.tsv uses plus the first 20,000 ids (22,269 of 30,522 rows);
export fp32, fp16, dynamic and int8 artifacts (int16x8 on request) at the 99th-percentile training
length (44); evaluate each with ai_edge_litert on the test set (1 pt parity budget against the Keras
model it came from); release the ones that pass.

Expected time on 2 CPU cores: 53 min 33 s, one uninterrupted run of these defaults (``python
recipes/sst2.py --output-dir runs/sst2-s10``, 2026-11-25 06:15-07:09 UTC, machine otherwise idle except
a 4-minute test file during the fine-tune): finetune 1,278 s, distill 1,340 s (teacher cache of the
172,951 texts included), prune 341 s, trim 30 s, export 96 s, evaluate 63 s, release 49 s.
Expected results (that run, RESULTS.md "Session 10"): teacher 0.8911 on test.tsv (val 0.9474);
student 0.8853; pruned 0.8796; trimmed 0.8819; artifacts at seq 44 (the trimmed Keras model scores
0.8784 at that length): fp32 and fp16 0.8784, dynamic 0.8796 (14.2 MB, 7.9 MB gzip, p50 0.95 ms at 2
threads), int8 0.8739 (14.3 MB, 7.5 MB gzip, 0.98 ms; agreement with Keras 0.9885) — all four
released. A teacher of the same config and test accuracy (val 0.9463) gave a 0.8888 student in an
earlier run (session 7; pruned 0.8830, trimmed 0.8819, dynamic 0.8842): run-to-run spread of the
distill and prune stages is about 0.4 pt.
On that session-7 student (int8 numbers from the export before 2026-11-25), with the embedding table
dense (``--no-prune-embeddings``): pruned 0.8865, dynamic 0.8842 at 9.2 MB gzip, int8 0.8727; without the
teacher in the prune stage as well (``--prune-distill-alpha 1``, the default before 2026-11-24 night):
pruned 0.8796, dynamic 0.8739 (p50 1.08 ms at 2 threads, quiet machine), int8 0.8670. On the
validation split the three pruned models scored 0.9437, 0.9443 and 0.9460 (in that order): the
teacher's test-set gain is inside the noise there, pruning the embedding table cost nothing. Run-to-run
spread is large: the same 2-epoch teacher config scored 0.8911 and 0.8956 in two runs (one test
sentence is 0.11 pt).
Beside the stock path (``python benchmarks/stock_vs_tfcompress.py --tasks sst2``, same run, both on
seed 42, 2026-11-25 09:45 UTC): stock 1-epoch ``fit`` + dynamic-range 0.8991 (17.6 MB gzip); this
chain's dynamic artifact is 1.95 pt below it at 0.45x its gzip size and 0.35x its latency.
Other measured runs:
* Student without augmentation (``--augment-copies 0 --distill-epochs 2``, the default until
  2026-11-24 evening; 44 min): student 0.8716, dynamic 0.8670, int8 0.8601 on the same teacher;
  ``--augment-copies 1 --distill-epochs 1`` (3,761 steps): student 0.8796.
* ``--student-layers 0 --no-trim-vocab`` (the 6-layer chain; 34 min): finetune 0.8956,
  pruned 0.8956; dynamic 0.8956 (22.9 MB, 14.7 MB gzip, p50 2.30 ms), int8 0.8830 (-1.26 pt: held back
  by the parity gate; ``--set export.int8_select_budget=0.5`` keeps its worst tensors in float until
  it holds, or ``--allow-regression`` releases it anyway).
* ``--pooling cls`` (the [CLS] pooler head): finetune 0.8945, 0.8922 (2 epochs), 0.8968 (3 epochs,
  ``--set train.warmup_ratio=0.1``) -- all below the 0.905 goal of issue 2, as is the mean head's;
  ``--learning-rate 5e-5``: 0.8968 (``benchmarks/finetune_sweep.py``, one seed).
* ``--trim-keep-first 0`` (keep only the 13,458 tokens the training set uses): on the 6-layer model
  16.0 M parameters instead of 22.6 M at -0.46 pt (311 of the 872 test sentences hold a word the
  training set never produced a token for, now spelled with shorter pieces); on the student -0.80 pt.
* ``--alpha 1.0 --augment-copies 0 --distill-epochs 2`` (student on labels only, no teacher): 0.8830
  vs KD 0.8842 in the same pair of runs (without augmentation the teacher added nothing measurable).

Smoke mode, same code path on 256 training sentences (5.6 min measured on 2 cores on 2026-11-24 with
the 5-stage chain; the distill and trim stages since added to the default are not in that time)::

    python recipes/sst2.py --smoke --output-dir runs/sst2-smoke

Outputs: OUTPUT/report.json, report.md, tradeoff.png, release/<artifact>/, tensorboard/
(``tensorboard --logdir OUTPUT/tensorboard``).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tfcompress.distill import DistillConfig  # noqa: E402
from tfcompress.pipeline import DataConfig, RecipeConfig, StudentConfig, TrimStageConfig, recipe_main  # noqa: E402
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
    # The word-embedding table is pruned too (half of the student's weights after trimming): the
    # dynamic artifact's gzip size fell from 9.2 to 7.9 MB at the same test accuracy (one run each).
    prune=PruneConfig(final_sparsity=0.5, schedule="polynomial", prune_embeddings=True),
    # Keep the tokens train.tsv uses plus the first 20,000 ids of the 30,522 (BERT lists whole words
    # roughly by frequency): 22,269 rows instead of 30,522 for -0.34 pt on the student (K=0: -0.80 pt).
    trim=TrimStageConfig(keep_first=20000),
    # Prune-and-fine-tune: half an epoch (948 steps, ~30k sentences: the measured 50 % runs used
    # 625-938 steps) so the default chain fits an hour on 2 cores; masks reach 50 % at 75 % of it,
    # the rest recovers. Evaluated once, at the end (restore_best off: a less sparse model must not win).
    prune_train=TrainConfig(epochs=0.5, batch_size=32, learning_rate=5e-5, warmup_ratio=0.0, eval_every=0,
                            log_every=50, checkpoint_every=200, restore_best=False),
    # ... learning from the dense model it prunes as well as from the labels (KL at T=2 on its cached
    # logits, weight 0.5): on the augmented student -0.23 pt on test instead of -0.92 pt without it
    # (validation: 0.9443 vs 0.9460, the other way; one run each: see the docstring).
    prune_distill=DistillConfig(alpha=0.5, cache_teacher=True),
    # The shipped model is a 3-layer student (blocks 0, 2, 5 of the fine-tuned teacher) trained on the
    # teacher's cached logits (KL at T=2, weight 0.5) and the labels, over the training set plus two
    # augmented copies of each sentence (soft labels only), one epoch; measurements in the docstring.
    student=StudentConfig(num_layers=3),
    distill=DistillConfig(cache_teacher=True, augment_copies=2),
    distill_train=TrainConfig(epochs=1, batch_size=32, learning_rate=1e-4, eval_every=950, log_every=50,
                              checkpoint_every=200),
    qat_train=TrainConfig(epochs=1, batch_size=32, learning_rate=2e-5, warmup_ratio=0.0, log_every=50,
                          checkpoint_every=200, restore_best=False),
    stages=["finetune", "distill", "prune", "trim", "export", "evaluate", "release"],
)
FILES = {"train": "train.tsv", "eval": "validation.tsv", "test": "test.tsv"}

if __name__ == "__main__":
    recipe_main(DEFAULTS, FILES, "sst2", __doc__)
