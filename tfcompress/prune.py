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

    from tfcompress import prune
    from tfcompress.train import Trainer, TrainConfig

    config = prune.PruneConfig(final_sparsity=0.8)
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

import dataclasses
import gzip
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tfcompress._compat import keras, tf
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_schedule as tfmot_schedule
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper as tfmot_wrapper
from tfcompress.models import (
    find_layers,
    iter_layers,
    select_dense_layers,
    replace_layer,
    word_embedding_ref,
)
from tfcompress.train import Hook
from tfcompress.utils import get_logger

log = get_logger("prune")

PruneLowMagnitude = tfmot_wrapper.PruneLowMagnitude

SCHEDULES = ("polynomial", "constant")
STRUCTURES = ("unstructured", "2:4")
# Derived frequency: about this many mask updates between begin_step and end_step. Zhu & Gupta
# (arXiv:1710.01878) prune in many small steps; 20 updates of a cubic schedule move the sparsity by
# at most ~15 points at a time (the first step: 1 - (1 - 1/20)^3 = 0.14 of the way).
DERIVED_MASK_UPDATES = 20
WEIGHT_FILE_PATTERNS = ("*.h5", "*.safetensors", "*.tflite", "*.npz")


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------

@dataclass
class PruneConfig:
    """What to prune and on which schedule.

    Args:
        final_sparsity (float): fraction of zeros in every selected weight at the end, in [0, 1).
            0 wraps nothing away: the masks stay all ones (a no-op run). For ``structure="2:4"`` it
            must be 0.5 (the structure fixes it).
        initial_sparsity (float): sparsity at ``begin_step`` for the polynomial schedule, in
            [0, final_sparsity].
        schedule (str): ``"polynomial"`` (TFMOT ``PolynomialDecay``, cubic ramp from
            ``initial_sparsity`` to ``final_sparsity``) or ``"constant"`` (TFMOT ``ConstantSparsity``:
            ``final_sparsity`` at every mask update from ``begin_step`` on).
        power (int): exponent of the polynomial schedule (TFMOT's default 3).
        begin_step (int): schedule step of the first mask update window (schedule steps are
            1-based optimizer steps, see the module docstring). 0 = from the start.
        end_step (int | None): last schedule step at which masks are updated; after it the masks
            are fixed and training fine-tunes the surviving weights. None derives it from the run
            length: ``end_fraction x total_steps`` (rounded down to a multiple of ``frequency``).
        end_fraction (float): used when ``end_step`` is None; default 0.75 so the last quarter of
            training recovers accuracy under the final mask.
        frequency (int | None): update the masks every ``frequency`` schedule steps. None derives
            ``max(1, (end_step - begin_step) // 20)`` (about 20 updates). For the polynomial schedule
            ``end_step - begin_step`` must be a multiple of it, otherwise TFMOT never applies the
            final sparsity (its last update falls before ``end_step``).
        block_size (tuple[int, int]): TFMOT block sparsity ``(height, width)`` for rank-2 kernels;
            ``(1, 1)`` = element-wise.
        block_pooling_type (str): ``"AVG"`` or ``"MAX"`` pooling of a block's magnitudes.
        structure (str): ``"unstructured"`` or ``"2:4"`` (TFMOT ``sparsity_m_by_n=(2, 4)``: at least 2
            zeros in every 4 consecutive weights along a Dense kernel's input dimension).
        include_classifier (bool): also prune the classifier, pooler and other Dense layers outside
            the transformer blocks.
        prune_embeddings (bool): also prune the word-embedding table (about half of MiniLM-L6's 22.7 M
            parameters) with the same schedule.
        include (str | None): regex (``re.search``) on layer paths such as
            ``"bert/encoder/layer.0/attention/self_attention/query"``; keeps only matching candidates.
        exclude (str | None): regex; drops matching candidates.

    Raises:
        ValueError: naming the field, the value and why, on construction (:meth:`validate`).
    """

    final_sparsity: float = 0.5
    initial_sparsity: float = 0.0
    schedule: str = "polynomial"
    power: int = 3
    begin_step: int = 0
    end_step: int | None = None
    end_fraction: float = 0.75
    frequency: int | None = None
    block_size: tuple[int, int] = (1, 1)
    block_pooling_type: str = "AVG"
    structure: str = "unstructured"
    include_classifier: bool = False
    prune_embeddings: bool = False
    include: str | None = None
    exclude: str | None = None

    def __post_init__(self):
        if isinstance(self.block_size, list):
            self.block_size = tuple(self.block_size)
        self.validate()

    def validate(self) -> None:
        def bad(name: str, why: str):
            raise ValueError(f"prune.{name}={getattr(self, name)!r}: {why}")

        for name in ("final_sparsity", "initial_sparsity", "end_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                bad(name, "must be a number")
        if not 0.0 <= self.final_sparsity < 1.0:
            bad("final_sparsity", "must be in [0, 1): the fraction of weights set to zero (1 would "
                "remove every weight)")
        if not 0.0 <= self.initial_sparsity < 1.0:
            bad("initial_sparsity", "must be in [0, 1)")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"must be one of {SCHEDULES}")
        if self.schedule == "polynomial" and self.initial_sparsity > self.final_sparsity:
            bad("initial_sparsity", f"must be <= final_sparsity={self.final_sparsity} (the polynomial "
                "schedule ramps sparsity up)")
        if not isinstance(self.power, int) or self.power < 1:
            bad("power", "must be an integer >= 1")
        if not isinstance(self.begin_step, int) or isinstance(self.begin_step, bool) or self.begin_step < 0:
            bad("begin_step", "must be an integer >= 0")
        if self.end_step is not None:
            if not isinstance(self.end_step, int) or isinstance(self.end_step, bool):
                bad("end_step", "must be an integer or None (derived from the training length)")
            if self.schedule == "constant" and self.end_step == -1:
                pass  # TFMOT: constant sparsity with no end (masks keep updating to the last step)
            elif self.schedule == "polynomial" and self.end_step <= self.begin_step:
                bad("end_step", f"must be after begin_step={self.begin_step} (the polynomial schedule "
                    "ramps sparsity between them)")
            elif self.end_step < self.begin_step:
                bad("end_step", f"must not be before begin_step={self.begin_step}")
        if not 0.0 < self.end_fraction <= 1.0:
            bad("end_fraction", "must be in (0, 1]: the fraction of training during which masks update")
        if self.frequency is not None:
            if not isinstance(self.frequency, int) or isinstance(self.frequency, bool) or self.frequency < 1:
                bad("frequency", "must be an integer >= 1 or None (derived)")
            if (self.schedule == "polynomial" and self.end_step is not None
                    and (self.end_step - self.begin_step) % self.frequency):
                bad("frequency", f"end_step - begin_step = {self.end_step - self.begin_step} is not a "
                    "multiple of it, so TFMOT's last mask update would fall before end_step and the "
                    "final sparsity would never be applied")
        if (not isinstance(self.block_size, tuple) or len(self.block_size) != 2
                or not all(isinstance(v, int) and v >= 1 for v in self.block_size)):
            bad("block_size", "must be two positive integers (height, width)")
        if self.block_pooling_type not in ("AVG", "MAX"):
            bad("block_pooling_type", "must be 'AVG' or 'MAX'")
        if self.structure not in STRUCTURES:
            bad("structure", f"must be one of {STRUCTURES}")
        if self.structure == "2:4":
            if self.final_sparsity != 0.5:
                bad("final_sparsity", "must be 0.5 with structure='2:4' (2 zeros in every 4 weights is "
                    "50 % by construction)")
            if self.block_size != (1, 1):
                bad("block_size", "must be (1, 1) with structure='2:4' (TFMOT cannot combine them)")
            if self.prune_embeddings:
                bad("prune_embeddings", "2:4 sparsity is a matmul-kernel format; the embedding table is "
                    "gathered, not multiplied: prune it unstructured in a separate run or leave it dense "
                    "(--no-prune-embeddings)")
        for name in ("include", "exclude"):
            pattern = getattr(self, name)
            if pattern is not None:
                if not isinstance(pattern, str) or not pattern:
                    bad(name, "must be a non-empty regular expression or None")
                try:
                    re.compile(pattern)
                except re.error as error:
                    bad(name, f"is not a valid regular expression ({error})")

    def resolve_steps(self, total_steps: int | None = None) -> tuple[int, int, int]:
        """``(begin_step, end_step, frequency)`` for a run of ``total_steps`` optimizer steps.

        Raises:
            ValueError: ``end_step`` is None and ``total_steps`` unknown; the derived window is empty;
                or ``end_step`` lies after the last step (the final sparsity would never be applied).
        """
        if total_steps is not None and (not isinstance(total_steps, (int, np.integer)) or total_steps < 1):
            raise ValueError(f"total_steps={total_steps!r}: must be a positive integer (optimizer steps)")
        begin = self.begin_step
        if self.structure == "2:4":
            # TFMOT computes m-by-n masks once, at schedule step 1, whatever the schedule says.
            return 0, -1, 1
        if self.end_step is None:
            if total_steps is None:
                raise ValueError("prune.end_step=None: derived from the training length, so pass "
                                 "total_steps (optimizer steps of the run) or set end_step")
            target = int(self.end_fraction * total_steps)
            span = target - begin
            if span < 1:
                raise ValueError(
                    f"prune.begin_step={begin}: no room to prune before end_fraction={self.end_fraction} "
                    f"x total_steps={total_steps} = step {target}; lower begin_step or set end_step")
            frequency = self.frequency or max(1, span // DERIVED_MASK_UPDATES)
            end = begin + (span // frequency) * frequency
            if end <= begin:
                raise ValueError(f"prune.frequency={frequency}: larger than the pruning window "
                                 f"{begin}..{target}; lower it")
        else:
            end = self.end_step
            if self.frequency is not None:
                frequency = self.frequency
            elif end == -1:
                frequency = 100  # TFMOT's default
            else:
                span = end - begin
                limit = max(1, span // DERIVED_MASK_UPDATES)
                # the largest divisor of the window not above the limit: end_step stays an update step
                frequency = max((d for d in range(1, limit + 1) if span % d == 0), default=1)
        if total_steps is not None and end > total_steps:
            raise ValueError(
                f"prune.end_step={end}: after the last training step (total_steps={total_steps}), so "
                f"the final sparsity {self.final_sparsity} would never be applied")
        return begin, end, frequency

    def make_schedule(self, total_steps: int | None = None):
        """The TFMOT ``PruningSchedule`` for a run of ``total_steps`` optimizer steps."""
        begin, end, frequency = self.resolve_steps(total_steps)
        if self.schedule == "constant" or self.structure == "2:4":
            return tfmot_schedule.ConstantSparsity(float(self.final_sparsity), begin_step=begin,
                                                   end_step=end, frequency=frequency)
        return tfmot_schedule.PolynomialDecay(
            initial_sparsity=float(self.initial_sparsity), final_sparsity=float(self.final_sparsity),
            begin_step=begin, end_step=end, power=self.power, frequency=frequency)


def config_from_dict(values: dict) -> PruneConfig:
    """A PruneConfig from a dict, naming any unknown field."""
    known = {f.name for f in dataclasses.fields(PruneConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown prune config field(s) {unknown}; known: {sorted(known)}")
    return PruneConfig(**values)


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
    schedule = config.make_schedule(total_steps)
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
        compressed = len(gzip.compress(data, compresslevel=9, mtime=0))
        out["files"][path.name] = {"raw": len(data), "gzip": compressed}
        out["raw"] += len(data)
        out["gzip"] += compressed
    return out


__all__ = [
    "PruneConfig", "config_from_dict", "apply", "strip", "hooks", "PruningHook", "select_layers",
    "pruned_layers", "sparsity_report", "saved_size", "PruneLowMagnitude", "PruneLowMagnitudeEmbeddings",
]
