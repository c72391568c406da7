"""The Trainer: one custom training step (``tf.function`` + ``GradientTape``) with hooks.

Pruning, quantization-aware training and distillation do not copy this loop; they plug into it:

* a :class:`Hook` runs Python code before/after each optimizer step (TFMOT's pruning step),
  adds loss terms computed inside the compiled step (``extra_losses``), writes its own scalars
  and puts extra state into checkpoints;
* ``loss_fn`` replaces the task loss (the Distiller's teacher/student loss).

Resume: checkpoints (model, optimizer, step, early-stopping state, hook state) are written to
``OUTPUT_DIR/checkpoints`` every ``checkpoint_every`` steps and at each evaluation. Rerunning the
same command restores the latest one and continues; the data order depends only on
``(seed, epoch)``, so the resumed run sees the batches the killed one would have seen.
"""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from tfcompress._compat import check_keras_object, keras, tf
from tfcompress.config.constants import IGNORE_INDEX
from tfcompress.config.training import TrainConfig
from tfcompress.evaluate import metrics
from tfcompress.train import distribute
from tfcompress.train.interrupt import StopSignal, TrainingInterrupted
from tfcompress.train.tracking import Tracker
from tfcompress.utils import get_logger, set_seed

log = get_logger("train")


def set_mixed_precision(policy: str | None) -> None:
    """Set the Keras global dtype policy; call before building the model."""
    keras.mixed_precision.set_global_policy(policy or "float32")


class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then linear decay to 0 at ``total_steps``."""
    def __init__(self, peak: float, warmup_steps: int, total_steps: int):
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(max(total_steps, 1))

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = tf.cast(max(self.warmup_steps, 1), tf.float32)
        decay_span = tf.cast(max(self.total_steps - self.warmup_steps, 1), tf.float32)
        warm = self.peak * (step + 1.0) / warmup
        decay = self.peak * tf.maximum(0.0, (tf.cast(self.total_steps, tf.float32) - step) / decay_span)
        return tf.where(step < float(self.warmup_steps), warm, decay)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}


class Hook:
    """Extension point of the Trainer. Override what you need; every method is a no-op by default."""
    def on_train_begin(self, trainer: "Trainer") -> None:
        """Python, after the optimizer is built; ``trainer.total_steps`` is known."""
    def on_step_begin(self, trainer: "Trainer", step: int) -> None:
        """Python, before optimizer step ``step`` (0-based global step)."""
    def extra_losses(self, trainer: "Trainer", features, labels, outputs, training: bool) -> dict:
        """Inside the compiled step, under the GradientTape: ``{name: scalar tensor}`` added to the loss."""
        return {}

    def on_step_end(self, trainer: "Trainer", step: int, logs: dict) -> None:
        """Python, after the optimizer step; ``logs`` holds the step's scalars as Python floats."""
    def summaries(self, trainer: "Trainer", step: int) -> dict:
        """Scalars to write at logging steps, ``{tag: float}``."""
        return {}

    def allows_best(self, trainer: "Trainer", step: int) -> bool:
        """Whether an evaluation at ``step`` may become the kept "best" weights (e.g. not before a
        pruning schedule has reached its final sparsity)."""
        return True

    def on_evaluate(self, trainer: "Trainer", step: int, metrics: dict) -> None:
        """After each evaluation."""
    def on_train_end(self, trainer: "Trainer") -> None:
        """After the last step (and after the best weights were restored)."""
    def checkpoint_objects(self) -> dict:
        """Extra trackables saved in (and restored from) resumable checkpoints."""
        return {}


