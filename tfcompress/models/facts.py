"""Facts about a model that every stage asks: its input names, parameter count, depth and width."""
from __future__ import annotations

import inspect

import numpy as np


def model_input_names(model) -> list[str]:
    """Input names the model takes: ``input_ids``, ``attention_mask`` and, when the model uses
    segment ids (its ``call`` takes ``token_type_ids`` and ``config.type_vocab_size > 1``),
    ``token_type_ids``. RoBERTa (type_vocab_size 1) and DistilBERT get two names."""
    parameters = inspect.signature(model.call).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in parameters and getattr(model.config, "type_vocab_size", 0) > 1:
        names.append("token_type_ids")
    return names


def reads_case(model) -> bool:
    """Whether ``model`` was trained with case segment ids (``data.case_segments``; ``config.json``)."""
    return bool(getattr(model.config, "case_segments", False))


def count_params(model, trainable_only: bool = False) -> int:
    """Number of scalars in the model's (unique) weights.

    Args:
        model: a built Keras model or layer.
        trainable_only (bool): count only trainable weights.

    Caveat: wrapper bookkeeping (pruning masks, quantizer ranges) is counted too; strip first
    for the size of the deployable model.
    """
    weights = model.trainable_weights if trainable_only else model.weights
    seen, total = set(), 0
    for weight in weights:
        if id(weight) not in seen:
            seen.add(id(weight))
            total += int(np.prod(weight.shape))
    return total


def num_layers(model) -> int:
    """Transformer blocks of ``model`` (``config.num_hidden_layers``; DistilBERT maps ``n_layers``)."""
    value = getattr(model.config, "num_hidden_layers", None)
    if value is None:
        raise ValueError(f"{type(model).__name__}: config has no num_hidden_layers / n_layers")
    return int(value)


def hidden_size(model) -> int:
    """Width of ``model``'s hidden states (DistilBertConfig maps hidden_size -> dim)."""
    return int(model.config.hidden_size)


def ensure_built(model) -> None:
    """Call ``model`` once on its dummy inputs if it has no variables yet."""
    if not model.built or not model.variables:
        model(model.dummy_inputs, training=False)


# Models whose position ids start after the padding id (RoBERTa's scheme): two of their
# max_position_embeddings rows are never used by real tokens (514 rows -> 512 tokens).
OFFSET_POSITION_MODELS = ("roberta", "xlm-roberta", "camembert", "mpnet")


def max_tokens(model_config) -> int | None:
    """The longest input (special tokens included) the model's position table holds, or None."""
    limit = getattr(model_config, "max_position_embeddings", None)
    if limit is None:
        return None
    if model_config.model_type in OFFSET_POSITION_MODELS:
        limit -= int(model_config.pad_token_id or 0) + 1
    return int(limit)
