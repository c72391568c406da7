"""Sequence-classification heads that pool the encoder output some other way than BERT's [CLS] pooler.

Why: ``TFBertForSequenceClassification`` classifies from ``tanh(W h_[CLS])``, the pooler that BERT's
next-sentence pre-training trained. Sentence-transformers checkpoints such as the packaged
all-MiniLM-L6-v2 were trained with **mean pooling** over the real tokens and ship an untrained pooler
(bias all 0, weight std 0.009, measured), so their [CLS] vector is not a sentence summary. The mean
head classifies from that mean instead: ``logits = W dropout(sum_t m_t h_t / sum_t m_t)``, with
``m`` the attention mask, so padding never counts and a batch padded to its own longest sentence
gives the same logits as one padded to a fixed length.

The choice is recorded in the saved ``config.json`` as ``classifier_pooling`` (``"cls"``, the
default, or ``"mean"``), so :func:`tfcompress.models.load_model` rebuilds the same head from a saved
directory. A mean-pooling model has no pooler weights. ``pooling="auto"`` (the recipes' default)
picks the head a checkpoint was trained for: a sentence-transformers checkpoint declares its pooling
in ``modules.json`` / ``1_Pooling/config.json`` (all-MiniLM-L6-v2: mean), anything else gets ``cls``.
Measured on SST-2 (2 epochs, 872 test sentences, benchmarks/RESULTS.md): mean 0.8956 against 0.8922
and 0.8945 for the [CLS] pooler: no worse, within run-to-run noise, and 147,840 fewer parameters.

Supported: BERT-architecture encoders (BERT, MiniLM and the sentence-transformers models built on
BERT). Other architectures keep their own [CLS] heads; asking them for ``"mean"`` is an error, and
so is ``"auto"`` on a checkpoint trained for mean pooling (all-mpnet-base-v2): the user picks ``"cls"``
knowingly instead of getting it silently (measured: MPNet's [CLS] head reaches 0.9358 on SST-2).

Example:
    >>> import tfcompress as tfc
    >>> model = tfc.load_model(labels=["negative", "positive"], pooling="mean")   # doctest: +SKIP
    >>> type(model).__name__                                                        # doctest: +SKIP
    'TFBertMeanPoolingForSequenceClassification'
"""
from __future__ import annotations

from tfcompress._compat import keras, tf
from tfcompress.errors import ConfigError

POOLINGS = ("cls", "mean")
CONFIG_FIELD = "classifier_pooling"
MEAN_ARCHITECTURES = ("bert",)


def masked_mean(hidden_states, attention_mask):
    """Mean of ``hidden_states`` ``[batch, length, width]`` over the positions where ``attention_mask``
    ``[batch, length]`` is 1 (a row with no real token gives zeros, not NaN).

    Computed as ``sum_t h_t * (m_t / sum m)``, not ``(sum_t m_t h_t) / sum m``: in a full-integer
    TFLite graph the SUM's int8 output then has the range of a mean, not of a sum over up to
    ``max_length`` tokens, and no int8 DIV follows it. On the SST-2 MiniLM (trimmed, seq 44, same
    calibration) both forms gave the same int8 accuracy (0.8739 vs Keras 0.8922): the int8 loss of
    this head is elsewhere (the Dense activations, benchmarks/RESULTS.md), so the form is a safeguard
    for longer inputs, not a measured gain.

    An integer mask (0/1) is turned into weights by a GATHER of ``[0, 1]`` rather than a CAST: the
    same values, and an op an integer-only graph can hold (the LiteRT quantizer has no CAST rule)."""
    if attention_mask is None:
        return tf.reduce_mean(hidden_states, axis=1)
    attention_mask = tf.convert_to_tensor(attention_mask)
    if attention_mask.dtype.is_integer:
        mask = tf.gather(tf.constant([0.0, 1.0], hidden_states.dtype), tf.cast(attention_mask, tf.int32))[:, :, None]
    else:
        mask = tf.cast(attention_mask, hidden_states.dtype)[:, :, None]
    count = tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), tf.cast(1.0, hidden_states.dtype))
    return tf.reduce_sum(hidden_states * (mask / count), axis=1)


def pooling_of(config) -> str:
    """The pooling a config asks for (``"cls"`` when it says nothing)."""
    return str(getattr(config, CONFIG_FIELD, None) or "cls")


def checkpoint_pooling(directory) -> str | None:
    """The pooling a sentence-transformers checkpoint was trained with, from its ``modules.json`` and
    the Pooling module's ``config.json`` (``"mean"`` or ``"cls"``); None when the directory is not a
    sentence-transformers checkpoint or uses another pooling (max, weighted mean...)."""
    import json
    from pathlib import Path

    directory = Path(directory)
    try:
        modules = json.loads((directory / "modules.json").read_text())
        pooling = next(m for m in modules if str(m.get("type", "")).endswith("Pooling"))
        settings = json.loads((directory / pooling.get("path", "") / "config.json").read_text())
    except (OSError, ValueError, StopIteration, AttributeError, TypeError):
        return None
    modes = [name for name in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")
             if settings.get(f"pooling_mode_{name}")]
    return {("mean_tokens",): "mean", ("cls_token",): "cls"}.get(tuple(modes))


