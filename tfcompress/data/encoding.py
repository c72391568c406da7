"""Tokenisation with label alignment, length-bucketed batches and ``tf.data``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from tfcompress._compat import tf
from tfcompress.config import IGNORE_INDEX
from tfcompress.config.constants import TASKS
from tfcompress.data.readers import TextClassificationExamples, TokenClassificationExamples
from tfcompress.utils import get_logger, is_tty

BUCKET_CHUNK_BATCHES = 50  # batches per length-sorting chunk: enough to group similar lengths,
# few enough that a batch still mixes examples from 1/50 of the shuffled data set.
_TOKENIZE_CHUNK = 1000  # examples per tokenizer call: the fast tokenizer batches in Rust

_log = get_logger("data")

def keep_positions(length: int, width: int) -> np.ndarray:
    """Positions kept when cutting a sequence of ``length`` to ``width``: the first ``width - 1``
    and the last one, so the closing special token (``[SEP]``, ``</s>``) survives."""
    if length <= width:
        return np.arange(length)
    return np.concatenate([np.arange(width - 1), [length - 1]])


@dataclass
class EncodedData:
    """Tokenised examples, unpadded: one int32 array per example and input name.

    Args:
        task: "sequence" or "token".
        features: input name -> per-example int32 arrays (keys are the model's input names).
        labels: sequence task: int32 array [N]; token task: per-example int32 arrays, with
            ``IGNORE_INDEX`` (-100) on special tokens and non-first sub-tokens.
        label_names: class or tag names, index = label id.
        num_truncated: how many examples ``max_length`` cut.
        words: token task: the original words of each example (None for the sequence task).
        pad_token_id: id used to pad ``input_ids`` (the tokenizer's; 1 for RoBERTa).
        truncated: per-example bool mask of truncated examples (so ``select`` keeps the count right).
        num_words_dropped: token task: words that got no first sub-token (cut by ``max_length`` or
            tokenised to nothing), i.e. words absent from loss and metrics.
        case_segments: ``token_type_ids`` carry each word's capitalisation (``encode``), not segment 0.
    """
    task: str
    features: dict[str, list[np.ndarray]]
    labels: list[np.ndarray] | np.ndarray
    label_names: list[str]
    num_truncated: int = 0
    words: list[list[str]] | None = None
    pad_token_id: int = 0
    truncated: np.ndarray | None = None
    num_words_dropped: int = 0
    case_segments: bool = False
    _lengths: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r}: must be one of {TASKS}")
        if not self.features:
            raise ValueError("features: empty; expected at least 'input_ids'")
        sizes = {name: len(values) for name, values in self.features.items()}
        if len(set(sizes.values())) != 1 or len(self.labels) != next(iter(sizes.values())):
            raise ValueError(f"features sizes {sizes} and labels size {len(self.labels)} must all be equal")
        if self.task == "sequence":
            self.labels = np.asarray(self.labels, dtype=np.int32).reshape(-1)

    @property
    def input_names(self) -> list[str]:
        return list(self.features)

    def __len__(self) -> int:
        return len(self.labels)

    def lengths(self) -> np.ndarray:
        """Token count of each example (int64 [N])."""
        if self._lengths is None:
            first = next(iter(self.features.values()))
            self._lengths = np.fromiter((len(a) for a in first), dtype=np.int64, count=len(first))
        return self._lengths

    def percentile_length(self, q: float = 99) -> int:
        """The ``q``-th percentile of token lengths (an actual example length, rounded up)."""
        return int(np.percentile(self.lengths(), q, method="higher"))

    def select(self, indices) -> "EncodedData":
        """A new EncodedData with the examples at ``indices`` (in that order)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        features = {name: [values[i] for i in indices] for name, values in self.features.items()}
        if self.task == "sequence":
            labels = self.labels[indices]
        else:
            labels = [self.labels[i] for i in indices]
        truncated = self.truncated[indices] if self.truncated is not None else None
        return EncodedData(
            task=self.task, features=features, labels=labels, label_names=list(self.label_names),
            num_truncated=int(truncated.sum()) if truncated is not None else 0,
            words=[self.words[i] for i in indices] if self.words is not None else None,
            pad_token_id=self.pad_token_id, truncated=truncated, case_segments=self.case_segments,
        )

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                bucket: bool = True, drop_remainder: bool = False) -> list[np.ndarray]:
        """Split the examples into batches of indices.

        With ``shuffle``: a permutation drawn from ``(seed, epoch)`` only (so a resumed run gets the
        same order), cut into chunks of ``50 * batch_size`` examples, each chunk sorted by length and
        cut into batches, then the order of all batches shuffled. Similar lengths share a batch, so
        padding to the batch's longest wastes little. Without ``shuffle``: sorted by length over the
        whole data set when ``bucket`` (fastest for evaluation; :func:`tfcompress.metrics.predict_logits`
        puts results back in example order), else consecutive.

        Args:
            batch_size: examples per batch (the last batch may be smaller unless ``drop_remainder``).
            shuffle: shuffle as above.
            seed: shuffling seed.
            epoch: epoch number, mixed into the seed so each epoch has its own order.
            bucket: group similar lengths (False: plain consecutive / shuffled order).
            drop_remainder: drop a final batch smaller than ``batch_size``.

        Returns:
            list of int64 index arrays.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        count = len(self)
        lengths = self.lengths()
        batches: list[np.ndarray] = []
        if shuffle:
            rng = np.random.default_rng([int(seed), int(epoch)])
            order = rng.permutation(count)
            if bucket:
                chunk = batch_size * BUCKET_CHUNK_BATCHES
                for start in range(0, count, chunk):
                    part = order[start:start + chunk]
                    part = part[np.argsort(lengths[part], kind="stable")]
                    batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
                batches = [batches[i] for i in rng.permutation(len(batches))]
            else:
                batches = [order[i:i + batch_size] for i in range(0, count, batch_size)]
        else:
            order = np.argsort(lengths, kind="stable") if bucket else np.arange(count)
            batches = [order[i:i + batch_size] for i in range(0, count, batch_size)]
        if drop_remainder:
            batches = [b for b in batches if len(b) == batch_size]
        return batches

    def padded_batch(self, indices, pad_to: int | None = None, truncate: bool = False
                     ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Stack the examples at ``indices`` into padded int32 arrays.

        Args:
            indices: example indices.
            pad_to: fixed width (TFLite needs one); None pads to the longest example in the batch.
            truncate: with ``pad_to``, cut longer examples (keeping their last token, the closing
                special token) instead of raising. Prefer encoding with ``max_length=pad_to``.

        Returns:
            (features {name: int32 [B, T]}, labels int32 [B] or [B, T] padded with -100).

        Raises:
            ValueError: an example is longer than ``pad_to`` and ``truncate`` is False.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        lengths = self.lengths()[indices]
        longest = int(lengths.max()) if len(indices) else 0
        if pad_to is None:
            width = longest
        else:
            width = int(pad_to)
            if longest > width and not truncate:
                raise ValueError(f"an example has {longest} tokens, more than pad_to={width}; encode with "
                                 f"max_length={width} or pass truncate=True")
        features = {}
        for name, values in self.features.items():
            pad_value = self.pad_token_id if name == "input_ids" else 0
            out = np.full((len(indices), width), pad_value, dtype=np.int32)
            for row, i in enumerate(indices):
                seq = values[i]
                if len(seq) > width:
                    seq = seq[keep_positions(len(seq), width)]
                out[row, :len(seq)] = seq
            features[name] = out
        if self.task == "sequence":
            labels = self.labels[indices].astype(np.int32)
        else:
            labels = np.full((len(indices), width), IGNORE_INDEX, dtype=np.int32)
            for row, i in enumerate(indices):
                seq = self.labels[i]
                if len(seq) > width:
                    seq = seq[keep_positions(len(seq), width)]
                labels[row, :len(seq)] = seq
        return features, labels

    def tf_dataset(self, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                   skip_batches: int = 0, pad_to: int | None = None, drop_remainder: bool = False):
        """One epoch as a ``tf.data.Dataset`` of ``(features, labels)`` padded per batch.

        Batch order is :meth:`batches` for ``(seed, epoch)``; ``skip_batches`` drops its first
        batches (to resume mid-epoch). Shapes are ``[None, None]`` int32 for features and
        ``[None]`` / ``[None, None]`` int32 for labels, so one traced step serves every width.
        Call once per epoch with that epoch's number.

        Args:
            batch_size: examples per batch.
            shuffle: shuffle (with length bucketing) from ``(seed, epoch)``.
            seed: shuffling seed.
            epoch: epoch number.
            skip_batches: batches to skip from the start of the epoch (>= 0).
            pad_to: fixed width instead of per-batch padding.
            drop_remainder: drop a final short batch.
        """
        if skip_batches < 0:
            raise ValueError(f"skip_batches={skip_batches}: must be >= 0")
        order = self.batches(batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                             drop_remainder=drop_remainder)[skip_batches:]
        return self.batch_dataset(order, pad_to=pad_to)

    def batch_dataset(self, order, pad_to: int | None = None, with_index: bool = False):
        """One padded batch per index list of ``order``, as a prefetched ``tf.data.Dataset`` of
        ``(features, labels)`` (shapes as :meth:`tf_dataset`). ``with_index`` adds
        ``features["example_index"]`` (int32 ``[B]``, the rows of this data), for teacher outputs
        cached by row."""
        def generate():
            for indices in order:
                features, labels = self.padded_batch(indices, pad_to=pad_to)
                if with_index:
                    features["example_index"] = np.asarray(indices, np.int32)
                yield features, labels

        label_shape = [None] if self.task == "sequence" else [None, None]
        features = {name: tf.TensorSpec([None, None], tf.int32, name=name) for name in self.features}
        if with_index:
            features["example_index"] = tf.TensorSpec([None], tf.int32, name="example_index")
        signature = (features, tf.TensorSpec(label_shape, tf.int32, name="labels"))
        dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
        return dataset.prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------------------------
# Tokenisation
# --------------------------------------------------------------------------------------------


def _align_labels(word_ids: Sequence[int | None], word_tags: Sequence[int]) -> np.ndarray:
    """First sub-token of each word carries the word's tag; other sub-tokens and specials -100."""
    labels = np.full(len(word_ids), IGNORE_INDEX, dtype=np.int32)
    previous = None
    for position, word in enumerate(word_ids):
        if word is not None and word != previous:
            labels[position] = word_tags[word]
        previous = word
    return labels


def fit_context(tokenizer, examples, max_length: int):
    """Token examples with document context (``examples.left``/``right``) cut to what fits ``max_length``
    with every word of the sentence: context words are kept nearest first, alternating left and right, while
    their sub-tokens fit beside the sentence's and the special tokens. Other examples come back unchanged;
    a sentence too long on its own gets no context (and is truncated as without it)."""
    if not isinstance(examples, TokenClassificationExamples) or examples.left is None:
        return examples
    budget_all = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    inputs, lefts = examples.words_in_context(), examples.left_counts()
    left_out, right_out = [], []
    for start in range(0, len(inputs), _TOKENIZE_CHUNK):
        chunk = inputs[start:start + _TOKENIZE_CHUNK]
        batch = tokenizer(chunk, is_split_into_words=True, add_special_tokens=False, verbose=False)
        for offset, words in enumerate(chunk):
            pieces = np.bincount([w for w in batch.word_ids(offset) if w is not None], minlength=len(words))
            index = start + offset
            left, size = lefts[index], len(examples.words[index])
            budget = budget_all - int(pieces[left:left + size].sum())
            before, after = left, len(words) - left - size  # context words still available on each side
            keep_before = keep_after = 0
            took = True
            while took:  # one more word on each side while it fits, nearest first
                took = False
                if keep_before < before and pieces[left - keep_before - 1] <= budget:
                    budget, keep_before, took = budget - int(pieces[left - keep_before - 1]), keep_before + 1, True
                if keep_after < after and pieces[left + size + keep_after] <= budget:
                    budget, keep_after, took = budget - int(pieces[left + size + keep_after]), keep_after + 1, True
            left_out.append(list(examples.left[index][before - keep_before:]))
            right_out.append(list(examples.right[index][:keep_after]))
    return dataclasses.replace(examples, left=left_out, right=right_out)


def case_segment_ids(word_ids: Sequence[int | None], words: Sequence[str] | None = None, text: str | None = None,
                     encoding=None) -> np.ndarray:
    """Segment ids that tell an uncased model the capitalisation its tokenizer threw away: 1 for every
    sub-token of a word whose first character is an upper-case letter ("London", "EU", "McDonald"), 0
    elsewhere (special tokens included).

    Args:
        word_ids: the tokenizer's word index per token (``BatchEncoding.word_ids``; None: special token).
        words: the example's words (token task, ``is_split_into_words``), or
        text / encoding: the raw text and its ``tokenizers.Encoding`` (sequence task), whose
            ``word_to_chars`` gives each word's first character.
    """
    def upper(word: int) -> bool:
        if words is not None:
            return words[word][:1].isupper()
        return text[encoding.word_to_chars(word)[0]].isupper()

    return np.asarray([0 if word is None else int(upper(word)) for word in word_ids], dtype=np.int32)


def encode(tokenizer, examples, max_length: int = 128, input_names: Sequence[str] | None = None,
           progress: bool = False, case_segments: bool = False) -> EncodedData:
    """Tokenise examples (batched, fast tokenizer) and align labels.

    Args:
        tokenizer: a ``PreTrainedTokenizerFast`` (the token task needs ``word_ids()``).
        examples: TextClassificationExamples or TokenClassificationExamples.
        max_length: longest sequence in tokens, special tokens included; longer ones are cut and
            counted in ``num_truncated``.
        input_names: features to keep (default ``tokenizer.model_input_names``). Pass the model's
            (``models.model_input_names(model)``) so e.g. DistilBERT gets no ``token_type_ids``.
        progress: show a tqdm bar.
        case_segments: ``token_type_ids`` carry :func:`case_segment_ids` (each word's capitalisation)
            instead of segment 0; needs a model that reads segment ids (``type_vocab_size`` > 1).

    Returns:
        EncodedData. Token task: the first sub-token of each word carries its tag id, other
        sub-tokens, special tokens and document context (``examples.left``/``right``) ``IGNORE_INDEX``.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"{type(tokenizer).__name__} is not a fast tokenizer; encode needs one "
                        "(PreTrainedTokenizerFast) for batched tokenisation and word_ids()")
    if max_length < 2:
        raise ValueError(f"max_length={max_length}: must be >= 2 (room for the special tokens)")
    names = list(input_names) if input_names is not None else list(tokenizer.model_input_names)
    if case_segments and "token_type_ids" not in names:
        raise ValueError(f"case_segments: capitalisation travels in token_type_ids, and the inputs are {names}; "
                         "only a model with segment ids (type_vocab_size > 1: BERT, MiniLM, ELECTRA) reads it")
    if isinstance(examples, TextClassificationExamples):
        task, inputs = "sequence", examples.texts
    elif isinstance(examples, TokenClassificationExamples):
        examples = fit_context(tokenizer, examples, max_length)  # the sentence's words first, then context
        task, inputs = "token", examples.words_in_context()  # context words: read, tagged IGNORE_INDEX
        tag_index = {name: i for i, name in enumerate(examples.label_names)}
        lefts = examples.left_counts()
    else:
        raise TypeError(f"examples: {type(examples).__name__}; expected TextClassificationExamples or "
                        "TokenClassificationExamples")
    if len(inputs) == 0:
        raise ValueError(f"{examples.source}: no examples to encode")

    features: dict[str, list[np.ndarray]] = {name: [] for name in names}
    labels: list = []
    truncated = np.zeros(len(inputs), dtype=bool)
    words_dropped = 0
    from tqdm.auto import tqdm

    bar = tqdm(total=len(inputs), desc="tokenising", unit="ex", disable=not progress or not is_tty())
    for start in range(0, len(inputs), _TOKENIZE_CHUNK):
        chunk = inputs[start:start + _TOKENIZE_CHUNK]
        batch = tokenizer(chunk, truncation=True, max_length=max_length, is_split_into_words=(task == "token"),
                          return_token_type_ids="token_type_ids" in names,
                          return_attention_mask="attention_mask" in names, verbose=False)
        missing = [name for name in names if name not in batch]
        if missing:
            raise ValueError(f"input_names {missing} are not produced by {type(tokenizer).__name__} "
                             f"(it gives {list(batch.keys())})")
        for name in names:
            features[name].extend(np.asarray(ids, dtype=np.int32) for ids in batch[name])
        for offset, encoding in enumerate(batch.encodings):
            truncated[start + offset] = bool(encoding.overflowing)
            if case_segments:
                features["token_type_ids"][start + offset] = case_segment_ids(
                    encoding.word_ids, words=chunk[offset] if task == "token" else None,
                    text=chunk[offset] if task == "sequence" else None, encoding=encoding)
        if task == "sequence":
            labels.extend(examples.labels[start:start + len(chunk)])
        else:
            for offset in range(len(chunk)):
                index = start + offset
                word_ids = batch.word_ids(offset)
                left, tags = lefts[index], [tag_index[tag] for tag in examples.tags[index]]
                context = [IGNORE_INDEX] * (len(inputs[start + offset]) - left - len(tags))
                aligned = _align_labels(word_ids, [IGNORE_INDEX] * left + tags + context)
                kept = {w for w in word_ids if w is not None}
                words_dropped += sum(word not in kept for word in range(left, left + len(tags)))
                labels.append(aligned)
        bar.update(len(chunk))
    bar.close()
    data = EncodedData(
        task=task, features=features,
        labels=np.asarray(labels, dtype=np.int32) if task == "sequence" else labels,
        label_names=list(examples.label_names), num_truncated=int(truncated.sum()),
        words=[list(w) for w in examples.words] if task == "token" else None,
        pad_token_id=int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
        truncated=truncated, num_words_dropped=int(words_dropped), case_segments=bool(case_segments),
    )
    if data.num_truncated:
        _log.info("%s: max_length=%d truncated %d of %d examples", examples.source, max_length,
                  data.num_truncated, len(data))
    return data


def concatenate(parts: Sequence[EncodedData]) -> EncodedData:
    """One EncodedData with the examples of ``parts`` in order (same task, labels, inputs and padding)."""
    if not parts:
        raise ValueError("concatenate: no parts")
    first = parts[0]
    for k, part in enumerate(parts[1:], start=1):
        for name in ("task", "input_names", "label_names", "pad_token_id", "case_segments"):
            if getattr(part, name) != getattr(first, name):
                raise ValueError(f"concatenate: part {k} has {name}={getattr(part, name)!r}, "
                                 f"part 0 has {getattr(first, name)!r}")
    features = {name: [a for part in parts for a in part.features[name]] for name in first.input_names}
    if first.task == "sequence":
        labels = np.concatenate([part.labels for part in parts])
    else:
        labels = [a for part in parts for a in part.labels]
    truncated = np.concatenate([part.truncated if part.truncated is not None else np.zeros(len(part), bool)
                                for part in parts])
    words = None if first.task == "sequence" else [w for part in parts for w in part.words]
    return EncodedData(task=first.task, features=features, labels=labels, label_names=list(first.label_names),
                       num_truncated=int(truncated.sum()), words=words, pad_token_id=first.pad_token_id,
                       truncated=truncated, num_words_dropped=sum(part.num_words_dropped for part in parts),
                       case_segments=first.case_segments)
