"""Teacher outputs computed once over the training data and read per batch by example index.
"""
from __future__ import annotations

import numpy as np

from tfcompress._compat import tf
from tfcompress.config.constants import EXAMPLE_INDEX_KEY
from tfcompress.models import facts


class TeacherCache:
    """Teacher outputs per example, in flat variables indexed by ``example_index``.

    Token-shaped outputs (token logits, hidden states) are stored ragged by example: values
    ``[sum T_i, ...]`` with row splits ``[N + 1]``; a batch gathers its rows and pads to the batch's
    ``T`` (right padding, as ``EncodedData.padded_batch`` does). Attention maps ``[K, heads, T_i, T_i]``
    are stored flat with per-example offsets and rebuilt with ``tf.map_fn``.
    """

    def __init__(self):
        self.variables: dict[str, tf.Variable] = {}
        self.num_examples = 0
        self.num_tokens = 0
        self.nbytes = 0
        self.token_level_logits = False
        self.num_attention_layers = 0
        self.num_heads = 0

    @classmethod
    def build(cls, distiller, data, batch_size: int) -> "TeacherCache":
        config = distiller.distill_config
        lengths = np.asarray(data.lengths(), dtype=np.int64)
        n = len(lengths)
        if n == 0:
            raise ValueError("cannot cache teacher outputs of an empty dataset")
        teacher = distiller.teacher
        num_labels = int(teacher.config.num_labels)
        token_level = data.task == "token"
        width = facts.hidden_size(teacher)
        heads = int(teacher.config.num_attention_heads)
        total_tokens = int(lengths.sum())
        estimate = 4 * (total_tokens * num_labels if token_level else n * num_labels)
        if config.needs_hidden_states:
            estimate += 4 * total_tokens * len(distiller.layer_map) * width
        if config.needs_attentions:
            estimate += 4 * len(distiller.attention_pairs) * heads * int((lengths ** 2).sum())
        limit = config.cache_max_megabytes * 2**20
        if estimate > limit:
            raise ValueError(
                f"DistillConfig.cache_max_megabytes={config.cache_max_megabytes}: caching the teacher "
                f"outputs of {n} examples ({total_tokens} tokens) needs {estimate / 2**20:.0f} MB "
                "(hidden states / attention maps grow with every token). Raise the limit, turn "
                "cache_teacher off, or cache logits only (hidden_loss_weight = attention_loss_weight = 0).")

        forward = tf.function(distiller._teacher_outputs_live, reduce_retracing=True)
        logits_out = [None] * n
        hidden_out = [None] * n
        attention_out = [None] * n
        order = np.argsort(lengths, kind="stable")  # similar lengths together: little padding
        for start in range(0, n, batch_size):
            indices = order[start:start + batch_size]
            features, _ = data.padded_batch(indices)
            outputs = forward({k: tf.constant(v) for k, v in features.items()})
            logits = outputs["logits"].numpy()
            hidden = [h.numpy() for h in outputs.get("hidden", [])]
            attention = [a.numpy() for a in outputs.get("attention", [])]
            for row, example in enumerate(indices):
                length = int(lengths[example])
                logits_out[example] = logits[row, :length] if token_level else logits[row]
                if hidden:
                    hidden_out[example] = np.stack([h[row, :length] for h in hidden], axis=1)  # [T, K, H]
                if attention:
                    attention_out[example] = np.stack(
                        [a[row, :, :length, :length] for a in attention]).reshape(-1)  # K*heads*T*T

        cache = cls()
        cache.num_examples, cache.num_tokens, cache.nbytes = n, total_tokens, estimate
        cache.token_level_logits = token_level

        def variable(name, value):
            # Created outside any Keras layer and held by this plain object, so not tracked or saved.
            cache.variables[name] = tf.Variable(value, trainable=False, name=f"teacher_cache_{name}")

        variable("lengths", lengths.astype(np.int32))
        splits = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        variable("token_splits", splits)
        if token_level:
            variable("logits", np.concatenate(logits_out).astype(np.float32))
        else:
            variable("logits", np.stack(logits_out).astype(np.float32))
        if config.needs_hidden_states:
            variable("hidden", np.concatenate(hidden_out).astype(np.float32))
        if config.needs_attentions:
            cache.num_attention_layers = len(distiller.attention_pairs)
            cache.num_heads = heads
            sizes = np.array([a.size for a in attention_out], dtype=np.int64)
            variable("attention_splits", np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
            variable("attention", np.concatenate(attention_out).astype(np.float32))
        return cache

    @classmethod
    def from_logits(cls, logits: np.ndarray) -> "TeacherCache":
        """Sequence logits ``[N, C]`` per example from a teacher that read the texts with its own
        tokenizer (:mod:`tfcompress.compress.teacher_logits`): no length check, since its token counts
        are not the student's."""
        logits = np.asarray(logits, dtype=np.float32)
        if logits.ndim != 2 or np.isnan(logits).any():
            raise ValueError(f"teacher logits must be a complete [N, C] array, got shape {logits.shape}")
        cache = cls()
        cache.num_examples, cache.nbytes = len(logits), logits.nbytes
        cache.variables["logits"] = tf.Variable(logits, trainable=False, name="teacher_cache_logits")
        return cache

    @classmethod
    def from_token_logits(cls, values: np.ndarray, mask: np.ndarray, lengths, word_hidden: np.ndarray | None = None,
                          word_positions: np.ndarray | None = None, words_per_example=None) -> "TeacherCache":
        """Token logits aligned to the student's tokens (``[sum T_i, C]``, ``T_i`` = ``lengths[i]``) with a
        ``mask`` that is 1 where the teacher gave a target (a word's first sub-token): per-word targets
        of a teacher that read the words with its own tokenizer
        (:func:`tfcompress.compress.teacher_logits.align_to_student`). Lookups check the lengths.

        ``word_hidden`` (``[sum W_i, K, H]``, ``W_i`` = ``words_per_example[i]``) with ``word_positions``
        (``[sum W_i]``, the student's token of each word or -1): the teacher's hidden states per word; a
        lookup returns them as ``word_hidden`` (K tensors ``[B, W, H]``) and ``word_positions`` (``[B, W]``,
        -1 where padded or unseen)."""
        lengths = np.asarray(lengths, dtype=np.int64)
        values = np.asarray(values, dtype=np.float32)
        if values.ndim != 2 or len(values) != int(lengths.sum()) or len(mask) != len(values):
            raise ValueError(f"token logits {values.shape} / mask {np.shape(mask)} do not cover {int(lengths.sum())} "
                             "student tokens")
        cache = cls()
        cache.num_examples, cache.num_tokens, cache.nbytes = len(lengths), int(lengths.sum()), values.nbytes
        cache.token_level_logits = True
        for name, value in (("lengths", lengths.astype(np.int32)),
                            ("token_splits", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)),
                            ("logits", values), ("target_mask", np.asarray(mask, np.float32)[:, None])):
            cache.variables[name] = tf.Variable(value, trainable=False, name=f"teacher_cache_{name}")
        if word_hidden is not None:
            words = np.asarray(words_per_example, dtype=np.int64)
            if (word_positions is None or len(words) != len(lengths) or len(word_hidden) != int(words.sum())
                    or len(word_positions) != len(word_hidden)):
                raise ValueError(f"word hidden states {np.shape(word_hidden)} / positions {np.shape(word_positions)} "
                                 f"do not cover the {int(words.sum())} words of {len(lengths)} examples")
            positions, limits = np.asarray(word_positions, np.int64), np.repeat(lengths, words)
            if (positions >= limits).any():
                word = int(np.argmax(positions >= limits))
                raise ValueError(f"word {word}: student position {positions[word]} is past its example's "
                                 f"{limits[word]} tokens (the positions were made for other data)")
            word_hidden = np.asarray(word_hidden, dtype=np.float16)
            for name, value in (("word_splits", np.concatenate([[0], np.cumsum(words)]).astype(np.int64)),
                                ("word_hidden", word_hidden),
                                ("word_positions", np.asarray(word_positions, np.int32)[:, None])):
                cache.variables[name] = tf.Variable(value, trainable=False, name=f"teacher_cache_{name}")
            cache.nbytes += word_hidden.nbytes
        return cache

    def _gather_words(self, name, index, default):
        """Rows ``[B, most words in the batch, ...]`` of a per-word variable, ``default`` where padded."""
        variables = self.variables
        ragged = tf.RaggedTensor.from_row_splits(variables[name], variables["word_splits"], validate=False)
        return tf.gather(ragged, index).to_tensor(default_value=tf.cast(default, variables[name].dtype))

    def _gather_tokens(self, name, index, batch_length):
        variables = self.variables
        ragged = tf.RaggedTensor.from_row_splits(variables[name], variables["token_splits"], validate=False)
        rows = tf.gather(ragged, index)
        dense = rows.to_tensor()  # [B, longest in batch, ...]
        pad = batch_length - tf.shape(dense)[1]  # > 0 when the batch was padded to a fixed width
        paddings = [[0, 0], [0, pad]] + [[0, 0]] * (len(variables[name].shape) - 1)
        return tf.pad(dense, paddings)

    def lookup(self, features) -> dict:
        variables = self.variables
        index = tf.cast(features[EXAMPLE_INDEX_KEY], tf.int32)
        batch_length = tf.shape(features["input_ids"])[1]
        checks = []
        if "lengths" in variables and "attention_mask" in features:
            lengths = tf.gather(variables["lengths"], index)
            checks.append(tf.debugging.assert_equal(
                lengths, tf.reduce_sum(tf.cast(features["attention_mask"], tf.int32), axis=1),
                message="cached teacher outputs: example lengths differ from the batch's attention_mask "
                        "(example_index must index the dataset given to cache_teacher_outputs)"))
        with tf.control_dependencies(checks):
            if self.token_level_logits:
                logits = self._gather_tokens("logits", index, batch_length)
            else:
                logits = tf.gather(variables["logits"], index)
        result = {"logits": logits}
        if "target_mask" in variables:
            result["target_mask"] = self._gather_tokens("target_mask", index, batch_length)[..., 0]
        if "word_hidden" in variables:
            hidden = tf.cast(self._gather_words("word_hidden", index, 0), tf.float32)  # [B, W, K, H]
            result["word_hidden"] = tf.unstack(hidden, num=variables["word_hidden"].shape[1], axis=2)
            result["word_positions"] = self._gather_words("word_positions", index, -1)[..., 0]  # [B, W]
        if "hidden" in variables:
            hidden = self._gather_tokens("hidden", index, batch_length)  # [B, T, K, H]
            result["hidden"] = tf.unstack(hidden, num=variables["hidden"].shape[1], axis=2)
        if "attention" in variables:
            layers, heads = self.num_attention_layers, self.num_heads
            splits = variables["attention_splits"]

            def one(example):
                length = variables["lengths"][example]
                start, end = splits[example], splits[example + 1]
                block = tf.reshape(variables["attention"][start:end], [layers, heads, length, length])
                pad = batch_length - length
                return tf.pad(block, [[0, 0], [0, 0], [0, pad], [0, pad]])

            maps = tf.map_fn(one, index, fn_output_signature=tf.TensorSpec(
                [layers, heads, None, None], tf.float32))  # [B, K, heads, T, T]
            result["attention"] = tf.unstack(maps, num=layers, axis=1)
        return result