def sequence_or_token_loss(logits, labels):
    """Mean sparse cross-entropy over the positions whose label is not ``IGNORE_INDEX``.

    Works for sequence labels ``[B]`` with logits ``[B, C]`` and token labels ``[B, T]`` with
    logits ``[B, T, C]``; the mean is over kept positions (0 when there are none).
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    mask = tf.not_equal(labels, IGNORE_INDEX)
    safe_labels = tf.where(mask, labels, tf.zeros_like(labels))
    per_position = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_labels, logits=logits)
    mask = tf.cast(mask, tf.float32)
    return tf.reduce_sum(per_position * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def default_loss_fn(model, features, labels, training):
    """The task loss: masked cross-entropy on ``model(features).logits``."""
    logits = model(features, training=training).logits
    return sequence_or_token_loss(logits, labels), logits, {}


class Trainer:
    """Fine-tunes a Keras/HF TF model with one custom step, hooks, evaluation and resume.

    Args:
        model: a built ``TFPreTrainedModel`` (or any Keras model whose call returns ``.logits`` or
            logits); build it under ``strategy.scope()`` when a strategy is given.
        task: ``"sequence"`` (text classification) or ``"token"`` (token classification).
        config: a :class:`TrainConfig`.
        output_dir: where checkpoints, ``best/`` weights, TensorBoard and metrics.jsonl go (on a
            non-chief worker of a cluster: a local folder of its own, deleted after training).
        hooks: :class:`Hook` instances (pruning, QAT, distillation schedules...).
        strategy: a ``tf.distribute.Strategy`` (``MultiWorkerMirroredStrategy`` included: see
            :mod:`tfcompress.train.distribute`); default: the current strategy.
        loss_fn: ``loss_fn(model, features, labels, training) -> (loss, logits, {name: tensor})``;
            default: :func:`default_loss_fn`.
        label_names: names of the label ids, for metrics.
        stage: the TensorBoard/metrics.jsonl sub-folder name.

    Example::

        trainer = Trainer(model, "sequence", TrainConfig(epochs=1), "runs/sst2/finetune")
        result = trainer.fit(train_data, eval_data)
        print(result["metrics"]["accuracy"])
    """
    def __init__(self, model, task: str, config: TrainConfig, output_dir, hooks=(), strategy=None,
                 loss_fn: Callable | None = None, label_names=None, stage: str = "train"):
        if task not in ("sequence", "token"):
            raise ValueError(f"task={task!r}: must be 'sequence' or 'token'")
        check_keras_object(model, "model")
        self.model = model
        self.task = task
        self.config = config
        self.hooks = list(hooks)
        self.strategy = strategy or tf.distribute.get_strategy()
        self.is_chief = distribute.is_chief(self.strategy)
        self.output_dir = distribute.worker_dir(output_dir, self.strategy)
        self._owns_worker_dir = self.output_dir != Path(output_dir)  # a non-chief's folder: deleted after fit
        self.loss_fn = loss_fn or default_loss_fn
        self.label_names = label_names
        self.stage = stage
        self.optimizer = None
        self.total_steps = 0
        self.steps_per_epoch = 0
        self.global_step = 0
        self._step_fn = None
        self._apply_fn = None
        self._predict = None
        self._accumulators = None
        if config.mixed_precision and keras.mixed_precision.global_policy().name != config.mixed_precision:
            raise ValueError(
                f"train.mixed_precision={config.mixed_precision!r} but the Keras policy is "
                f"{keras.mixed_precision.global_policy().name!r}: call "
                "tfcompress.train.set_mixed_precision(...) before building the model")

    # ----------------------------------------------------------------------------------- setup
    def _build(self, num_train_batches: int) -> None:
        config = self.config
        self.steps_per_epoch = max(1, math.ceil(num_train_batches / config.grad_accum_steps))
        self.total_steps = config.max_steps or math.ceil(config.epochs * self.steps_per_epoch)
        if self.optimizer is not None:
            return
        with self.strategy.scope():
            schedule = WarmupLinearDecay(config.learning_rate, round(config.warmup_ratio * self.total_steps),
                                         self.total_steps)
            optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay,
                                               epsilon=1e-6, jit_compile=False)
            optimizer.exclude_from_weight_decay(var_names=["LayerNorm", "layer_norm", "bias"])
            if config.mixed_precision == "mixed_float16":
                optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
            self.optimizer = optimizer
            self._best_metric = tf.Variable(-np.inf, dtype=tf.float64, trainable=False, name="best_metric")
            self._bad_evals = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_evaluations")
            self._best_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_step")
            if config.grad_accum_steps > 1:
                self._accumulators = [
                    tf.Variable(tf.zeros_like(v), trainable=False,
                                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                                name=f"accumulator_{i}")
                    for i, v in enumerate(self.model.trainable_variables)]
        # The optimizer's iteration counter is the global step (it survives checkpoints).
        extra = {}
        for index, hook in enumerate(self.hooks):
            for key, value in hook.checkpoint_objects().items():
                extra[f"hook{index}_{key}"] = value
        self._checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                               best_metric=self._best_metric, bad_evals=self._bad_evals,
                                               best_step=self._best_step, **extra)
        self._manager = tf.train.CheckpointManager(self._checkpoint, str(self.output_dir / "checkpoints"),
                                                   max_to_keep=config.keep_checkpoints)
        self._best_checkpoint = tf.train.Checkpoint(model=self.model)
        self._best_manager = tf.train.CheckpointManager(self._best_checkpoint, str(self.output_dir / "best"),
                                                        max_to_keep=1)
        if self._accumulators is not None:
            self._apply_fn = self._make_apply_fn()

    @property
    def _inner_optimizer(self):
        return getattr(self.optimizer, "inner_optimizer", self.optimizer)

    def _make_step_fn(self, element_spec):
        """The compiled step, traced once for ``element_spec`` (batch and length dimensions None): every
        worker of a cluster must trace it the same number of times, since each trace numbers its
        collectives, and per-worker batch shapes differ."""
        config = self.config
        accumulate = self._accumulators is not None
        strategy = self.strategy

        def replica_step(features, labels):
            variables = self.model.trainable_variables
            with tf.GradientTape() as tape:
                task_loss, logits, aux = self.loss_fn(self.model, features, labels, True)
                extras = {}
                for hook in self.hooks:
                    extras.update(hook.extra_losses(self, features, labels, logits, True))
                loss = task_loss + tf.add_n([tf.cast(v, tf.float32) for v in extras.values()]) if extras else task_loss
                # Each replica's loss is a mean over its share of the batch and gradients are summed
                # over replicas: weight it by its share of the global labelled count (and divide by
                # micro-batches), so the gradient is that of the global mean.
                loss_count = getattr(self.model, "loss_count", None)  # e.g. a Distiller's
                weight = distribute.weight_of_replica(labels, None if loss_count is None else loss_count(labels))
                scaled = loss * weight / float(config.grad_accum_steps)
                if config.mixed_precision == "mixed_float16":
                    scaled = self.optimizer.get_scaled_loss(scaled)
            grads = tape.gradient(scaled, variables)
            if config.mixed_precision == "mixed_float16":
                grads = self.optimizer.get_unscaled_gradients(grads)
            grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g) for g, v in zip(grads, variables)]
            context = tf.distribute.get_replica_context()
            if accumulate:
                grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
                for accumulator, grad in zip(self._accumulators, grads):
                    accumulator.assign_add(grad)
                grad_norm = tf.linalg.global_norm(grads)
            else:
                grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
                grad_norm = tf.linalg.global_norm(grads)
                if config.max_grad_norm > 0:
                    grads, _ = tf.clip_by_global_norm(grads, config.max_grad_norm, use_norm=grad_norm)
                self.optimizer.apply_gradients(zip(grads, variables), skip_gradients_aggregation=True)
            logs = {"loss": loss * weight, "task_loss": task_loss * weight, "grad_norm": grad_norm}
            logs.update({k: tf.cast(v, tf.float32) for k, v in aux.items()})
            logs.update({k: tf.cast(v, tf.float32) for k, v in extras.items()})
            return logs

        def distributed_step(features, labels):
            per_replica = strategy.run(replica_step, args=(features, labels))
            summed = ("loss", "task_loss")  # already weighted by each replica's share: the global mean
            return {k: strategy.reduce(tf.distribute.ReduceOp.SUM if k in summed else tf.distribute.ReduceOp.MEAN,
                                       v, axis=None) for k, v in per_replica.items()}

        return tf.function(distributed_step, input_signature=list(element_spec), jit_compile=config.jit_compile)

    def _make_apply_fn(self):
        config = self.config

        def replica_apply():
            variables = self.model.trainable_variables
            grads = [tf.identity(a) for a in self._accumulators]
            grad_norm = tf.linalg.global_norm(grads)
            if config.max_grad_norm > 0:
                grads, _ = tf.clip_by_global_norm(grads, config.max_grad_norm, use_norm=grad_norm)
            self.optimizer.apply_gradients(zip(grads, variables), skip_gradients_aggregation=True)
            for accumulator in self._accumulators:
                accumulator.assign(tf.zeros_like(accumulator))
            return grad_norm

        def distributed_apply():
            norm = self.strategy.run(replica_apply)
            return self.strategy.reduce(tf.distribute.ReduceOp.MEAN, norm, axis=None)

        return tf.function(distributed_apply)

    # ----------------------------------------------------------------------------- prediction
    def predict_fn(self) -> Callable:
        """``features dict of np arrays -> np logits`` through a traced, shape-agnostic function."""
        if self._predict is None:
            model = self.model

            @tf.function(reduce_retracing=True)
            def predict(features):
                outputs = model(features, training=False)
                return tf.cast(getattr(outputs, "logits", outputs), tf.float32)

            self._predict = lambda features: predict({k: tf.constant(v) for k, v in features.items()}).numpy()
        return self._predict

    def evaluate(self, data) -> dict:
        """Task metrics of the current weights on ``data`` (an ``EncodedData``).

        With several workers, worker ``r`` of ``W`` predicts examples ``r, r + W, ...`` and the predicted
        ids are gathered by the strategy's all-reduce (:func:`distribute.gather_examples`): every worker
        scores the whole set, so all take the same best-checkpoint and early-stopping decisions."""
        workers = distribute.num_workers(self.strategy)
        if workers == 1:
            return metrics.evaluate(self.predict_fn(), data, batch_size=self.config.eval_batch_size)
        started = time.time()
        mine = np.arange(len(data))[distribute.worker_rank(self.strategy)::workers]
        logits = metrics.predict_logits(self.predict_fn(), data.select(mine), batch_size=self.config.eval_batch_size)
        predicted = [np.asarray(values).argmax(-1) for values in logits]
        sizes = np.ones(len(data), np.int64) if data.task == "sequence" else data.lengths()
        gathered = distribute.gather_examples(self.strategy, predicted, mine, sizes, time.time() - started)
        log.info("evaluation: %d of %d examples predicted by this worker (%d of %d), predictions gathered",
                 len(mine), len(data), distribute.worker_rank(self.strategy), workers)
        if data.task == "sequence":
            predictions = np.concatenate(gathered).astype(np.int64) if gathered else np.zeros(0, np.int64)
        else:
            predictions = [values.astype(np.int64) for values in gathered]
        result = metrics.compute_metrics(data.task, predictions, data.labels, data.label_names)
        result["num_truncated"] = int(data.num_truncated)
        return result

    # ---------------------------------------------------------------------------------- train
    def _dataset(self, train, epoch: int, skip_batches: int):
        order = train.batches(self.config.batch_size, shuffle=True, seed=self.config.seed, epoch=epoch)[skip_batches:]
        # A Distiller with cached teacher outputs looks them up by row of ``train``.
        indexed = bool(getattr(self.model, "needs_example_index", False))
        return distribute.distribute_batches(self.strategy, order, lambda batches: train.batch_dataset(batches, with_index=indexed))

    def fit(self, train, eval=None) -> dict:
        """Train on ``train`` (``EncodedData``), evaluating on ``eval``; resumes if checkpoints exist.

        Returns:
            ``{"metrics": best eval metrics (or last), "best_step", "steps", "seconds",
            "samples_per_second", "resumed_from"}``.
        """
        config = self.config
        set_seed(config.seed)
        num_batches = len(train.batches(config.batch_size, shuffle=False))
        self._build(num_batches)
        resumed_from = 0
        # TensorFlow names a checkpoint being written ckpt-N_temp/; a kill during the save leaves it
        for partial in (self.output_dir / "checkpoints").glob("*_temp*"):
            if partial.is_dir():
                shutil.rmtree(partial, ignore_errors=True)
            else:
                partial.unlink(missing_ok=True)
        if self._manager.latest_checkpoint:
            self._checkpoint.restore(self._manager.latest_checkpoint)
            resumed_from = int(self._inner_optimizer.iterations.numpy())
            log.info("resuming %s from step %d (%s)", self.stage, resumed_from, self._manager.latest_checkpoint)
        self.global_step = resumed_from
        tracker = Tracker(self.output_dir.parent if self.output_dir.name == self.stage else self.output_dir,
                          self.stage)
        self.tracker = tracker
        dropped = tracker.truncate_after(resumed_from)
        if dropped:
            log.info("%s: dropped %d metrics.jsonl rows logged after step %d by the interrupted attempt",
                     self.stage, dropped, resumed_from)
        for hook in self.hooks:
            hook.on_train_begin(self)

        primary = metrics.primary_metric(self.task)
        progress = _progress(self.total_steps, self.global_step, self.stage)
        stop_signal = StopSignal()
        with stop_signal:
            try:
                result = self._train_loop(train, eval, tracker, primary, progress, stop_signal, resumed_from)
            except tf.errors.OpError as error:
                if distribute.num_workers(self.strategy) == 1 or not distribute.is_peer_failure(error):
                    raise
                raise distribute.WorkerLost(self.stage, self.global_step, self._manager.latest_checkpoint, error) from error
        if self._owns_worker_dir:
            distribute.remove_worker_dir(self.output_dir)
        return result

    def _train_loop(self, train, eval, tracker, primary, progress, stop_signal, resumed_from) -> dict:
        """The epochs and steps of :meth:`fit`, with ``stop_signal`` watched at every step boundary."""
        config = self.config
        eval_every = config.eval_every or self.steps_per_epoch
        accum = config.grad_accum_steps
        last_metrics: dict = {}
        examples_seen = 0
        train_seconds = 0.0
        stop = self.global_step >= self.total_steps
        tracing = False
        start_epoch = self.global_step // self.steps_per_epoch
        for epoch in range(start_epoch, math.ceil(self.total_steps / self.steps_per_epoch) + 1):
            if stop:
                break
            skip = (self.global_step - epoch * self.steps_per_epoch) * accum if epoch == start_epoch else 0
            micro = 0
            window_start = time.perf_counter()
            dataset = self._dataset(train, epoch, skip)
            self._step_fn = self._step_fn or self._make_step_fn(dataset.element_spec)
            for features, labels in dataset:
                if micro == 0:
                    step = self.global_step
                    if config.profile_steps and step == config.profile_steps[0]:
                        tracker.start_trace()
                        tracing = True
                    for hook in self.hooks:
                        hook.on_step_begin(self, step)
                    window_start = time.perf_counter()
                logs = self._step_fn(features, labels)
                examples_seen += int(_batch_size(labels, self.strategy)) * distribute.num_workers(self.strategy)
                micro += 1
                if micro < accum:
                    continue
                micro = 0
                if self._apply_fn is not None:
                    logs["grad_norm"] = self._apply_fn()
                logs = {k: float(v) for k, v in logs.items()}
                train_seconds += time.perf_counter() - window_start
                self.global_step += 1
                step = self.global_step - 1
                for hook in self.hooks:
                    hook.on_step_end(self, step, logs)
                if tracing and step >= config.profile_steps[1]:
                    tracker.stop_trace()
                    tracing = False
                progress.update(1)
                progress.set_postfix(loss=f"{logs['loss']:.4f}")
                if self.global_step % config.log_every == 0 or self.global_step == self.total_steps:
                    logs["learning_rate"] = float(tf.convert_to_tensor(self._inner_optimizer.learning_rate))
                    logs["examples_per_second"] = examples_seen / max(train_seconds, 1e-9)
                    for hook in self.hooks:
                        logs.update(hook.summaries(self, self.global_step))
                    tracker.scalars(self.global_step, logs, prefix="train")
                    if progress.disable:  # no TTY: a concise log line instead of the progress bar
                        rate = train_seconds / max(self.global_step - resumed_from, 1)
                        log.info("%s step %d/%d loss %.4f lr %.2e %.0f ex/s ETA %.0f min", self.stage,
                                 self.global_step, self.total_steps, logs["loss"], logs["learning_rate"],
                                 logs["examples_per_second"], rate * (self.total_steps - self.global_step) / 60)
                done = self.global_step >= self.total_steps
                if eval is not None and (self.global_step % eval_every == 0 or done):
                    last_metrics = self._evaluate_and_track(eval, tracker, primary)
                    if config.early_stopping_patience and int(self._bad_evals.numpy()) >= config.early_stopping_patience:
                        log.info("early stopping at step %d: no %s improvement in %d evaluations",
                                 self.global_step, primary, config.early_stopping_patience)
                        done = True
                    self._manager.save(checkpoint_number=self.global_step)
                elif self.global_step % config.checkpoint_every == 0 or done:
                    self._manager.save(checkpoint_number=self.global_step)
                if stop_signal.received and not done:  # Ctrl-C / SIGTERM: stop at this step boundary
                    self._manager.save(checkpoint_number=self.global_step)
                    progress.close()
                    tracker.close()
                    raise TrainingInterrupted(stop_signal.received, self.stage, self.global_step)
                if done:
                    stop = True
                    break
            if micro:  # a trailing partial accumulation window at the end of an epoch is dropped
                for accumulator in self._accumulators or []:
                    accumulator.assign(tf.zeros_like(accumulator))
        progress.close()
        if tracing:
            tracker.stop_trace()

        best_step = int(self._best_step.numpy())
        if eval is not None and config.restore_best and self._best_manager.latest_checkpoint:
            self._best_checkpoint.restore(self._best_manager.latest_checkpoint).expect_partial()
            best_metrics = self.evaluate(eval) if best_step != self.global_step or not last_metrics else last_metrics
        else:
            best_metrics = last_metrics or (self.evaluate(eval) if eval is not None else {})
        for hook in self.hooks:
            hook.on_train_end(self)
        tracker.close()
        return {"metrics": best_metrics, "best_step": best_step, "steps": self.global_step,
                "seconds": round(train_seconds, 2),
                "samples_per_second": examples_seen / train_seconds if train_seconds else None,
                "resumed_from": resumed_from}

    def _evaluate_and_track(self, eval, tracker: Tracker, primary: str) -> dict:
        metrics = self.evaluate(eval)
        step = self.global_step
        tracker.scalars(step, {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, prefix="eval")
        if self.config.histograms:
            tracker.histograms(step, self.model.trainable_variables)
        value = float(metrics[primary])
        eligible = all(hook.allows_best(self, step) for hook in self.hooks)
        if eligible and value > float(self._best_metric.numpy()):
            self._best_metric.assign(value)
            self._best_step.assign(step)
            self._bad_evals.assign(0)
            self._best_manager.save(checkpoint_number=step)
        else:
            self._bad_evals.assign_add(1)
        log.info("step %d: eval %s=%.4f (best %.4f at step %d)", step, primary, value,
                 float(self._best_metric.numpy()), int(self._best_step.numpy()))
        for hook in self.hooks:
            hook.on_evaluate(self, step, metrics)
        return metrics


def _batch_size(labels, strategy) -> int:
    if strategy.num_replicas_in_sync > 1:
        return sum(int(t.shape[0]) for t in strategy.experimental_local_results(labels))
    return int(labels.shape[0])


def _progress(total: int, initial: int, description: str):
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=description, unit="step", dynamic_ncols=True,
                disable=not sys.stderr.isatty(), mininterval=2.0)
