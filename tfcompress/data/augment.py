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

Their third rule, POS-guided word replacement, needs a tagger; in its place, as TinyBERT's augmentation
does with GloVe (Jiao et al., 2020, §3.2), **word replacement** swaps each word with probability
``replace_prob`` for one of its nearest neighbours in a model's input word embeddings (cosine similarity,
whole-word vocabulary entries only, :func:`embedding_neighbours`): "good" becomes "great", "excellent" or
"bad", so the teacher also labels sentences whose sentiment the swap may have turned. Words are
whitespace-separated, as in SST-2's tokenised sentences; :func:`augment_sentences` applies the same
rules to a token task's word lists (CoNLL-2003), where the teacher then labels every word. Each source text yields up to ``copies``
distinct new texts; texts equal to a source text or already produced are dropped, so the set is
deduplicated and never repeats a labelled example. The teacher labels them (soft labels only: their
hard label is ``IGNORE_INDEX``), see :class:`tfcompress.distill.DistillConfig` ``augment_copies``.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np


def _case_like(word: str, source: str) -> str:
    """``word`` in the case shape of ``source`` (an uncased vocabulary gives lower-case neighbours)."""
    if len(source) > 1 and source.isupper():
        return word.upper()
    return word[:1].upper() + word[1:] if source[:1].isupper() else word


def _augment_one(words: list[str], rng: np.random.Generator, mask_token: str, mask_prob: float,
                 ngram_prob: float, max_ngram: int, replace_prob: float = 0.0,
                 neighbours: Mapping[str, Sequence[str]] | None = None) -> str:
    if replace_prob > 0:  # no draws when off: the texts of a run without replacement never change
        replaced = rng.random(len(words)) < replace_prob
        picks = rng.random(len(words))
        words = [_case_like(neighbours[w][int(p * len(neighbours[w]))], w) if r and neighbours.get(w) else w
                 for w, r, p in zip(words, replaced, picks)]
    masked = rng.random(len(words)) < mask_prob
    out = [mask_token if m else w for w, m in zip(words, masked)]
    if len(out) > 1 and rng.random() < ngram_prob:
        n = int(rng.integers(1, min(max_ngram, len(out) - 1) + 1))
        start = int(rng.integers(0, len(out) - n + 1))
        out = out[start:start + n]
    return " ".join(out)


def embedding_neighbours(tokenizer, embeddings: np.ndarray, words: Iterable[str], k: int = 15,
                         batch_size: int = 1024) -> dict[str, list[str]]:
    """The ``k`` nearest whole-word vocabulary entries of each word, by cosine similarity of input embeddings.

    Args:
        tokenizer: the tokenizer whose vocabulary indexes ``embeddings``.
        embeddings: the model's ``[vocab_size, dim]`` input word-embedding matrix.
        words: the words to find neighbours for (e.g. every distinct word of the training texts).
        k: neighbours kept per word, nearest first.
        batch_size: words scored per matrix product.

    Returns:
        ``{word: [neighbour, ...]}`` for each word the tokenizer reads as one alphabetic vocabulary entry
        (other words, e.g. split into sub-words, numbers or punctuation, get no entry and are never
        replaced). Neighbours are alphabetic entries the tokenizer reads back as themselves, never the
        word's own entry nor the word in another case.
    """
    if k < 1:
        raise ValueError(f"k={k}: must be >= 1")
    vocab = tokenizer.get_vocab()
    if embeddings.ndim != 2 or embeddings.shape[0] < len(vocab):
        raise ValueError(f"embeddings of shape {embeddings.shape}: need [vocab_size >= {len(vocab)}, dim]")

    def whole_word(token: str) -> str | None:
        text = tokenizer.convert_tokens_to_string([token]).strip()
        return text if text.isalpha() and tokenizer.tokenize(text) == [token] else None

    candidates = {}
    for token, index in vocab.items():
        text = whole_word(token)
        if text is not None and text not in candidates:
            candidates[text] = index
    names = list(candidates)
    if not names:
        return {}
    matrix = embeddings[list(candidates.values())].astype(np.float32)
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    sources = {}
    for word in dict.fromkeys(words):
        tokens = tokenizer.tokenize(word) if word.isalpha() else []
        if len(tokens) == 1 and tokens[0] in vocab:
            sources[word] = vocab[tokens[0]]
    out: dict[str, list[str]] = {}
    source_words = list(sources)
    for start in range(0, len(source_words), batch_size):
        chunk = source_words[start:start + batch_size]
        rows = embeddings[[sources[w] for w in chunk]].astype(np.float32)
        rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        scores = rows @ matrix.T
        top = np.argsort(-scores, axis=1)[:, :k + 3]  # room for the word's own entries
        for word, order in zip(chunk, top):
            # never the word itself, in any case (a cased vocabulary's "good" beside "Good")
            kept = [names[j] for j in order
                    if candidates[names[j]] != sources[word] and names[j].lower() != word.lower()]
            out[word] = kept[:k]
    return out


