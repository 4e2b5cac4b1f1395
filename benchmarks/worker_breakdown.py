"""Where the trainers' worker-seconds of a finished search went.

Reads a finished run (its members' metrics.json, with every epoch's seconds,
and its coordinator state) and the trainers' logs (the `timing {...}` lines of
`autolfads.trainer.timing`: cumulative seconds per phase of each trainer
process), and prints each part's share of the worker-seconds, i.e. the sum
over trainer processes of their lifetime from creation to exit.

    # a run that already finished (logs: `autolfads run --log-dir DIR`)
    python benchmarks/worker_breakdown.py runs/chaotic-rnn-search --logs DIR

    # run a config first (fresh workspace, --no-report), then break it down
    python benchmarks/worker_breakdown.py --run examples/chaotic_rnn_search.yaml \\
        --mode async --workers 2 --threads 1

Headline: the per-epoch seconds in metrics.json over the worker-seconds (the
share of worker time spent in training epochs). The table partitions each
process's lifetime by what its main thread was doing; "other" is what no
phase claimed (bookkeeping, logging, the time between the last line and exit
is not counted at all).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from autolfads.config import load_config
from autolfads.coordinator.search.recovery import read_state
from autolfads.storage import RunLayout, open_store
from autolfads.trainer.data.config_data import ensure_data_file
from autolfads.trainer.timing import PHASES, TIMING_PREFIX

LABELS = {
    "start": "process start + imports",
    "data": "config + data load",
    "build": "model/optimizer/data tensors build",
    "ckpt_load": "checkpoint fetch + parse",
    "train": "training epochs",
    "ckpt_save": "checkpoint save + upload (+ metrics.json)",
    "rpc": "lease requests, heartbeats, reports",
    "wait": "waiting for work (WAIT replies, generation boundaries)",
    "other": "other (unclaimed)",
}


def last_timing_lines(log_dir: Path) -> dict[int, dict]:
    """The last timing line of every trainer process in the logs (by pid)."""
    last: dict[int, dict] = {}
    for path in sorted(log_dir.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            at = line.find(TIMING_PREFIX + "{")
            if at < 0:
                continue
            doc = json.loads(line[at + len(TIMING_PREFIX) :])
            last[int(doc["pid"])] = doc
    return last


def epoch_seconds(store_url: str, run: str) -> tuple[float, int, int]:
    """(sum of per-epoch seconds, epochs, segments) over the run's metrics.json files."""
    store = open_store(store_url, create_bucket=False)
    layout = RunLayout(run)
    total, epochs, segments = 0.0, 0, 0
    for info in store.list(layout.members_prefix()):
        if not info.key.endswith("/" + RunLayout.METRICS):
            continue
        doc = store.get_json(info.key)
        segments += 1
        for epoch in doc["epochs"]:
            total += float(epoch["seconds"])
            epochs += 1
    return total, epochs, segments


def search_outcome(store_url: str, run: str) -> str:
    """Status, best member and a digest of the search's results: every
    generation's decisions (ranking and metrics, who copied whom, new
    hyperparameters) and every segment's per-epoch metrics. Equal digests
    mean the same search, bit for bit. Left out: times, worker names, and
    checkpoint checksums (a checkpoint also holds the process's global RNG
    states, which every new process seeds from OS entropy)."""
    store = open_store(store_url, create_bucket=False)
    layout = RunLayout(run)
    state = read_state(store, run, history=False)
    if state is None:
        raise SystemExit(f"worker_breakdown: no coordinator state for run {run} in {store_url}")
    results = []
    for info in store.list(layout.prefix()):
        if info.key.startswith(layout.generations_prefix()):
            record = store.get_json(info.key)
            record.pop("events", None)
            for member in record.get("members", {}).values():
                member.pop("sha256", None)
            results.append(record)
        elif info.key.endswith("/" + RunLayout.METRICS) and "/members/" in info.key:
            doc = store.get_json(info.key)
            epochs = [{k: v for k, v in e.items() if k != "seconds"} for e in doc["epochs"]]
            results.append([info.key, doc["hparams"], doc["fitness"], epochs])
    digest = hashlib.sha256(json.dumps(results, sort_keys=True).encode()).hexdigest()[:16]
    best = state.best
    where = "none" if best is None else f"{best.member} generation {best.generation}"
    metric = None if best is None else best.metric
    return (
        f"{state.status}, mode {state.mode}; best {where} metric {metric!r}; "
        f"results digest {digest}"
    )


