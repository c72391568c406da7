"""``tfcompress launch --workers N -- COMMAND``: N local worker processes of one training cluster.

Each process runs ``COMMAND`` with its own ``TF_CONFIG``: the same cluster of N workers on
``127.0.0.1`` ports free at launch (loopback only), and its own task index. Worker 0 is the chief: it
writes the run folder; the others train, keep only local temporary files, and exit when training ends.
The launcher waits for all of them and fails (with the first failing worker's exit code) if one
fails; the others are then stopped. For several machines set ``TF_CONFIG`` on each host yourself:
docs/distributed.md.

    tfcompress launch --workers 2 -- tfcompress run sst2 --smoke --output-dir runs/smoke2
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

LOOPBACK = "127.0.0.1"
# after one worker fails, how long the others get to end on their own (their collectives time out
# after tfcompress.train.distribute.COLLECTIVE_TIMEOUT_SECONDS = 60 s) before they are stopped
GRACE_SECONDS = 90


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "launch", help="run a command as N local workers of one tf.distribute cluster (TF_CONFIG)",
        description="Start --workers processes of COMMAND on this machine, each with the TF_CONFIG of one "
                    "worker of a MultiWorkerMirroredStrategy cluster on 127.0.0.1; wait for all of them. "
                    "COMMAND is a tfcompress command (`tfcompress run sst2 ...`: run with this "
                    "Python) or any program (`python recipes/sst2.py ...`). Exit code: 0 when every worker succeeded, else the first failure's.")
    parser.add_argument("--workers", type=int, default=2, help="number of worker processes (>= 1)")
    parser.add_argument("command", nargs="+", metavar="-- COMMAND", help="the command every worker runs")
    parser.set_defaults(handler=command)


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now (the OS picks them)."""
    sockets, ports = [], []
    try:
        for _ in range(count):
            handle = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            handle.bind((LOOPBACK, 0))
            sockets.append(handle)
            ports.append(handle.getsockname()[1])
    finally:
        for handle in sockets:
            handle.close()
    return ports


def tf_configs(ports: list[int]) -> list[str]:
    """The ``TF_CONFIG`` of each worker of a loopback cluster on ``ports`` (worker 0 is the chief)."""
    cluster = {"worker": [f"{LOOPBACK}:{port}" for port in ports]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            for index in range(len(ports))]


def worker_command(command: list[str]) -> list[str]:
    """``command`` as a process argv: ``tfcompress ...`` runs this Python's ``python -m tfcompress.cli``
    (the same installation as the launcher); anything else runs as given."""
    if command and command[0] == "tfcompress":
        return [sys.executable, "-m", "tfcompress.cli", *command[1:]]
    return list(command)


def launch(command: list[str], workers: int, env: dict | None = None, poll_seconds: float = 0.5) -> int:
    """Run ``command`` as ``workers`` local workers; 0 when all succeed, else the first failure's code."""
    if workers < 1:
        raise ValueError(f"workers={workers}: must be >= 1")
    argv = worker_command(command)
    base = dict(os.environ if env is None else env)
    processes = []
    for config in tf_configs(free_ports(workers)):
        processes.append(subprocess.Popen(argv, env={**base, "TF_CONFIG": config}))
    failed_code, failed_at = 0, None
    while True:
        codes = [process.poll() for process in processes]
        if all(code is not None for code in codes):
            break
        for index, code in enumerate(codes):
            if code not in (None, 0) and failed_at is None:
                failed_code, failed_at = code, time.monotonic()
                print(f"tfcompress launch: worker {index} exited with code {code}; waiting up to {GRACE_SECONDS} s "
                      "for the others", file=sys.stderr)
        if failed_at is not None and time.monotonic() - failed_at > GRACE_SECONDS:
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGKILL)
        time.sleep(poll_seconds)
    for index, process in enumerate(processes):
        if process.returncode != 0 and not failed_code:
            failed_code = process.returncode
    return failed_code if failed_code >= 0 else 128 - failed_code  # a signal -N: the shell's 128 + N


def command(args) -> int:
    argv = list(args.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if args.workers < 1 or not argv:
        print("tfcompress launch: error: need --workers >= 1 and a command after --", file=sys.stderr)
        return 2
    return launch(argv, args.workers)