def resolve(pooling: str, config, directory, task: str = "sequence") -> str:
    """``"auto"`` -> what the checkpoint was trained with: a saved ``classifier_pooling``, else a
    sentence-transformers Pooling config (mean where the architecture has a mean head), else ``"cls"``.
    Other values are returned as they are."""
    if pooling != "auto":
        return pooling
    if task != "sequence":
        return "cls"
    saved = getattr(config, CONFIG_FIELD, None)
    if saved:
        return str(saved)
    trained = checkpoint_pooling(directory)
    if trained == "mean" and config.model_type not in MEAN_ARCHITECTURES:
        # Never switch heads silently: the checkpoint's sentence vector is a mean tfcompress cannot
        # build for this architecture; the user chooses the [CLS] head knowingly.
        raise ConfigError(f"pooling='auto': {directory} was trained with mean pooling, and the mean head is "
                          f"implemented for {', '.join(MEAN_ARCHITECTURES)} only (this is {config.model_type!r}); "
                          "choose the [CLS] head: --pooling cls for the run's model, --set teacher.pooling=cls for a "
                          "--teacher checkpoint")
    return trained or "cls"


def _bert_mean_pooling_class():
    from transformers import TFBertForSequenceClassification
    from transformers.modeling_tf_outputs import TFSequenceClassifierOutput
    from transformers.modeling_tf_utils import get_initializer, unpack_inputs
    from transformers.models.bert.modeling_tf_bert import TFBertMainLayer, TFBertPreTrainedModel

    class TFBertMeanPoolingForSequenceClassification(TFBertForSequenceClassification):
        """``TFBertForSequenceClassification`` with a masked-mean head instead of the [CLS] pooler.

        Same weight names as the parent for the encoder (``bert/...``) and ``classifier``; no
        ``bert/pooler``. Inputs, outputs and loss are the parent's.

        Args:
            config (transformers.BertConfig): with ``classifier_pooling="mean"``.
        """

        _keys_to_ignore_on_load_unexpected = (
            list(TFBertForSequenceClassification._keys_to_ignore_on_load_unexpected) + [r"pooler"])

        def __init__(self, config, *inputs, **kwargs):
            # Skip the parent's __init__: it builds a main layer with a pooler this head never uses
            # (unused variables would get no gradient and still be saved).
            TFBertPreTrainedModel.__init__(self, config, *inputs, **kwargs)
            self.num_labels = config.num_labels
            self.bert = TFBertMainLayer(config, add_pooling_layer=False, name="bert")
            dropout = config.classifier_dropout if config.classifier_dropout is not None \
                else config.hidden_dropout_prob
            self.dropout = keras.layers.Dropout(rate=dropout)
            self.classifier = keras.layers.Dense(
                units=config.num_labels, kernel_initializer=get_initializer(config.initializer_range),
                name="classifier")
            self.config = config

        @unpack_inputs
        def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, output_attentions=None, output_hidden_states=None,
                 return_dict=None, labels=None, training=False):
            outputs = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                position_ids=position_ids, head_mask=head_mask, inputs_embeds=inputs_embeds,
                output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                return_dict=True, training=training)
            pooled = masked_mean(outputs.last_hidden_state, attention_mask)
            logits = self.classifier(inputs=self.dropout(inputs=pooled, training=training))
            loss = None if labels is None else self.hf_compute_loss(labels=labels, logits=logits)
            if not return_dict:
                output = (logits,) + tuple(v for v in (outputs.hidden_states, outputs.attentions) if v is not None)
                return ((loss,) + output) if loss is not None else output
            return TFSequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                              attentions=outputs.attentions)

    return TFBertMeanPoolingForSequenceClassification


_CLASSES: dict[str, type] = {}


def sequence_class(config, default_class):
    """The model class that builds ``config``'s pooling: ``default_class`` for ``"cls"``.

    Raises:
        ValueError: an unknown pooling, or ``"mean"`` for an architecture other than BERT.
    """
    pooling = pooling_of(config)
    if pooling not in POOLINGS:
        raise ValueError(f"{CONFIG_FIELD}={pooling!r}: expected one of {POOLINGS}")
    if pooling == "cls":
        return default_class
    if config.model_type not in MEAN_ARCHITECTURES:
        raise ValueError(f"{CONFIG_FIELD}='mean' is implemented for BERT-architecture encoders (BERT, "
                         f"MiniLM); this model is {config.model_type!r}: use pooling='cls'")
    if "bert" not in _CLASSES:
        _CLASSES["bert"] = _bert_mean_pooling_class()
    return _CLASSES["bert"]