def augment_texts(texts: Sequence[str], copies: int, mask_token: str, mask_prob: float = 0.1,
                  ngram_prob: float = 0.25, max_ngram: int = 5, seed: int = 0, max_tries: int = 4,
                  replace_prob: float = 0.0, neighbours: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """New texts made from ``texts`` by word replacement, masking and n-gram sampling (see the module docstring).

    Args:
        texts: the source texts (the labelled training set).
        copies: new texts wanted per source text (fewer when a short text has few distinct variants).
        mask_token: the tokenizer's mask token (``[MASK]`` for BERT, ``<mask>`` for RoBERTa).
        mask_prob: per-word probability of masking.
        ngram_prob: probability of keeping only an n-gram of the (masked) words.
        max_ngram: longest n-gram kept.
        seed: the random generator's seed; the same arguments give the same list.
        max_tries: draws per wanted copy before a source text gives up (short texts run out).
        replace_prob: per-word probability of replacement by one of its ``neighbours`` (drawn uniformly;
            words without neighbours stay). 0 = off.
        neighbours: ``{word: [neighbour, ...]}``, e.g. from :func:`embedding_neighbours`; needed when
            ``replace_prob > 0``.

    Returns:
        The new texts, source order, each distinct and none equal to a source text.
    """
    if copies < 0:
        raise ValueError(f"copies={copies}: must be >= 0")
    for name, p in (("mask_prob", mask_prob), ("ngram_prob", ngram_prob), ("replace_prob", replace_prob)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name}={p}: must be in [0, 1]")
    if replace_prob > 0 and neighbours is None:
        raise ValueError(f"replace_prob={replace_prob}: needs neighbours (see embedding_neighbours)")
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
            candidate = _augment_one(words, rng, mask_token, mask_prob, ngram_prob, max_ngram, replace_prob,
                                     neighbours)
            if candidate not in seen:
                seen.add(candidate)
                new.append(candidate)
                made += 1
    return new


def augment_sentences(sentences: Sequence[Sequence[str]], copies: int, mask_token: str, mask_prob: float = 0.1,
                      ngram_prob: float = 0.0, max_ngram: int = 5, seed: int = 0, replace_prob: float = 0.0,
                      neighbours: Mapping[str, Sequence[str]] | None = None) -> list[list[str]]:
    """:func:`augment_texts` for a token task: new word lists made from ``sentences`` (lists of words).

    An n-gram keeps whole words, so every word of a new sentence is a source word, a neighbour of it (in the
    source word's case shape) or ``mask_token``.
    Raises ``ValueError`` naming the sentence and word when a word is empty or holds whitespace (it
    would not survive the round trip through text).
    """
    for index, words in enumerate(sentences):
        for word in words:
            if not word or len(word.split()) != 1 or word.strip() != word:
                raise ValueError(f"sentence {index}: word {word!r} is empty or holds whitespace; "
                                 "augmentation needs whitespace-free words")
    texts = augment_texts([" ".join(words) for words in sentences], copies, mask_token, mask_prob=mask_prob,
                          ngram_prob=ngram_prob, max_ngram=max_ngram, seed=seed, replace_prob=replace_prob,
                          neighbours=neighbours)
    return [text.split(" ") for text in texts]
