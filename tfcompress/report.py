"""``OUTPUT/report.json``: the machine-readable record that every stage appends to.

Shape::

    {"task": "sst2", "metric": "accuracy", "model": {"name": "...", "params": 22713986},
     "stages": [{"name": "finetune", "metrics": {...}, "seconds": 812.5, "output": "finetune/"}],
     "artifacts": [{"name": "int8", ...}]}

Every save is atomic (temporary file + rename), so an interrupted run never leaves half a report.
"""
from __future__ import annotations

import json
from pathlib import Path

from tfcompress.utils import atomic_write_json


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
