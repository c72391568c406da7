#!/usr/bin/env python
"""Fine-tuning sweep: the recipe's finetune stage over a grid of learning rates, epochs and seeds.

Each grid point is the recipe itself (``recipes/<task>.py --stages finetune --learning-rate LR
--epochs E --seed S``) run as a subprocess into ``OUTPUT/<task>-lr<LR>-ep<E>-seed<S>``, so a point is
reproduced by that one command and an interrupted sweep resumes: a finished point is skipped by the
recipe's own stage manifests, a half-trained one resumes from its last checkpoint. The table gives
each point's test metric (the number the accuracy goals are about), the validation metric the best
checkpoint was chosen on, the step it was taken at and the training time, then the mean and spread
over seeds per (learning rate, epochs).

    python benchmarks/finetune_sweep.py --task sst2 --learning-rates 5e-5 3e-5 --epochs 2 3 \
        --seeds 42 --output-dir runs/sweep

``--smoke`` runs the same code on the tiny model and tiny data (seconds per point) and never appends
to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import HERE, smoke_data_dir, smoke_model_dir, write_results

RECIPES = HERE.parent / "recipes"
METRIC = {"sst2": "accuracy", "conll2003": "f1"}


def point_name(task: str, lr: float, epochs: float, seed: int) -> str:
    return f"{task}-lr{lr:g}-ep{epochs:g}-seed{seed}"


def point_command(task: str, lr: float, epochs: float, seed: int, output: Path, extra: list[str]) -> list[str]:
    return [sys.executable, str(RECIPES / f"{task}.py"), "--stages", "finetune", "--learning-rate", f"{lr:g}",
            "--epochs", f"{epochs:g}", "--seed", str(seed), "--output-dir", str(output), *extra]


def read_point(output: Path, task: str) -> dict:
    """The finetune stage's numbers from a finished point's report.json."""
    report = json.loads((output / "report.json").read_text())
    stage = next(s for s in report["stages"] if s["name"] == "finetune")
    metric = METRIC[task]
    return {"test": stage["metrics"][metric], "validation": stage["eval_metrics"][metric],
            "best_step": stage["best_step"], "steps": stage["steps"], "seconds": stage["seconds"]}


def summarise(points: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for point in points:
        groups.setdefault((point["learning_rate"], point["epochs"]), []).append(point)
    rows = []
    for (lr, epochs), members in groups.items():
        tests = [m["test"] for m in members]
        rows.append({"learning_rate": lr, "epochs": epochs, "seeds": len(members),
                     "test_mean": statistics.fmean(tests),
                     "test_std": statistics.stdev(tests) if len(tests) > 1 else None,
                     "test_min": min(tests), "test_max": max(tests)})
    return sorted(rows, key=lambda r: -r["test_mean"])


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(METRIC), default="sst2")
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[5e-5, 3e-5])
    parser.add_argument("--epochs", type=float, nargs="+", default=[2.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42],
                        help="seeds per point (default: 42, the recipes' default, so the first point is the default run)")
    parser.add_argument("--output-dir", default="runs/finetune-sweep")
    parser.add_argument("--results-dir", default=None, help="where the JSON goes (default: benchmarks/results)")
    parser.add_argument("--smoke", action="store_true", help="tiny model and data: checks the plumbing only")
    args = parser.parse_args(argv)
    for name, values in (("--learning-rates", args.learning_rates), ("--epochs", args.epochs)):
        if any(v <= 0 for v in values):
            parser.error(f"{name} must be positive, got {values}")

    root = Path(args.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    extra: list[str] = []
    if args.smoke:
        task_kind = "sequence" if args.task == "sst2" else "token"
        model = smoke_model_dir(root / "smoke", task_kind, num_labels=2 if task_kind == "sequence" else 9)
        data = smoke_data_dir(root / "smoke", args.task)
        extra = ["--model", model, "--data-dir", data, "--max-train-samples", "32", "--batch-size", "8"]

    points = []
    for lr in args.learning_rates:
        for epochs in args.epochs:
            for seed in args.seeds:
                output = root / point_name(args.task, lr, epochs, seed)
                command = point_command(args.task, lr, epochs, seed, output, extra)
                print(" ".join(command), flush=True)
                started = time.time()
                log_path = output.parent / f"{output.name}.log"  # with_suffix would cut "lr0.0001..." at its dot
                with open(log_path, "a") as log:
                    finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
                if finished.returncode != 0:
                    raise SystemExit(f"point {output.name} failed (exit {finished.returncode}); its log: {log_path}")
                point = {"learning_rate": lr, "epochs": epochs, "seed": seed, "output_dir": str(output),
                         "wall_seconds": round(time.time() - started, 1), **read_point(output, args.task)}
                print(f"  test {point['test']:.4f}  validation {point['validation']:.4f}  "
                      f"best step {point['best_step']}/{point['steps']}  {point['seconds']:.0f} s", flush=True)
                points.append(point)

    summary = summarise(points)
    metric = METRIC[args.task]
    lines = [f"Task {args.task}, finetune stage only, test {metric} (validation = the checkpoint-selection split); "
             "one row per point, then per (learning rate, epochs) over seeds.", "",
             f"| lr | epochs | seed | test {metric} | validation | best step | train s |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {p['learning_rate']:g} | {p['epochs']:g} | {p['seed']} | {p['test']:.4f} | {p['validation']:.4f} | "
              f"{p['best_step']}/{p['steps']} | {p['seconds']:.0f} |" for p in points]
    lines += ["", f"| lr | epochs | seeds | mean test {metric} | std | min | max |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['learning_rate']:g} | {r['epochs']:g} | {r['seeds']} | {r['test_mean']:.4f} | "
              f"{'-' if r['test_std'] is None else format(r['test_std'], '.4f')} | {r['test_min']:.4f} | "
              f"{r['test_max']:.4f} |" for r in summary]
    print("\n".join(lines))
    command = "python benchmarks/finetune_sweep.py " + " ".join(argv if argv is not None else sys.argv[1:])
    name = f"finetune_sweep-{args.task}" + ("-smoke" if args.smoke else "")
    return write_results(name, command, {"points": points, "summary": summary}, lines,
                         results_dir=args.results_dir, append_markdown=not args.smoke)


if __name__ == "__main__":
    main()
