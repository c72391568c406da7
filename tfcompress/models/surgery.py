"""Layer surgery: find and replace the layers nested inside a Hugging Face TF model.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator

from tfcompress._compat import keras, tf


@dataclass
class LayerRef:
    """Where a layer sits inside a model: ``getattr(parent, attr)`` or ``getattr(parent, attr)[index]``.

    Args:
        path (str): readable path of Python attribute names, list items as ``name.i``
            (``"bert/encoder/layer.0/attention/self_attention/query"``).
        parent (keras.layers.Layer): the layer that owns the attribute.
        attr (str): the attribute name on ``parent``.
        index (int | None): position in the list held by ``attr``, or None for a plain attribute.
        layer (keras.layers.Layer): the layer found there (updated by :meth:`set`).
    """

    path: str
    parent: Any
    attr: str
    index: int | None
    layer: Any

    def get(self):
        value = getattr(self.parent, self.attr)
        return value if self.index is None else value[self.index]

    def set(self, new_layer) -> None:
        replace_layer(self, new_layer)


def _children(layer) -> Iterator[tuple[str, int | None, Any]]:
    """(attribute, list index or None, sub-layer) in attribute-assignment order."""
    for attr, value in list(vars(layer).items()):
        if attr.startswith("_"):
            continue
        if isinstance(value, keras.layers.Layer):
            yield attr, None, value
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                if isinstance(item, keras.layers.Layer):
                    yield attr, index, item


def iter_layers(model, into_wrappers: bool = False) -> Iterator[LayerRef]:
    """Every nested layer of ``model`` (depth first, each object once at its first path).

    Args:
        model (keras.layers.Layer): the root; not itself yielded.
        into_wrappers (bool): also walk into ``keras.layers.Wrapper`` layers (TFMOT wrappers), whose
            wrapped layer then appears as ``.../query/layer``.
    """
    seen = {id(model)}

    def walk(layer, prefix):
        for attr, index, child in _children(layer):
            if id(child) in seen:  # shared or back-referenced layers (tied embeddings) once only
                continue
            seen.add(id(child))
            name = attr if index is None else f"{attr}.{index}"
            path = f"{prefix}/{name}" if prefix else name
            yield LayerRef(path=path, parent=layer, attr=attr, index=index, layer=child)
            if into_wrappers or not isinstance(child, keras.layers.Wrapper):
                yield from walk(child, path)

    yield from walk(model, "")


def find_layers(model, include: str | None = None, exclude: str | None = None,
                kinds=(keras.layers.Dense,), into_wrappers: bool = False) -> list[LayerRef]:
    """Nested layers of ``model`` of the given ``kinds`` whose path matches ``include`` but not ``exclude``.

    Args:
        model (keras.layers.Layer): an HF TF model (or any Keras layer).
        include (str | None): regex searched (``re.search``) in the path; None keeps all.
        exclude (str | None): regex; matching paths are dropped.
        kinds (tuple[type, ...] | None): layer classes to keep (isinstance); None keeps every layer.
        into_wrappers (bool): see :func:`iter_layers`. By default a wrapped ``Dense`` is not found
            (the wrapper is, if ``kinds`` includes it), so applying a technique twice is visible.

    Returns:
        list[LayerRef] in model order.
    """
    include_re = re.compile(include) if include else None
    exclude_re = re.compile(exclude) if exclude else None
    refs = []
    for ref in iter_layers(model, into_wrappers=into_wrappers):
        if kinds is not None and not isinstance(ref.layer, tuple(kinds)):
            continue
        if include_re is not None and not include_re.search(ref.path):
            continue
        if exclude_re is not None and exclude_re.search(ref.path):
            continue
        refs.append(ref)
    return refs


# The transformer-block list: BERT/RoBERTa/ELECTRA `<base>/encoder/layer.i`, DistilBERT `distilbert/transformer/layer.i`.
ENCODER_BLOCK_PATTERN = r"(^|/)(encoder|transformer)/layer\.\d+/"


def encoder_dense_layers(model) -> list[LayerRef]:
    """Every ``Dense`` inside the transformer blocks: q, k, v, attention output, intermediate, output
    (6 per block). Not the classifier, pooler, pre-classifier or ELECTRA's embedding projection.

    Args:
        model: an HF TF BERT, MiniLM, DistilBERT, RoBERTa or ELECTRA model.

    Raises:
        ValueError: none found (an unsupported family, or every Dense already wrapped).
    """
    refs = find_layers(model, include=ENCODER_BLOCK_PATTERN)
    if not refs:
        raise ValueError(
            f"no Dense layers found inside transformer blocks of {type(model).__name__} (paths matching "
            f"{ENCODER_BLOCK_PATTERN!r}); supported: BERT, MiniLM, DistilBERT, RoBERTa, ELECTRA, and "
            "layers already wrapped by a technique are not returned")
    return refs


def replace_layer(ref: LayerRef, new_layer) -> None:
    """Put ``new_layer`` where ``ref`` points, keeping Keras' tracking consistent.

    A plain attribute is set with ``setattr`` (Keras untracks the old object when its last reference
    goes and tracks the new one once). A list item is replaced by assigning a new list to the
    attribute rather than mutating the tracked list in place, because TensorFlow refuses to checkpoint
    a tracked list after a non-append mutation.

    Weight names are fixed when a layer is built, so putting the original layer back (stripping)
    restores exactly the original variable names and ``save_pretrained``/``from_pretrained`` round-trip.

    Args:
        ref (LayerRef): from :func:`find_layers`; ``ref.layer`` is updated to ``new_layer``.
        new_layer (keras.layers.Layer): e.g. ``PruneLowMagnitude(ref.layer, ...)`` or the original layer.
    """
    if not isinstance(new_layer, keras.layers.Layer):
        raise TypeError(f"new_layer for {ref.path} must be a tf_keras Layer, got {type(new_layer).__name__}")
    if ref.index is None:
        setattr(ref.parent, ref.attr, new_layer)
    else:
        items = list(getattr(ref.parent, ref.attr))
        items[ref.index] = new_layer
        setattr(ref.parent, ref.attr, items)
    ref.layer = new_layer


def relative_weight_name(variable) -> str:
    """A weight's name without its model's instance prefix and ``:0``, so two models of one class match:
    ``"tf_bert_for_sequence_classification_1/bert/encoder/layer_._0/..."`` -> ``"bert/encoder/layer_._0/..."``."""
    name = variable.name.split(":")[0]
    return name.split("/", 1)[1] if "/" in name else name


def word_embedding_ref(model) -> tuple[Any, str]:
    """The word-embedding layer and the name of its ``[vocab_size, dim]`` weight attribute.

    Returns:
        (layer, attr): ``getattr(layer, attr)`` is the embedding matrix variable (``"weight"`` for
        BERT, DistilBERT, RoBERTa, ELECTRA).
    """
    layer = model.get_input_embeddings()
    vocab_size = model.config.vocab_size
    for attr in ("weight", "embeddings", "word_embeddings"):
        value = getattr(layer, attr, None)
        if isinstance(value, tf.Variable) and value.shape.rank == 2 and value.shape[0] == vocab_size:
            return layer, attr
    for attr, value in vars(layer).items():
        if isinstance(value, tf.Variable) and value.shape.rank == 2 and value.shape[0] == vocab_size:
            return layer, attr
    raise ValueError(f"no [{vocab_size}, dim] embedding variable found on {type(layer).__name__}")




def select_dense_layers(model, include: str | None = None, exclude: str | None = None,
                        include_classifier: bool = False, section: str = "layers",
                        allow_empty: bool = False) -> list[LayerRef]:
    """The Dense layers a technique wraps: the encoder Dense layers (plus every other Dense, e.g.
    classifier and pooler, with ``include_classifier``), filtered by ``include``/``exclude`` regexes on
    the layer path. Shared by pruning and QAT so both select the same way.

    Args:
        section: config section named in errors (``"prune"``, ``"qat"``).
        allow_empty: whether ``exclude`` may remove every layer (pruning only the embeddings).

    Raises:
        ValueError: a regex selects nothing or excludes nothing; the message lists the candidates.
    """
    import re

    candidates = encoder_dense_layers(model)
    if include_classifier:
        chosen = {id(ref.layer) for ref in candidates}
        candidates += [ref for ref in find_layers(model) if id(ref.layer) not in chosen]
    listing = ", ".join(ref.path for ref in candidates[:8]) + (" ..." if len(candidates) > 8 else "")
    selected = candidates
    if include:
        selected = [ref for ref in selected if re.search(include, ref.path)]
        if not selected:
            raise ValueError(f"{section}.include={include!r}: matches none of the {len(candidates)} "
                             f"candidate Dense layers ({listing})")
    if exclude:
        before = len(selected)
        selected = [ref for ref in selected if not re.search(exclude, ref.path)]
        if len(selected) == before:
            raise ValueError(f"{section}.exclude={exclude!r}: matches none of the selected Dense "
                             f"layers ({listing}), so it excludes nothing; fix the pattern")
        if not selected and not allow_empty:
            raise ValueError(f"{section}.exclude={exclude!r}: excludes every candidate layer; "
                             "nothing would be wrapped")
    return selected
