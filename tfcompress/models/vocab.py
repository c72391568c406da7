"""Vocabulary trimming: keep the word-embedding rows a task uses, drop the rest.

Why: half of MiniLM-L6's 22.7 M parameters are the 30,522 x 384 word-embedding table, and a task
uses a fraction of it (SST-2's 60,614 training sentences use 11,544 distinct WordPiece ids,
measured). Pruning cannot make that table small (a zeroed row still costs its gzip entropy in a
dense table, and embedding pruning hurts accuracy); dropping rows does, with no change to the
model's outputs on any text whose tokens were kept. This is TextPruner's vocabulary pruning
(Yang et al., 2022), done on TF models.

What is kept (:func:`keep_ids`): the special tokens, every id the tokenizer produces for the given
texts (the training set), every single-character token and its ``##`` continuation (so any word can
still be spelled out instead of becoming ``[UNK]``), and optionally the first ``keep_first`` ids of
the original vocabulary (BERT's vocab.txt lists whole words roughly by corpus frequency, so this
keeps common words the training set happens to miss). Kept tokens keep their original order.

What changes: WordPiece tokenises a text whose tokens were all kept exactly as before (greedy
longest-match-first: a longer match in the small vocabulary would have been a longer match in the
full one). A word with a dropped token is spelled with shorter pieces, which can change the
prediction for it; :func:`trim` does not hide that, the pipeline's ``trim`` stage measures the test
metric after trimming and records the tokens the test split had to respell.

Supported: WordPiece tokenizers with a ``vocab.txt`` (BERT, MiniLM, DistilBERT, ELECTRA). BPE
tokenizers (RoBERTa) are refused.

Example:
    >>> import tfcompress as tfc
    >>> keep = tfc.vocab.keep_ids(tokenizer, train_texts)                 # doctest: +SKIP
    >>> small_model, small_tokenizer = tfc.vocab.trim(model, tokenizer, keep)  # doctest: +SKIP
"""
from __future__ import annotations

import copy
import json
import re
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from tfcompress.models import facts, surgery
from tfcompress.utils import get_logger

log = get_logger("vocab")

_UNUSED = re.compile(r"^\[unused\d+\]$")


