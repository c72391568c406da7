"""``OUTPUT/report.json`` (the machine-readable record every stage appends to), ``report.md`` and
``tradeoff.png`` beside it, and the same table in TensorBoard.

Shape::

    {"task": "sst2", "metric": "accuracy", "model": {"name": "...", "params": 22713986},
     "stages": [{"name": "finetune", "metrics": {...}, "seconds": 812.5, "output": "finetune/"}],
     "artifacts": [{"name": "int8", ...}]}

Every save is atomic (temporary file + rename), so an interrupted run never leaves half a report.
:func:`write_outputs` renders ``report.md`` (stage models and artifacts: metric, delta against the
fine-tuned fp32 model, size, gzip size, sparsity, p50 latency at 1 and 2 threads, passed) and
``tradeoff.png`` (metric vs size and vs latency; stock-path records, ``"stock": true``, marked).
"""
from __future__ import annotations

import json
from pathlib import Path

from tfcompress._compat import tf
from tfcompress.utils import atomic_write_json, atomic_write_text


class Report:
    """Load, update and atomically save a run's ``report.json``.

    Args:
        path: the report file (``OUTPUT/report.json``).
        data: its parsed content.
    """
    FILENAME = "report.json"

    def __init__(self, path, data: dict):
        self.path = Path(path)
        self.data = data

    @classmethod
    def load_or_create(cls, output_dir, task: str, metric: str, model_name: str, params: int | None = None):
        path = Path(output_dir) / cls.FILENAME
        if path.exists():
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{error.lineno}: report.json is not valid JSON ({error.msg})") from error
        else:
            data = {"task": task, "metric": metric, "model": {"name": model_name, "params": params},
                    "stages": [], "artifacts": []}
        data.setdefault("stages", [])
        data.setdefault("artifacts", [])
        data["task"], data["metric"] = task, metric
        if params is not None:
            data["model"] = {"name": model_name, "params": int(params)}
        return cls(path, data)

    @classmethod
    def load(cls, output_dir):
        path = Path(output_dir) / cls.FILENAME
        return cls(path, json.loads(path.read_text()))

    @property
    def metric(self) -> str:
        return self.data["metric"]

    def stage(self, name: str) -> dict | None:
        return next((s for s in self.data["stages"] if s["name"] == name), None)

    def set_stage(self, name: str, metrics: dict, seconds: float, output: str, **extra) -> dict:
        """Add or replace the stage called ``name``, keeping the stages in first-seen order."""
        record = {"name": name, "metrics": metrics, "seconds": round(float(seconds), 1), "output": output, **extra}
        stages = self.data["stages"]
        for index, existing in enumerate(stages):
            if existing["name"] == name:
                stages[index] = record
                break
        else:
            stages.append(record)
        return record

    def add_artifact(self, record: dict) -> None:
        """Add or replace the artifact with ``record["name"]``."""
        artifacts = self.data["artifacts"]
        for index, existing in enumerate(artifacts):
            if existing["name"] == record["name"]:
                artifacts[index] = record
                break
        else:
            artifacts.append(record)

    def save(self) -> None:
        atomic_write_json(self.path, self.data)


