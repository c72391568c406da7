"""``tfcompress bench``: batch-1 latency of .tflite artifacts (warm-up excluded, median over rounds)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from tfcompress.cli.formatting import FORMATTER
from tfcompress.errors import TfcompressError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="latency of .tflite artifacts (batch 1, warm-up excluded)", formatter_class=FORMATTER,
        description="Time .tflite artifacts with ai_edge_litert at batch 1: p50, p90 and mean over --runs "
                    "invocations after --warmup untimed ones, for each thread count. Inputs are all-ones token "
                    "ids with a full attention mask at the artifact's own sequence length. Also shows into how many "
                    "pieces the XNNPACK delegate splits the graph (1: all of it runs in XNNPACK).")
    parser.add_argument("artifacts", nargs="*", help=".tflite files")
    parser.add_argument("--run-dir", default=None,
                        help="a run folder: benchmark every artifact listed in its report.json")
    parser.add_argument("--threads", default="1,2", help="comma-separated interpreter thread counts")
    parser.add_argument("--runs", type=int, default=100, help="timed invocations per thread count")
    parser.add_argument("--warmup", type=int, default=10, help="untimed invocations first")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure the artifacts in turn this many times (A B C A B C ...) and report the "
                             "median of each statistic over the rounds: a comparison that is fair when the "
                             "machine's load drifts")
    parser.add_argument("--no-xnnpack", action="store_true",
                        help="time LiteRT's builtin kernels only (without its default XNNPACK delegate): what "
                             "a runtime without XNNPACK would run (XNNPACK pieces then show 0)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=command, parser=parser)


def command(args) -> int:
    parser = args.parser
    try:
        threads = [int(t) for t in args.threads.split(",") if t.strip()]
    except ValueError:
        parser.error(f"--threads {args.threads!r}: expected comma-separated integers, e.g. 1,2")
    if not threads or min(threads) < 1:
        parser.error(f"--threads {args.threads!r}: thread counts must be >= 1")
    if args.runs < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error(f"--runs {args.runs} / --warmup {args.warmup} / --rounds {args.rounds}: need runs >= 1, "
                     f"warmup >= 0 and rounds >= 1")
    paths = [Path(p) for p in args.artifacts]
    if args.run_dir:
        report_path = Path(args.run_dir) / "report.json"
        if not report_path.is_file():
            parser.error(f"--run-dir {args.run_dir}: no report.json there")
        paths += [Path(args.run_dir) / a["path"] for a in json.loads(report_path.read_text()).get("artifacts", [])
                  if a.get("path")]
    if not paths:
        parser.error("give .tflite files or --run-dir")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        parser.error(f"no such artifact: {', '.join(missing)}")
    import numpy as np

    from tfcompress.evaluate.runtime import TFLiteModel, sizes  # deferred: only timing needs LiteRT

    try:
        interpreters = {(path, count): TFLiteModel(path, num_threads=count, xnnpack=not args.no_xnnpack)
                        for path in paths for count in threads}
    except TfcompressError as error:
        print(f"tfcompress bench: error: {error}", file=sys.stderr)
        return 2
    samples = {key: [] for key in interpreters}
    for _ in range(args.rounds):
        for key, model in interpreters.items():
            samples[key].append(model.latency(warmup=args.warmup, runs=args.runs))
    results = []
    for path in paths:
        row = {"artifact": str(path), **sizes(path), "latency_ms": {}, "rounds": args.rounds,
               "xnnpack": not args.no_xnnpack,
               "xnnpack_partitions": interpreters[(path, threads[0])].xnnpack_partitions(),
               "seq_length": int(interpreters[(path, threads[0])].seq_length)}
        for count in threads:
            rounds = samples[(path, count)]
            row["latency_ms"][f"threads{count}"] = {k: round(float(np.median([r[k] for r in rounds])), 3)
                                                   for k in rounds[0]}
        results.append(row)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    header = "artifact | seq | MB | gzip MB | XNNPACK pieces | " + " | ".join(f"p50/p90 ms @{t} thr" for t in threads)
    print(header)
    for row in results:
        cells = [f"{row['latency_ms'][f'threads{t}']['p50']:.2f}/{row['latency_ms'][f'threads{t}']['p90']:.2f}"
                 for t in threads]
        print(f"{row['artifact']} | {row['seq_length']} | {row['size_bytes'] / 1e6:.2f} | "
              f"{row['gzip_bytes'] / 1e6:.2f} | {row['xnnpack_partitions']} | " + " | ".join(cells))
    return 0
