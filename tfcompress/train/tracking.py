"""Run tracking: TensorBoard event files plus a ``metrics.jsonl`` that needs no TensorBoard to read.

Layout under a run's output directory::

    tensorboard/<stage>/   event files (scalars, histograms, text, profiler traces)
    <stage>/metrics.jsonl  one JSON object per logged step: {"step": 10, "loss": 0.41, ...}

Open the traces with ``tensorboard --logdir OUTPUT/tensorboard``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from tfcompress._compat import tf
from tfcompress.utils import atomic_write_text


class Tracker:
    """Writes scalars, histograms and text for one stage of a run.

    Args:
        output_dir: the run's output directory.
        stage: stage name (``finetune``, ``prune``, ...); names the TensorBoard sub-folder.
    """

    def __init__(self, output_dir, stage: str):
        self.output_dir = Path(output_dir)
        self.stage = stage
        self.logdir = self.output_dir / "tensorboard" / stage
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.output_dir / stage / "metrics.jsonl"
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        self._earlier_event_files = sorted(self.logdir.glob("events.out.tfevents.*"))  # not this writer's
        self.writer = tf.summary.create_file_writer(str(self.logdir))

    def truncate_after(self, step: int) -> int:
        """Drop what a killed attempt logged past the checkpoint a resumed run starts from: the
        ``metrics.jsonl`` rows and the TensorBoard events of steps after ``step`` (earlier attempts'
        event files are rewritten without them, atomically), so the resumed curve does not run twice
        over the same steps. Returns how many ``metrics.jsonl`` rows were dropped."""
        for path in self._earlier_event_files:
            _drop_events_after(path, step)
        if not self.jsonl_path.is_file():
            return 0
        rows = self.jsonl_path.read_text().splitlines()
        kept = []
        for row in rows:
            try:
                if int(json.loads(row)["step"]) <= step:
                    kept.append(row)
            except (ValueError, KeyError, TypeError):  # a half-written last line of a killed attempt
                continue
        if len(kept) != len(rows):
            atomic_write_text(self.jsonl_path, "".join(f"{row}\n" for row in kept))
        return len(rows) - len(kept)

    def scalars(self, step: int, values: dict, prefix: str = "") -> None:
        """Write each finite number in ``values`` as ``prefix/name`` and append one JSONL row."""
        clean = {}
        for name, value in values.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            clean[f"{prefix}/{name}" if prefix else name] = number
        if not clean:
            return
        with self.writer.as_default(step=int(step)):
            for tag, number in clean.items():
                tf.summary.scalar(tag, number)
        self.writer.flush()
        row = {"step": int(step), "time": round(time.time(), 3), **clean}
        with open(self.jsonl_path, "a") as handle:
            handle.write(json.dumps(row) + "\n")

    def histograms(self, step: int, variables) -> None:
        """Histogram of each variable's values, tagged by variable name."""
        with self.writer.as_default(step=int(step)):
            for variable in variables:
                tf.summary.histogram(variable.name.replace(":", "_"), variable)
        self.writer.flush()

    def text(self, tag: str, markdown: str, step: int = 0) -> None:
        with self.writer.as_default(step=int(step)):
            tf.summary.text(tag, markdown)
        self.writer.flush()

    def start_trace(self) -> None:
        tf.profiler.experimental.start(str(self.logdir))

    def stop_trace(self) -> None:
        tf.profiler.experimental.stop()

    def close(self) -> None:
        self.writer.close()


def _drop_events_after(path: Path, step: int) -> int:
    """Rewrite the event file ``path`` without the summaries of steps after ``step`` (and without a
    last record a kill cut short); returns how many events were dropped."""
    kept, dropped = [], 0
    try:
        for record in tf.data.TFRecordDataset(str(path)):
            data = record.numpy()
            event = tf.compat.v1.Event.FromString(data)
            if event.step > step and event.HasField("summary"):
                dropped += 1
            else:
                kept.append(data)
    except tf.errors.DataLossError:  # a half-written last record
        dropped += 1
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp")
        with tf.io.TFRecordWriter(str(tmp)) as writer:
            for data in kept:
                writer.write(data)
        tmp.replace(path)
    return dropped


def read_scalar_tags(logdir) -> set[str]:
    """Tags present in the event files under ``logdir`` (used by tests and the report)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for folder in {p.parent for p in Path(logdir).rglob("events.out.tfevents.*")}:
        accumulator = EventAccumulator(str(folder), size_guidance={"tensors": 0, "scalars": 0})
        accumulator.Reload()
        found = accumulator.Tags()
        tags.update(found.get("scalars", []))
        tags.update(found.get("tensors", []))
        tags.update(found.get("histograms", []))
    return tags