# ------------------------------------------------------------------------------------ rendering
def _primary(record: dict, metric: str):
    value = (record.get("metrics") or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def reference_metric(data: dict) -> tuple[str | None, float | None]:
    """The fine-tuned fp32 Keras model's metric that every delta is measured against.

    The ``finetune`` stage's test metric; without one (a run that starts from a fine-tuned model),
    the distillation teacher's, else the first stage's input model (``input_metrics``, measured by the
    prune and qat stages before they change it), else the first stage that has the metric.
    """
    metric = data.get("metric")
    stages = data.get("stages", [])
    for record in stages:
        if record["name"] == "finetune" and _primary(record, metric) is not None:
            return "finetune", _primary(record, metric)
    for record in stages:
        teacher = (record.get("teacher_metrics") or {}).get(metric)
        if record["name"] == "distill" and isinstance(teacher, (int, float)):
            return "distill teacher", float(teacher)
    for record in stages:
        value = (record.get("input_metrics") or {}).get(metric)
        if isinstance(value, (int, float)):
            return f"input model of the {record['name']} stage", float(value)
    for record in stages:
        if _primary(record, metric) is not None:
            return record["name"], _primary(record, metric)
    return None, None


def _megabytes(value) -> str:
    return f"{value / 1e6:.2f} MB" if isinstance(value, (int, float)) and value else "—"


def _number(value, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"


def table_rows(data: dict) -> list[dict]:
    """One row per Keras stage model and per artifact: the numbers report.md and the plot show."""
    metric = data.get("metric")
    _, reference = reference_metric(data)
    rows = []

    def delta(value):
        return None if value is None or reference is None else (value - reference) * 100.0

    for record in data.get("stages", []):
        value = _primary(record, metric)
        if value is None:
            continue  # export / evaluate / release: their numbers are the artifacts'
        rows.append({"name": f"{record['name']} (Keras)", "kind": "stage", "metric": value,
                     "delta": delta(value), "size": record.get("size_bytes"), "gzip": record.get("gzip_bytes"),
                     "sparsity": record.get("sparsity"), "p50_1": None, "p50_2": None, "passed": None,
                     "stock": bool(record.get("stock"))})
    for record in data.get("artifacts", []):
        value = _primary(record, metric)
        latency = record.get("latency_ms") or {}
        rows.append({"name": f"{record['name']} ({record.get('format', 'tflite')})", "kind": "artifact",
                     "metric": value, "delta": delta(value), "size": record.get("size_bytes"),
                     "gzip": record.get("gzip_bytes"), "sparsity": record.get("sparsity"),
                     "p50_1": (latency.get("threads1") or {}).get("p50"),
                     "p50_2": (latency.get("threads2") or {}).get("p50"),
                     "passed": record.get("passed"), "stock": bool(record.get("stock"))})
    return rows


def render_markdown(data: dict) -> str:
    """``report.md``: the table of every stage model and artifact, plus what was released."""
    metric = data.get("metric", "metric")
    reference_name, reference = reference_metric(data)
    model = data.get("model") or {}
    lines = [f"# tfcompress report: {data.get('task', '')}", ""]
    lines.append(f"Model: `{model.get('name')}`" + (f" ({model['params']:,} parameters)" if model.get("params") else ""))
    if reference is not None:
        lines.append(f"Δ is in points of {metric} against the fine-tuned fp32 Keras model "
                     f"({reference_name}: {reference:.4f}). Latency: batch 1, p50, after warm-up.")
    lines += ["", f"| stage / artifact | {metric} | Δ vs fine-tuned fp32 | size | gzip size | sparsity "
                  "| p50 1 thread | p50 2 threads | passed |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in table_rows(data):
        passed = {True: "yes", False: "**no**", None: "—"}[row["passed"]]
        name = row["name"] + (" [stock]" if row["stock"] else "")
        delta = f"{row['delta']:+.2f}" if row["delta"] is not None else "—"
        lines.append(
            f"| {name} | {_number(row['metric'], '.4f')} | {delta} | {_megabytes(row['size'])} "
            f"| {_megabytes(row['gzip'])} | {_number(row['sparsity'], '.1%')} "
            f"| {_number(row['p50_1'], '.2f')} ms | {_number(row['p50_2'], '.2f')} ms | {passed} |"
            .replace("— ms", "—"))
    release = next((s for s in data.get("stages", []) if s["name"] == "release"), None)
    if release is not None:
        lines += ["", "## Release", ""]
        for name in release.get("released", []):
            metadata = (release.get("tflite_metadata") or {}).get(name)
            lines.append(f"- `release/{name}/` (model.tflite, vocab.txt, labels.txt, tokenizer.json, manifest.json)"
                         + (f"; MediaPipe TFLite metadata {metadata}" if metadata else ""))
        for name, why in (release.get("blocked") or {}).items():
            lines.append(f"- {name}: not released: {why}")
        if not release.get("released"):
            lines.append("- nothing released")
    floats = [(a["name"], a.get("float_ops")) for a in data.get("artifacts", []) if a.get("float_ops")]
    if floats:
        lines += ["", "## Ops left in float", ""]
        lines += [f"- {name}: {', '.join(ops)}" for name, ops in floats]
    pieces = [(a["name"], a["xnnpack_partitions"]) for a in data.get("artifacts", [])
              if a.get("xnnpack_partitions") is not None]
    if pieces:
        lines += ["", "## CPU runtime", "",
                  "Pieces the XNNPACK delegate (LiteRT's default on CPU) runs the graph in: 1 = all of it; each "
                  "further piece means ops XNNPACK has no kernel for at their types run on LiteRT's slower "
                  "builtin kernels in between.", ""]
        lines += [f"- {name}: {count}" for name, count in pieces]
    timings = [(s["name"], s.get("seconds")) for s in data.get("stages", []) if s.get("seconds") is not None]
    if timings:
        lines += ["", "## Stage times", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {name} | {seconds:.1f} |" for name, seconds in timings]
    return "\n".join(lines) + "\n"


def plot_tradeoff(data: dict, path) -> bool:
    """``tradeoff.png``: metric vs size and metric vs latency (p50, 2 threads) for every artifact.

    Keras stage models appear in the size panel (their saved weights); stock-path records
    (``"stock": true``) are drawn as red crosses. Written atomically. Returns False (and writes
    nothing) when there is nothing to plot.
    """
    import os

    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    rows = [row for row in table_rows(data) if row["metric"] is not None]
    if not rows:
        return False
    metric = data.get("metric", "metric")
    figure, (by_size, by_latency) = plt.subplots(1, 2, figsize=(11, 4.5))
    for axis, key, label in ((by_size, "size", "size (MB)"), (by_latency, "p50_2", "p50 latency, 2 threads (ms)")):
        for row in rows:
            x = row[key]
            if not isinstance(x, (int, float)) or not x:
                continue
            x = x / 1e6 if key == "size" else x
            if row["stock"]:
                style = dict(marker="x", color="tab:red", s=70)
            elif row["kind"] == "stage":
                style = dict(marker="s", color="tab:gray", s=40)
            else:
                style = dict(marker="o", color="tab:blue" if row["passed"] is not False else "tab:orange", s=40)
            axis.scatter([x], [row["metric"]], **style)
            axis.annotate(row["name"], (x, row["metric"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
        _, reference = reference_metric(data)
        if reference is not None:
            axis.axhline(reference, color="tab:gray", linestyle="--", linewidth=0.8)
        axis.set_xlabel(label)
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
    by_size.set_title(f"{metric} vs size")
    by_latency.set_title(f"{metric} vs latency")
    handles = [plt.Line2D([], [], marker="o", color="tab:blue", linestyle="", label="artifact (passed)"),
               plt.Line2D([], [], marker="o", color="tab:orange", linestyle="", label="artifact (failed gate)"),
               plt.Line2D([], [], marker="s", color="tab:gray", linestyle="", label="Keras stage model"),
               plt.Line2D([], [], marker="x", color="tab:red", linestyle="", label="stock path"),
               plt.Line2D([], [], color="tab:gray", linestyle="--", label="fine-tuned fp32")]
    figure.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    os.replace(tmp, path)
    return True


def write_outputs(data: dict, output_dir, tensorboard: bool = True) -> dict:
    """Write ``report.md`` and ``tradeoff.png`` beside ``report.json`` (atomically), and give
    TensorBoard the table as text and every stage/artifact metric as scalars.

    Scalars go to ``OUTPUT/tensorboard/summary`` with the position in the stage chain as the step,
    tagged ``stage/<metric>`` and ``artifact/<name>/<metric>``.

    Returns ``{"markdown": path, "plot": path or None}``.
    """
    output_dir = Path(output_dir)
    markdown = render_markdown(data)
    atomic_write_text(output_dir / "report.md", markdown)
    plot = output_dir / "tradeoff.png"
    plotted = plot_tradeoff(data, plot)
    if tensorboard:
        _tensorboard_summary(data, markdown, output_dir / "tensorboard" / "summary")
    return {"markdown": output_dir / "report.md", "plot": plot if plotted else None}


def _tensorboard_summary(data: dict, markdown: str, logdir: Path) -> None:
    """The report table as TensorBoard text, stage and artifact metrics as scalars.

    Stage scalars are tagged ``stage/<stage>/<metric>`` with the stage's position in the chain as the
    step; artifact scalars ``artifact/<name>/<metric>`` (plus latency and gzip size) at step 0.
    """
    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        tf.summary.text("report", markdown, step=len(data.get("stages", [])))
        for step, record in enumerate(data.get("stages", [])):
            for key, value in (record.get("metrics") or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    tf.summary.scalar(f"stage/{record['name']}/{key}", float(value), step=step)
        for record in data.get("artifacts", []):
            numbers = {k: v for k, v in (record.get("metrics") or {}).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            latency = (record.get("latency_ms") or {}).get("threads2") or {}
            if "p50" in latency:
                numbers["latency_p50_ms_2threads"] = latency["p50"]
            if record.get("gzip_bytes"):
                numbers["gzip_megabytes"] = record["gzip_bytes"] / 1e6
            for key, value in numbers.items():
                tf.summary.scalar(f"artifact/{record['name']}/{key}", float(value), step=0)
    writer.flush()
    writer.close()
