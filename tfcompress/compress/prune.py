"""Magnitude pruning of Hugging Face TF encoders with TFMOT's own machinery.

TFMOT's whole-model entry points (``prune_low_magnitude(model)``, ``strip_pruning(model)``) refuse
subclassed models, and every HF TF model is subclassed. Its per-layer pieces work fine on the
``Dense`` layers nested inside the transformer blocks, so this module does layer surgery:

* :func:`apply` replaces each selected nested layer, in place, by TFMOT's
  ``pruning_wrapper.PruneLowMagnitude`` with a TFMOT ``PolynomialDecay`` or ``ConstantSparsity``
  schedule (optionally ``block_size`` or 2:4 ``sparsity_m_by_n``). Masks, thresholds and mask
  updates are TFMOT's; nothing here computes a mask.
* :func:`hooks` gives the :class:`~tfcompress.train.Trainer` a hook that does what TFMOT's
  ``UpdatePruningStep`` callback does in ``model.fit``: it sets each wrapper's ``pruning_step`` before
  every optimizer step, and the wrapper's own ``call(training=True)`` (inside the Trainer's
  ``tf.function``) runs ``conditional_mask_update()`` and ``weight_mask_op()``. It also reports what
  ``PruningSummaries`` writes (per-layer mask sparsity and threshold) plus the global sparsity.
* :func:`strip` applies the masks one last time and puts the original layer objects back: a plain HF
  model whose kernels hold the zeros (``strip_pruning`` semantics), which ``save_model``/``load_model``
  round-trip.
* :func:`sparsity_report` and :func:`saved_size` measure the result.

Schedule steps. TFMOT's wrapper adds 1 to ``pruning_step`` in every training call and then asks the
schedule, so with ``UpdatePruningStep`` (which starts the counter at 0) the schedule sees steps
1, 2, ..., N for N optimizer steps. The hook keeps exactly that convention: before optimizer step
``s`` (0-based) it assigns ``pruning_step = s``, the forward pass makes it ``s + 1``. With gradient
accumulation the wrapper is called once per micro-batch; the hook's ``extra_losses`` (run inside
the compiled step after each forward) puts the counter back to ``s``, so every micro-batch of one
optimizer step sees schedule step ``s + 1`` and the schedule advances only on optimizer steps.

Example::

    from tfcompress.compress import prune
    from tfcompress.compress import prune
    from tfcompress.config import training
    from tfcompress.config.training import TrainConfig
    from tfcompress.train.trainer import Trainer

    config = training.PruneConfig(final_sparsity=0.8)
    train_config = TrainConfig(epochs=2)
    total = ...  # optimizer steps of the run (Trainer: ceil(batches / grad_accum_steps) * epochs)
    prune.apply(model, config, total_steps=total)
    Trainer(model, "sequence", train_config, "runs/prune", hooks=prune.hooks(config)).fit(train, dev)
    prune.strip(model)
    print(prune.sparsity_report(model)["global"])

Caveats:
    * The Trainer restores its *best* evaluated weights at the end. An evaluation before the end of
      the pruning schedule sees a less sparse model; if it scores best, the restored model is less
      sparse than asked. The hook warns at the end of training when that happened; evaluate only
      after ``end_step`` (``eval_every``) or use ``restore_best=False`` for pruning runs.
    * 2:4 masks are computed once, at schedule step 1 (TFMOT's rule for ``sparsity_m_by_n``), from
      the weights at the start of the run: prune a fine-tuned model and fine-tune on (prune-and-
      fine-tune), rather than pruning random or pretrained-only weights to 2:4.
    * Pruned weights keep receiving gradients (TFMOT masks the weight at each forward pass, it does
      not mask gradients); the zeros are exact only after a forward pass or :func:`strip`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_schedule as tfmot_schedule
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper as tfmot_wrapper

from tfcompress._compat import keras, tf
from tfcompress.config import PruneConfig
from tfcompress.config.constants import WEIGHT_FILE_PATTERNS
from tfcompress.models.surgery import find_layers, iter_layers, replace_layer, select_dense_layers, word_embedding_ref
from tfcompress.train.trainer import Hook
from tfcompress.utils import get_logger, gzip_size

log = get_logger("prune")

PruneLowMagnitude = tfmot_wrapper.PruneLowMagnitude

def make_schedule(config: PruneConfig, total_steps: int | None = None):
    """The TFMOT ``PruningSchedule`` of ``config`` for a run of ``total_steps`` optimizer steps."""
    begin, end, frequency = config.resolve_steps(total_steps)
    if config.schedule == "constant" or config.structure == "2:4":
        return tfmot_schedule.ConstantSparsity(float(config.final_sparsity), begin_step=begin,
                                               end_step=end, frequency=frequency)
    return tfmot_schedule.PolynomialDecay(
        initial_sparsity=float(config.initial_sparsity), final_sparsity=float(config.final_sparsity),
        begin_step=begin, end_step=end, power=config.power, frequency=frequency)

# --------------------------------------------------------------------------------------------------
# The embedding table
# --------------------------------------------------------------------------------------------------

class PruneLowMagnitudeEmbeddings(PruneLowMagnitude):
    """TFMOT's ``PruneLowMagnitude`` around an HF embeddings layer, pruning its word table.

    HF ``TF*Embeddings`` layers hold the ``[vocab, dim]`` table as a raw weight (``self.weight``) and
    gather from it; they are not ``keras.layers.Embedding`` (which TFMOT's registry knows). TFMOT
    accepts any layer with a ``get_prunable_weights()`` method, so the embeddings layer gets one that
    returns only the word table (position and segment tables stay dense), and TFMOT's wrapper does the
    rest unchanged: mask and threshold variables, schedule, ``conditional_mask_update``,
    ``weight_mask_op`` on every call.

    The only difference is the call signature: the HF main layer calls its embeddings with keyword
    arguments (``self.embeddings(input_ids=..., position_ids=..., ...)``) and Keras needs the first
    ``call`` argument to have the name it is passed by; the body is TFMOT's ``call``.

    Args:
        layer (keras.layers.Layer): the HF embeddings layer (built).
        weight_attr (str): the table's attribute on ``layer`` (from ``models.word_embedding_ref``).
        **kwargs: ``PruneLowMagnitude`` arguments (pruning_schedule, block_size, ...).
    """

    def __init__(self, layer, weight_attr: str = "weight", **kwargs):
        table = getattr(layer, weight_attr)
        # a plain function attribute: Keras does not track it, so checkpoints and h5 are unchanged
        layer.get_prunable_weights = lambda: [table]
        super().__init__(layer, **kwargs)
        self.weight_attr = weight_attr

    def call(self, input_ids=None, training=None, **kwargs):
        return super().call(input_ids, training=training, **kwargs)

    def get_config(self):
        config = super().get_config()
        config["weight_attr"] = self.weight_attr
        return config


# --------------------------------------------------------------------------------------------------
# apply / strip
# --------------------------------------------------------------------------------------------------

def _embedding_path(model, layer) -> str | None:
    for ref in iter_layers(model):
        if ref.layer is layer:
            return ref.path
    return None


def select_layers(model, config: PruneConfig) -> list:
    """The ``LayerRef`` of every ``Dense`` that :func:`apply` would wrap (without wrapping anything).

    Candidates: the encoder Dense layers, plus every other Dense (classifier, pooler) with
    ``include_classifier``; then ``include``/``exclude``.

    Raises:
        ValueError: the model already holds pruning wrappers, or a regex selects nothing (the
            message lists the candidate paths).
    """
    wrapped = find_layers(model, kinds=(PruneLowMagnitude,))
    if wrapped:
        raise ValueError(f"model already holds {len(wrapped)} pruning wrappers (e.g. {wrapped[0].path}); "
                         "call prune.strip(model) before applying pruning again")
    return select_dense_layers(model, config.include, config.exclude, config.include_classifier,
                               section="prune", allow_empty=config.prune_embeddings)


def apply(model, config: PruneConfig, total_steps: int | None = None):
    """Wrap the selected nested layers of ``model`` in TFMOT ``PruneLowMagnitude``, in place.

    Every check (config, schedule window against ``total_steps``, regex selection) runs before the
    model is touched. The wrappers are built by one inference call on ``model.dummy_inputs`` so their
    mask/threshold/step variables exist before the Trainer creates its optimizer and checkpoints.
    The selected paths are logged; :func:`pruned_layers` lists them later.

    Args:
        model (transformers.TFPreTrainedModel): a built HF TF model (BERT, MiniLM, DistilBERT,
            RoBERTa, ELECTRA), fine-tuned (prune-and-fine-tune) or pretrained (prune during
            fine-tuning).
        config (PruneConfig): what and how to prune.
        total_steps (int | None): optimizer steps of the coming run; needed when ``end_step`` is None.

    Returns:
        The same ``model`` object, wrapped.
    """
    if not isinstance(config, PruneConfig):
        raise TypeError(f"config must be a PruneConfig, got {type(config).__name__}")
    config.validate()
    schedule = make_schedule(config, total_steps)
    refs = select_layers(model, config)
    embedding = None
    if config.prune_embeddings:
        layer, attr = word_embedding_ref(model)
        embedding_refs = [ref for ref in iter_layers(model) if ref.layer is layer]
        if not embedding_refs:
            raise ValueError(f"the word-embedding layer {layer.name} is not reachable as an attribute "
                             "path of the model; cannot wrap it")
        embedding = (embedding_refs[0], attr)

    m_by_n = (2, 4) if config.structure == "2:4" else None
    if m_by_n:
        for ref in refs:
            fan_in = int(ref.layer.kernel.shape[0])
            if fan_in % 4:
                raise ValueError(f"prune.structure='2:4': {ref.path} has input dimension {fan_in}, not a "
                                 "multiple of 4; exclude it (prune.exclude)")
    options = dict(pruning_schedule=schedule, block_size=config.block_size,
                   block_pooling_type=config.block_pooling_type, sparsity_m_by_n=m_by_n)
    paths = []
    for ref in refs:
        replace_layer(ref, PruneLowMagnitude(ref.layer, **options))
        paths.append(ref.path)
    if embedding is not None:
        ref, attr = embedding
        replace_layer(ref, PruneLowMagnitudeEmbeddings(ref.layer, weight_attr=attr, **options))
        paths.append(f"{ref.path}/{attr}")
    dummy = getattr(model, "dummy_inputs", None)
    if dummy is not None:
        model(dummy, training=False)  # builds the wrappers (masks of ones: outputs unchanged)
    log.info("pruning %d layers with TFMOT %s (final sparsity %.3g, structure %s): %s",
             len(paths), type(schedule).__name__, config.final_sparsity, config.structure, ", ".join(paths))
    log.info("schedule %s", schedule.get_config()["config"])
    return model


def _wrapper_refs(model) -> list:
    return find_layers(model, kinds=(PruneLowMagnitude,))


def _weight_label(ref) -> str:
    wrapper = ref.layer
    if isinstance(wrapper, PruneLowMagnitudeEmbeddings):
        return f"{ref.path}/{wrapper.weight_attr}"
    return ref.path


def pruned_layers(model) -> list[str]:
    """Paths of the weights currently under a pruning wrapper (``.../embeddings/weight`` for the table)."""
    return [_weight_label(ref) for ref in _wrapper_refs(model)]


def _masked_value(weight, mask) -> np.ndarray:
    return (weight.numpy() * mask.numpy()).astype(weight.dtype.as_numpy_dtype)


def strip(model):
    """Remove every pruning wrapper, leaving the original layer objects with the zeros in their kernels.

    Like TFMOT's ``strip_pruning`` (which refuses subclassed models), plus one last
    ``weight = weight * mask`` so the optimizer's last update to pruned weights is undone (TFMOT
    relies on ``UpdatePruningStep.on_epoch_end`` for that). Weight names are those the layers were
    built with, so ``save_model`` / ``load_model`` round-trip the sparse model as a normal HF directory.

    Args:
        model: a model that went through :func:`apply` (a model without wrappers is returned as is).

    Returns:
        The same ``model`` object, unwrapped.
    """
    refs = _wrapper_refs(model)
    for ref in refs:
        wrapper = ref.layer
        for weight, mask, _ in wrapper.pruning_vars:
            weight.assign(_masked_value(weight, mask))
        inner = wrapper.layer
        replace_layer(ref, inner)
        if "get_prunable_weights" in vars(inner):  # set by TFMOT's registry or our embeddings wrapper
            delattr(inner, "get_prunable_weights")
    if refs:
        log.info("stripped %d pruning wrappers", len(refs))
    return model


# --------------------------------------------------------------------------------------------------
# Training hook
# --------------------------------------------------------------------------------------------------

class PruningHook(Hook):
    """Drives TFMOT pruning wrappers from the :class:`~tfcompress.train.Trainer`.

    What TFMOT's ``UpdatePruningStep`` does for ``model.fit``: ``pruning_step = s`` before optimizer
    step ``s``; the wrapper's ``call(training=True)`` inside the compiled step increments it and runs
    ``conditional_mask_update``. Under gradient accumulation :meth:`extra_losses` resets the counter
    after each micro-batch so the schedule advances once per optimizer step.

    Checkpoints: masks, thresholds and ``pruning_step`` are variables of the wrappers, i.e. of the
    model, so the Trainer's checkpoint (``model=...``) holds them; the step itself comes back from
    the Trainer's restored global step. Nothing extra is needed in :meth:`checkpoint_objects`.

    Args:
        config (PruneConfig): the config given to :func:`apply` (used for the end-of-run check).
    """

    def __init__(self, config: PruneConfig | None = None):
        self.config = config
        self.refs = []
        self.wrappers = []

    def on_train_begin(self, trainer) -> None:
        self.refs = _wrapper_refs(trainer.model)
        if not self.refs:
            raise ValueError("the prune hook found no PruneLowMagnitude wrappers in the model: call "
                             "prune.apply(model, config, total_steps) before training")
        self.wrappers = [ref.layer for ref in self.refs]
        for wrapper in self.wrappers:
            schedule = wrapper.pruning_schedule
            end = getattr(schedule, "end_step", -1)
            if wrapper.sparsity_m_by_n is None and end > trainer.total_steps:
                raise ValueError(
                    f"prune end_step={end} of {wrapper.name} is after the last training step "
                    f"(total_steps={trainer.total_steps}): the final sparsity would never be applied; "
                    "apply pruning with total_steps equal to the Trainer's")
        self._set_steps(trainer.global_step)
        log.info("pruning %d layers; schedule step %d of %d", len(self.wrappers), trainer.global_step,
                 trainer.total_steps)

    def _set_steps(self, step: int) -> None:
        for wrapper in self.wrappers:
            wrapper.pruning_step.assign(step)

    def on_step_begin(self, trainer, step: int) -> None:
        self._set_steps(step)

    def extra_losses(self, trainer, features, labels, outputs, training: bool) -> dict:
        if training:
            # The forward pass just made each counter step + 1 and updated masks at that step; put it
            # back so the next micro-batch of the same optimizer step sees step + 1 again.
            for wrapper in self.wrappers:
                wrapper.pruning_step.assign_sub(1)
        return {}

    def allows_best(self, trainer, step: int) -> bool:
        # weights from before the schedule's end are less sparse than asked: never keep them as best
        return all(step >= getattr(w.pruning_schedule, "end_step", 0) for w in self.wrappers)

    def on_step_end(self, trainer, step: int, logs: dict) -> None:
        # the counter as UpdatePruningStep leaves it: schedule steps done (what checkpoints record)
        self._set_steps(step + 1)

    def summaries(self, trainer, step: int) -> dict:
        """Per-layer mask sparsity and threshold (TFMOT ``PruningSummaries``), global and target sparsity."""
        out = {}
        zeros = total = 0
        for ref, wrapper in zip(self.refs, self.wrappers):
            label = _weight_label(ref)
            for _, mask, threshold in wrapper.pruning_vars:
                values = mask.numpy()
                layer_zeros = int(values.size - np.count_nonzero(values))
                zeros += layer_zeros
                total += values.size
                out[f"prune/sparsity/{label}"] = layer_zeros / values.size
                out[f"prune/threshold/{label}"] = float(threshold.numpy())
        out["prune/global_sparsity"] = zeros / max(total, 1)
        if self.wrappers:
            _, target = self.wrappers[0].pruning_schedule(tf.constant(step, tf.int64))
            out["prune/target_sparsity"] = float(target.numpy())
        out["prune/schedule_step"] = float(step)
        return out

    def on_train_end(self, trainer) -> None:
        for wrapper in self.wrappers:  # UpdatePruningStep.on_epoch_end: weights = weights * mask
            for weight, mask, _ in wrapper.pruning_vars:
                weight.assign(_masked_value(weight, mask))
        if self.config is not None and self.config.structure == "unstructured" and self.wrappers:
            schedule = self.wrappers[0].pruning_schedule
            end = getattr(schedule, "end_step", -1)
            target = self.config.final_sparsity
            worst = min(self.summaries(trainer, trainer.global_step)[f"prune/sparsity/{_weight_label(r)}"]
                        for r in self.refs)
            if end != -1 and worst < target - 0.01:
                best = getattr(trainer, "_best_step", None)
                log.warning(
                    "the final weights are less sparse than asked (lowest layer sparsity %.3f < %.3f): "
                    "the Trainer restored its best checkpoint (step %s), taken before the pruning "
                    "schedule ended (step %d); evaluate only after it or set restore_best=False",
                    worst, target, int(best.numpy()) if hasattr(best, "numpy") else "?", end)


def hooks(config: PruneConfig | None = None) -> list:
    """The Trainer hooks that drive pruning: ``[PruningHook(config)]``."""
    return [PruningHook(config)]


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------

def _entry(value: np.ndarray, pruned: bool) -> dict:
    params = int(value.size)
    nonzero = int(np.count_nonzero(value))
    return {"shape": list(value.shape), "params": params, "nonzero": nonzero,
            "sparsity": (params - nonzero) / params if params else 0.0, "pruned": pruned}


def _totals(entries) -> dict:
    params = sum(e["params"] for e in entries)
    nonzero = sum(e["nonzero"] for e in entries)
    return {"params": params, "nonzero": nonzero, "sparsity": (params - nonzero) / params if params else 0.0}


def sparsity_report(model) -> dict:
    """Sparsity of every Dense kernel and of the word-embedding table, wrapped or stripped.

    For wrapped layers the effective weight ``weight * mask`` is measured (what :func:`strip` leaves).
    ``pruned`` marks the layers under a wrapper or, in a stripped model, those with at least 1 % zeros
    (a trained dense kernel has no exact zeros).

    Returns:
        ``{"layers": {path: {shape, params, nonzero, sparsity, pruned}}, "pruned_layers": [...],
        "pruned": {params, nonzero, sparsity}`` (over pruned layers), ``"global"`` (over all listed
        matrices), ``"model": {params, nonzero}`` (every weight of the model, without pruning
        bookkeeping)``}``.
    """
    layers: dict[str, dict] = {}
    effective: dict[int, np.ndarray] = {}
    bookkeeping: set[int] = set()
    for ref in _wrapper_refs(model):
        wrapper = ref.layer
        bookkeeping.add(id(wrapper.pruning_step))
        for weight, mask, threshold in wrapper.pruning_vars:
            value = _masked_value(weight, mask)
            effective[id(weight)] = value
            bookkeeping.update((id(mask), id(threshold)))
            label = _weight_label(ref)
            if not isinstance(wrapper, PruneLowMagnitudeEmbeddings):
                label = f"{ref.path}/{weight.name.split('/')[-1].split(':')[0]}"
            layers[label] = _entry(value, True)
    for ref in find_layers(model, kinds=(keras.layers.Dense,), into_wrappers=True):
        kernel = getattr(ref.layer, "kernel", None)
        if kernel is None or id(kernel) in effective:
            continue
        layers[f"{ref.path}/kernel"] = _entry(kernel.numpy(), False)
    try:
        layer, attr = word_embedding_ref(model)
    except Exception:  # noqa: BLE001 - a wrapped table is found through its wrapper above
        layer = attr = None
    if layer is not None and isinstance(layer, PruneLowMagnitude):
        layer = layer.layer
    table = getattr(layer, attr, None) if layer is not None else None
    if table is not None and id(table) not in effective:
        path = _embedding_path(model, layer) or "embeddings"
        layers[f"{path}/{attr}"] = _entry(table.numpy(), False)
    for entry in layers.values():
        if not entry["pruned"] and entry["sparsity"] >= 0.01:
            entry["pruned"] = True
    pruned_names = [name for name, entry in layers.items() if entry["pruned"]]
    params = nonzero = 0
    seen = set()
    for weight in model.weights:
        if id(weight) in seen or id(weight) in bookkeeping:
            continue
        seen.add(id(weight))
        value = effective.get(id(weight))
        if value is None:
            value = weight.numpy()
        params += int(value.size)
        nonzero += int(np.count_nonzero(value))
    return {
        "layers": layers,
        "pruned_layers": pruned_names,
        "pruned": _totals([layers[name] for name in pruned_names]),
        "global": _totals(layers.values()),
        "model": {"params": params, "nonzero": nonzero},
    }


def saved_size(directory) -> dict:
    """Raw and gzip-compressed bytes of the weight files in ``directory``.

    Counts ``*.h5``, ``*.safetensors``, ``*.tflite`` and ``*.npz`` (not config or tokenizer files).
    HDF5 stores float32 arrays uncompressed, so unstructured zeros only pay off once compressed:
    the gzip figure (level 9) is the size that shrinks with sparsity.

    Returns:
        ``{"raw": bytes, "gzip": bytes, "files": {name: {"raw", "gzip"}}}``.

    Raises:
        FileNotFoundError: no weight file in ``directory``.
    """
    directory = Path(directory)
    files = sorted({p for pattern in WEIGHT_FILE_PATTERNS for p in directory.glob(pattern) if p.is_file()})
    if not files:
        raise FileNotFoundError(f"no weight file ({', '.join(WEIGHT_FILE_PATTERNS)}) in {directory}")
    out = {"raw": 0, "gzip": 0, "files": {}}
    for path in files:
        data = path.read_bytes()
        compressed = gzip_size(data)
        out["files"][path.name] = {"raw": len(data), "gzip": compressed}
        out["raw"] += len(data)
        out["gzip"] += compressed
    return out