def breakdown(store_url: str, run: str, log_dir: Path) -> str:
    procs = last_timing_lines(log_dir)
    if not procs:
        raise SystemExit(f"no timing lines in {log_dir}/*.log")
    totals = dict.fromkeys([*PHASES, "other"], 0.0)
    worker_s = 0.0
    for doc in procs.values():
        life = float(doc["t"]) - float(doc["process_start"])
        worker_s += life
        claimed = 0.0
        for phase in PHASES:
            totals[phase] += float(doc[phase])
            claimed += float(doc[phase])
        totals["other"] += life - claimed
    ended = sum(doc["event"] == "exit" for doc in procs.values())
    epochs_s, epochs, segments = epoch_seconds(store_url, run)
    lines = [
        f"run {run} ({search_outcome(store_url, run)}): {segments} segments, {epochs} epochs; "
        f"{len(procs)} trainer processes ({ended} logged their exit)",
        f"worker-seconds {worker_s:.1f}; per-epoch seconds in metrics.json {epochs_s:.1f} "
        f"= {100 * epochs_s / worker_s:.1f} % of worker-seconds",
        "",
        "| part | seconds | share | per segment |",
        "|---|---|---|---|",
    ]
    for phase, seconds in totals.items():
        lines.append(
            f"| {LABELS[phase]} | {seconds:.1f} | {100 * seconds / worker_s:.1f} % "
            f"| {1000 * seconds / max(segments, 1):.0f} ms |"
        )
    return "\n".join(lines)


def run_config(args: argparse.Namespace, root: Path) -> tuple[str, str, Path, float]:
    """Run `args.run` in a fresh workspace; (store URL, run name, log dir, wall s)."""
    src = Path(args.run).resolve()
    cfg = yaml.safe_load(src.read_text())
    # Keep the data where the original config puts it (generated once).
    cfg["data"]["path"] = str((src.parent / cfg["data"]["path"]).resolve())
    if args.mode:
        cfg.setdefault("pbt", {})["mode"] = args.mode
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    ensure_data_file(load_config(config))  # generated if missing, before the clock starts
    logs, store = root / "logs", root / "runs"
    command = [
        sys.executable, "-m", "autolfads", "run", str(config), "--storage", str(store),
        "--log-dir", str(logs), "--no-report", "--progress", "quiet",
        "--workers", str(args.workers), "--threads", str(args.threads),
    ]  # fmt: skip
    start = time.monotonic()
    # cwd: `-m` puts the working directory first on sys.path, ahead of
    # PYTHONPATH; a run started inside a checkout would use that checkout.
    proc = subprocess.run(command, capture_output=True, text=True, cwd=root)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return str(store), cfg["name"], logs, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_url", nargs="?", help="STORAGE/RUN of a finished run")
    parser.add_argument("--logs", type=Path, help="the trainers' log folder")
    parser.add_argument("--run", metavar="CONFIG", help="run this config first")
    parser.add_argument("--mode", choices=["sync", "async"], help="override pbt.mode (--run)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="with --run: keep the run and logs here")
    args = parser.parse_args()
    if args.run:
        with tempfile.TemporaryDirectory(prefix="worker-breakdown-") as tmp:
            root = (args.keep or Path(tmp)).resolve()  # the run starts in it (cwd)
            root.mkdir(parents=True, exist_ok=True)
            store, run, logs, wall = run_config(args, root)
            print(f"`autolfads run` took {wall:.1f} s wall")
            print(breakdown(store, run, logs))
        return
    if not args.run_url or not args.logs:
        parser.error("give STORAGE/RUN and --logs, or --run CONFIG")
    base, _, run = args.run_url.rstrip("/").rpartition("/")
    print(breakdown(base, run, args.logs))


if __name__ == "__main__":
    main()