def _vocabulary(tokenizer) -> list[str]:
    """Tokens by id; refuses non-WordPiece tokenizers."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model_type = json.loads(backend.to_str())["model"]["type"] if backend is not None else None
    if model_type != "WordPiece":
        raise ValueError(f"vocabulary trimming needs a WordPiece tokenizer (BERT, MiniLM, DistilBERT, "
                         f"ELECTRA); {type(tokenizer).__name__} is {model_type or 'not a fast tokenizer'}")
    vocab = tokenizer.get_vocab()
    tokens = [""] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    return tokens


def used_ids(tokenizer, texts: Iterable[str], batch_size: int = 4096) -> set[int]:
    """Every token id the tokenizer produces for ``texts`` (words or word lists), specials included."""
    used: set[int] = set()
    batch: list = []

    def flush():
        if batch:
            split = not isinstance(batch[0], str)
            for ids in tokenizer(batch, is_split_into_words=split, add_special_tokens=True)["input_ids"]:
                used.update(ids)
            batch.clear()

    for text in texts:
        batch.append(text)
        if len(batch) >= batch_size:
            flush()
    flush()
    return used


def keep_ids(tokenizer, texts: Iterable[str], keep_first: int = 0) -> list[int]:
    """The sorted ids to keep: specials, ids used by ``texts``, single characters (and ``##c``),
    and ids below ``keep_first`` that are not ``[unusedN]`` placeholders."""
    tokens = _vocabulary(tokenizer)
    if keep_first < 0:
        raise ValueError(f"keep_first={keep_first}: must be >= 0")
    keep = set(used_ids(tokenizer, texts))
    keep.update(tokenizer.all_special_ids)
    for index, token in enumerate(tokens):
        bare = token[2:] if token.startswith("##") else token
        if len(bare) == 1 or (index < keep_first and not _UNUSED.match(token)):
            keep.add(index)
    return sorted(keep)


def _trim_tokenizer(tokenizer, kept_tokens: list[str]):
    """The same tokenizer settings over ``kept_tokens`` (rebuilt from vocab.txt + tokenizer_config)."""
    from transformers import AutoTokenizer

    new_id = {token: index for index, token in enumerate(kept_tokens)}
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        root = Path(folder)
        (root / "vocab.txt").write_text("\n".join(kept_tokens) + "\n", encoding="utf-8")
        (root / "tokenizer.json").unlink(missing_ok=True)  # rebuilt from vocab.txt with the same settings
        config_path = root / "tokenizer_config.json"
        settings = json.loads(config_path.read_text())
        decoder = settings.get("added_tokens_decoder") or {}
        settings["added_tokens_decoder"] = {
            str(new_id[entry["content"]]): entry for entry in decoder.values() if entry["content"] in new_id}
        config_path.write_text(json.dumps(settings, indent=2))
        trimmed = AutoTokenizer.from_pretrained(folder, use_fast=True, trust_remote_code=False)
    if trimmed.get_vocab() != new_id:
        raise RuntimeError("the rebuilt tokenizer's vocabulary differs from the kept tokens")
    return trimmed


def trim(model, tokenizer, keep: Sequence[int]):
    """A copy of ``model`` and ``tokenizer`` over the vocabulary ``keep`` (ids of the original).

    Args:
        model (transformers.TFPreTrainedModel): a built, unwrapped model (strip pruning/QAT first).
        tokenizer: its WordPiece fast tokenizer.
        keep (Sequence[int]): ids to keep, e.g. from :func:`keep_ids`; must hold the special tokens.

    Returns:
        (model, tokenizer): a new model of the same class whose word-embedding table holds the kept
        rows in order (every other weight copied), and a tokenizer whose ids index that table.

    Raises:
        ValueError: a non-WordPiece tokenizer, ids out of range, or special tokens not kept.
    """
    tokens = _vocabulary(tokenizer)
    keep = sorted(set(int(i) for i in keep))
    if not keep or keep[0] < 0 or keep[-1] >= len(tokens):
        raise ValueError(f"keep holds ids outside [0, {len(tokens)})")
    kept_ids = set(keep)
    missing = [t for t, i in zip(tokenizer.all_special_tokens, tokenizer.all_special_ids) if i not in kept_ids]
    if missing:
        raise ValueError(f"keep drops the special tokens {missing}")
    layer, attr = surgery.word_embedding_ref(model)
    rows = np.asarray(getattr(layer, attr).numpy())[keep]
    kept_tokens = [tokens[i] for i in keep]
    new_tokenizer = _trim_tokenizer(tokenizer, kept_tokens)

    config = copy.deepcopy(model.config)
    config.vocab_size = len(keep)
    if getattr(config, "pad_token_id", None) is not None and new_tokenizer.pad_token_id is not None:
        config.pad_token_id = new_tokenizer.pad_token_id
    trimmed = type(model).from_config(config)
    trimmed(trimmed.dummy_inputs, training=False)
    new_layer, new_attr = surgery.word_embedding_ref(trimmed)
    new_table = getattr(new_layer, new_attr)
    old_by_name = {surgery.relative_weight_name(w): w for w in model.weights}
    for weight in trimmed.weights:
        if weight is new_table:
            weight.assign(rows)
            continue
        old = old_by_name.get(surgery.relative_weight_name(weight))
        if old is None or tuple(old.shape) != tuple(weight.shape):
            raise ValueError(f"trim: no weight of the same shape for {surgery.relative_weight_name(weight)} in the "
                             "original model (strip pruning/QAT wrappers first)")
        weight.assign(old)
    log.info("vocabulary trimmed from %d to %d tokens (%s -> %s parameters)", len(tokens), len(keep),
             f"{facts.count_params(model):,}", f"{facts.count_params(trimmed):,}")
    return trimmed, new_tokenizer


def respelled(tokenizer, trimmed_tokenizer, texts: Iterable[str]) -> dict:
    """How many of ``texts`` tokenise differently after trimming (their words with dropped tokens are
    spelled with shorter pieces): ``{"texts": n, "changed_texts": k, "tokens": t, "dropped_tokens": d}``."""
    texts = list(texts)
    split = bool(texts) and not isinstance(texts[0], str)
    before = tokenizer(texts, is_split_into_words=split)["input_ids"]
    after = trimmed_tokenizer(texts, is_split_into_words=split)["input_ids"]
    kept = set(trimmed_tokenizer.get_vocab())
    id_to_token = {i: t for t, i in tokenizer.get_vocab().items()}
    dropped = sum(1 for ids in before for i in ids if id_to_token[i] not in kept)
    changed = sum(1 for a, b in zip(before, after)
                  if [id_to_token[i] for i in a] != trimmed_tokenizer.convert_ids_to_tokens(b))
    return {"texts": len(texts), "changed_texts": changed, "tokens": sum(len(ids) for ids in before),
            "dropped_tokens": dropped}
