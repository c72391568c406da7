"""Text augmentation for task distillation: new unlabelled sentences for the teacher to label.

On SST-2 the fine-tuned teacher is near-certain on its own training phrases, so its soft labels there
say little beyond the hard labels, and logit distillation alone did not beat the label-only student
(benchmarks/RESULTS.md, sessions 2-4). The gains reported for task distillation on such data come
with augmentation: the student is also trained to match the teacher on perturbed sentences where the
teacher's output is not one-hot. This module makes those sentences with the two model-free rules of
Tang et al., "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks" (2019, §3.1):

* **masking**: each word is replaced by the tokenizer's mask token with probability ``mask_prob``;
* **n-gram sampling**: with probability ``ngram_prob`` only a random window of ``n`` words is kept,
  ``n`` uniform in ``[1, max_ngram]``.

(Their third rule, POS-guided word replacement, needs a tagger and is left out.) Words are
whitespace-separated, as in SST-2's tokenised sentences; :func:`augment_sentences` applies the same
rules to a token task's word lists (CoNLL-2003), where the teacher then labels every word. Each source text yields up to ``copies``
distinct new texts; texts equal to a source text or already produced are dropped, so the set is
deduplicated and never repeats a labelled example. The teacher labels them (soft labels only: their
hard label is ``IGNORE_INDEX``), see :class:`tfcompress.distill.DistillConfig` ``augment_copies``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _augment_one(words: list[str], rng: np.random.Generator, mask_token: str, mask_prob: float,
                 ngram_prob: float, max_ngram: int) -> str:
    masked = rng.random(len(words)) < mask_prob
    out = [mask_token if m else w for w, m in zip(words, masked)]
    if len(out) > 1 and rng.random() < ngram_prob:
        n = int(rng.integers(1, min(max_ngram, len(out) - 1) + 1))
        start = int(rng.integers(0, len(out) - n + 1))
        out = out[start:start + n]
    return " ".join(out)


def augment_texts(texts: Sequence[str], copies: int, mask_token: str, mask_prob: float = 0.1,
                  ngram_prob: float = 0.25, max_ngram: int = 5, seed: int = 0, max_tries: int = 4) -> list[str]:
    """New texts made from ``texts`` by masking and n-gram sampling (see the module docstring).

    Args:
        texts: the source texts (the labelled training set).
        copies: new texts wanted per source text (fewer when a short text has few distinct variants).
        mask_token: the tokenizer's mask token (``[MASK]`` for BERT, ``<mask>`` for RoBERTa).
        mask_prob: per-word probability of masking.
        ngram_prob: probability of keeping only an n-gram of the (masked) words.
        max_ngram: longest n-gram kept.
        seed: the random generator's seed; the same arguments give the same list.
        max_tries: draws per wanted copy before a source text gives up (short texts run out).

    Returns:
        The new texts, source order, each distinct and none equal to a source text.
    """
    if copies < 0:
        raise ValueError(f"copies={copies}: must be >= 0")
    for name, p in (("mask_prob", mask_prob), ("ngram_prob", ngram_prob)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name}={p}: must be in [0, 1]")
    if max_ngram < 1:
        raise ValueError(f"max_ngram={max_ngram}: must be >= 1")
    rng = np.random.default_rng(seed)
    seen = set(texts)
    new: list[str] = []
    for text in texts:
        words = text.split()
        if not words:
            continue
        made = 0
        for _ in range(copies * max_tries):
            if made == copies:
                break
            candidate = _augment_one(words, rng, mask_token, mask_prob, ngram_prob, max_ngram)
            if candidate not in seen:
                seen.add(candidate)
                new.append(candidate)
                made += 1
    return new


def augment_sentences(sentences: Sequence[Sequence[str]], copies: int, mask_token: str, mask_prob: float = 0.1,
                      ngram_prob: float = 0.0, max_ngram: int = 5, seed: int = 0) -> list[list[str]]:
    """:func:`augment_texts` for a token task: new word lists made from ``sentences`` (lists of words).

    An n-gram keeps whole words, so every word of a new sentence is a source word or ``mask_token``.
    Raises ``ValueError`` naming the sentence and word when a word is empty or holds whitespace (it
    would not survive the round trip through text).
    """
    for index, words in enumerate(sentences):
        for word in words:
            if not word or len(word.split()) != 1 or word.strip() != word:
                raise ValueError(f"sentence {index}: word {word!r} is empty or holds whitespace; "
                                 "augmentation needs whitespace-free words")
    texts = augment_texts([" ".join(words) for words in sentences], copies, mask_token, mask_prob=mask_prob,
                          ngram_prob=ngram_prob, max_ngram=max_ngram, seed=seed)
    return [text.split(" ") for text in texts]
