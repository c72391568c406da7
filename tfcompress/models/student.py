"""Students built from a teacher's own blocks (a layer subset) or from a smaller config.
"""
from __future__ import annotations

import copy
import re
from typing import Sequence

from tfcompress.models import facts, surgery
from tfcompress.utils import get_logger

logger = get_logger("models")

def uniform_layer_indices(num_teacher_layers: int, num_layers: int) -> list[int]:
    """0-based teacher blocks a ``num_layers`` student keeps: evenly spaced, first and last included.

    12 -> 6 gives [0, 2, 4, 7, 9, 11], the blocks DistilBERT was initialised from; 6 -> 3 gives
    [0, 2, 5]; 2 -> 1 gives [0].
    """
    if not 1 <= num_layers <= num_teacher_layers:
        raise ValueError(f"num_layers={num_layers}: must be between 1 and the teacher's "
                         f"{num_teacher_layers} layers")
    if num_layers == 1:
        return [0]
    return [int(round(i * (num_teacher_layers - 1) / (num_layers - 1))) for i in range(num_layers)]

# student construction
# --------------------------------------------------------------------------------------------------

_BLOCK_NAME = re.compile(r"(?<=/)layer_\._(\d+)(?=/)")


def make_student(teacher, num_layers: int | None = None, config_overrides: dict | None = None,
                 layer_indices: Sequence[int] | None = None):
    """Build a student of the teacher's architecture (same class, labels, vocabulary).

    Two ways:

    * **layer subset** (no ``config_overrides``): keep ``layer_indices`` (0-based teacher blocks), or
      ``num_layers`` evenly spaced blocks including the first and last (default: half the layers,
      rounded up: 6 -> blocks [0, 2, 5]; 12 -> [0, 2, 4, 7, 9, 11], DistilBERT's choice), and copy the
      embeddings, those blocks, the pooler and the classifier from the teacher.
    * **fresh config** (``config_overrides`` given, e.g. ``{"hidden_size": 256,
      "intermediate_size": 1024}``): the teacher's config with the overrides (and ``num_layers``),
      randomly initialised. Width changes make the Distiller learn hidden-state projections.

    Any other Hugging Face TF model with the same tokenizer and labels can be given to
    :class:`Distiller` as the student directly.

    Args:
        teacher (transformers.TFPreTrainedModel): BERT-family (``model.<prefix>.encoder.layer``:
            BERT, RoBERTa, ELECTRA, ...) or DistilBERT (``model.distilbert.transformer.layer``).
        num_layers (int | None): number of transformer blocks of the student.
        config_overrides (dict | None): config fields to change for a fresh student.
        layer_indices (Sequence[int] | None): teacher blocks to keep (layer-subset mode only).

    Returns:
        A built ``transformers.TFPreTrainedModel`` of the teacher's class.
    """
    facts.ensure_built(teacher)
    teacher_layers = facts.num_layers(teacher)
    config = copy.deepcopy(teacher.config)
    if config_overrides:
        if layer_indices is not None:
            raise ValueError("layer_indices copies teacher blocks; it cannot be combined with "
                             "config_overrides (a fresh, randomly initialised student)")
        for key, value in config_overrides.items():
            if not hasattr(config, key):
                raise ValueError(f"config_overrides[{key!r}]: {type(config).__name__} has no such field")
            setattr(config, key, value)
        if num_layers is not None:
            if num_layers < 1:
                raise ValueError(f"num_layers={num_layers}: must be >= 1")
            config.num_hidden_layers = int(num_layers)
        student = type(teacher).from_config(config)
        facts.ensure_built(student)
        return student

    if layer_indices is not None:
        indices = [int(i) for i in layer_indices]
        if not indices or any(not 0 <= i < teacher_layers for i in indices) \
                or len(set(indices)) != len(indices) or indices != sorted(indices):
            raise ValueError(f"layer_indices={list(layer_indices)!r}: need distinct, increasing 0-based "
                             f"block numbers below the teacher's {teacher_layers} layers")
        if num_layers is not None and num_layers != len(indices):
            raise ValueError(f"num_layers={num_layers} disagrees with layer_indices={indices!r}")
    else:
        if num_layers is None:
            num_layers = (teacher_layers + 1) // 2
        indices = uniform_layer_indices(teacher_layers, int(num_layers))

    config.num_hidden_layers = len(indices)
    student = type(teacher).from_config(config)
    facts.ensure_built(student)
    teacher_by_name = {surgery.relative_weight_name(v): v for v in teacher.weights}
    missing = []
    for variable in student.weights:
        name = surgery.relative_weight_name(variable)
        teacher_name = _BLOCK_NAME.sub(lambda m: f"layer_._{indices[int(m.group(1))]}", name, count=1)
        source = teacher_by_name.get(teacher_name)
        if source is None or tuple(source.shape) != tuple(variable.shape):
            missing.append(name)
            continue
        variable.assign(source)
    if missing:
        raise ValueError(
            f"make_student: could not match {len(missing)} student weights to the teacher's "
            f"({missing[:3]}...). Layer-subset students need a plain (unwrapped) model whose blocks are "
            "named layer_._N (BERT family, DistilBERT); use config_overrides for a fresh student.")
    logger.info("student with %d of %d teacher layers (blocks %s)", len(indices), teacher_layers, indices)
    return student
