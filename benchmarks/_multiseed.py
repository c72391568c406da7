"""Several seeds and several test files of the stock-vs-tfcompress comparison, summarised together.

Each seed's result (``stock_vs_tfcompress.run_task``) carries ``files``: artifact row name -> test file
name -> per-example correctness (0/1). Over the seeds this gives, per artifact: the accuracy on each
file and on all files together (mean, min, max over seeds), the mean gzip size and p50 latency, and a
paired bootstrap interval of its difference from stock dynamic, where each sentence counts with its
correctness averaged over the seeds (seed ``i`` of ours and of the stock path read the same sentences).
"""
from __future__ import annotations

import numpy as np

BASE = "stock-dynamic"


def paired_mean_difference(values: np.ndarray, base: np.ndarray, resamples: int = 2000, seed: int = 0) -> dict:
    """Mean of ``values - base`` in points (per-sentence correctness averaged over seeds) and its 95 %
    paired bootstrap interval over the sentences."""
    values, base = np.asarray(values, np.float64), np.asarray(base, np.float64)
    if values.shape != base.shape or not values.size:
        raise ValueError(f"need equal, non-empty shapes, got {values.shape} and {base.shape}")
    diff = values - base
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(resamples, diff.size))].mean(axis=1) * 100.0
    low, high = np.percentile(means, [2.5, 97.5])
    return {"delta_pt": float(diff.mean() * 100.0), "ci95_pt": [round(float(low), 3), round(float(high), 3)],
            "examples": int(diff.size), "resamples": resamples}


def _row(result: dict, name: str) -> dict:
    return next((row for row in result["rows"] if row["row"] == name), {})


def aggregate(per_seed: dict, dominates: dict) -> dict:
    """Per artifact over the seeds of ``per_seed`` (seed -> result); see the module docstring.

    ``dominates``: ``{"gzip_ratio": 0.5, "latency_ratio": 0.6}``; an artifact dominates when it was
    released for every seed, its mean accuracy over all files is >= stock dynamic's, and its mean gzip
    size and mean p50 (2 threads) are within those ratios of stock dynamic's means.
    """
    seeds = sorted(per_seed)
    names = [name for name in per_seed[seeds[0]]["files"] if all(name in per_seed[s]["files"] for s in seeds)]
    files = list(per_seed[seeds[0]]["files"][names[0]]) if names else []
    for seed in seeds:
        for name in names:
            if list(per_seed[seed]["files"][name]) != files:
                raise ValueError(f"seed {seed}, {name}: scored on {list(per_seed[seed]['files'][name])}, seed "
                                 f"{seeds[0]} on {files}; every seed must be scored on the same files")
    table = {}
    for name in names:
        hits = {f: [np.asarray(per_seed[s]["files"][name][f], np.float64) for s in seeds] for f in files}
        combined = [np.concatenate([hits[f][i] for f in files]) for i in range(len(seeds))]
        rows = [_row(per_seed[s], name) for s in seeds]
        gzip = [r.get("gzip_bytes") for r in rows if r.get("gzip_bytes")]
        p50 = [r.get("p50_ms_2_threads") for r in rows if r.get("p50_ms_2_threads")]
        table[name] = {
            "per_file": {f: {"mean": float(np.mean([h.mean() for h in hits[f]])),
                             "seeds": [float(h.mean()) for h in hits[f]], "examples": int(hits[f][0].size)}
                         for f in files},
            "combined": {"mean": float(np.mean([c.mean() for c in combined])),
                         "seeds": [float(c.mean()) for c in combined], "examples": int(combined[0].size)},
            "per_sentence": np.mean(combined, axis=0),
            "gzip_bytes": float(np.mean(gzip)) if gzip else None,
            "p50_ms_2_threads": float(np.mean(p50)) if p50 else None,
            "released_seeds": sum(bool(r.get("released")) for r in rows),
        }
    base = table.get(BASE)
    base_sentences = base["per_sentence"] if base is not None else None
    dominating = []
    for name, entry in table.items():
        sentences = entry.pop("per_sentence")
        if base is None or name == BASE:
            continue
        entry["paired_vs_stock_dynamic"] = paired_mean_difference(sentences, base_sentences)
        entry["delta_vs_stock_dynamic_pt"] = 100.0 * (entry["combined"]["mean"] - base["combined"]["mean"])
        entry["gzip_ratio"] = entry["gzip_bytes"] / base["gzip_bytes"] if entry["gzip_bytes"] and base["gzip_bytes"] else None
        entry["latency_ratio"] = (entry["p50_ms_2_threads"] / base["p50_ms_2_threads"]
                                  if entry["p50_ms_2_threads"] and base["p50_ms_2_threads"] else None)
        if (entry["released_seeds"] == len(seeds) and entry["delta_vs_stock_dynamic_pt"] >= 0
                and entry["gzip_ratio"] is not None and entry["gzip_ratio"] <= dominates["gzip_ratio"]
                and entry["latency_ratio"] is not None and entry["latency_ratio"] <= dominates["latency_ratio"]):
            dominating.append(name)
    return {"seeds": seeds, "files": files, "artifacts": table, "dominating": dominating}


def summary_lines(task: str, result: dict, dominates: dict) -> list[str]:
    files, table = result["files"], result["artifacts"]
    examples = sum(table[next(iter(table))]["per_file"][f]["examples"] for f in files) if table else 0
    lines = [f"### {task}: {len(result['seeds'])} seeds ({', '.join(map(str, result['seeds']))}), accuracy on "
             f"{' + '.join(files)} ({examples} sentences)", "",
             "| artifact | " + " | ".join(f"{f} (mean)" for f in files) + " | all files: mean (min .. max) | "
             "gzip MB | p50 ms 2 thr | Δ vs stock dynamic (pt) | paired 95 % CI (pt) | gzip ratio | latency ratio | "
             "released |", "|---" * (len(files) + 9) + "|"]
    for name, entry in table.items():
        combined = entry["combined"]
        ci = (entry.get("paired_vs_stock_dynamic") or {}).get("ci95_pt")
        number = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        lines.append(
            f"| {name} | " + " | ".join(f"{entry['per_file'][f]['mean']:.4f}" for f in files)
            + f" | {combined['mean']:.4f} ({min(combined['seeds']):.4f} .. {max(combined['seeds']):.4f}) | "
            f"{number(entry['gzip_bytes'] and entry['gzip_bytes'] / 1e6, '.2f')} | "
            f"{number(entry['p50_ms_2_threads'], '.2f')} | {number(entry.get('delta_vs_stock_dynamic_pt'), '+.2f')} | "
            f"{f'{ci[0]:+.2f} .. {ci[1]:+.2f}' if ci else '-'} | {number(entry.get('gzip_ratio'), '.2f')} | "
            f"{number(entry.get('latency_ratio'), '.2f')} | {entry['released_seeds']}/{len(result['seeds'])} |")
    lines += ["", f"A released artifact dominates stock dynamic (mean accuracy over all files ≥, gzip ≤ "
                  f"{dominates['gzip_ratio']}x, p50 ≤ {dominates['latency_ratio']}x, released for every seed): "
                  f"**{'yes' if result['dominating'] else 'no'}** ({', '.join(result['dominating']) or 'none'}).", ""]
    return lines
