"""Checkpoint save/load time on both storage backends.

A checkpoint of the benchmark-size model (about 0.4M parameters plus Adam's
two moment buffers: ~5 MB) must save and load in well under one training
epoch (a few seconds). This times, per backend:

    put_bytes / get_bytes (verified)  of a torch state dict of that size
                                       (random bytes of the same size without torch)
    put_file / get_file (verified)    of a 64 MiB data file (the data-cache path)
    put_bytes of small objects        2 KiB, each under its own folder, as the
                                       coordinator's journal entries and member
                                       histories are: wall and CPU per put

Backends: a local directory (in a temp folder) and S3 on moto's server on
loopback; or a real MinIO with --s3-url s3://bucket/prefix (endpoint and keys
from AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).

    python benchmarks/bench_storage.py [--repeats 10] [--s3-url URL]
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from autolfads.storage import Store, open_store

if TYPE_CHECKING:  # moto is a dev-only dependency, imported when the benchmark needs it
    from moto.server import ThreadedMotoServer

MiB = 1024 * 1024


def checkpoint_blob() -> tuple[bytes, str]:
    """A serialised ~0.4M-parameter state dict with Adam state, and its label."""
    try:
        import torch
    except ImportError:
        return os.urandom(5 * MiB), "random bytes (torch not installed)"
    torch.manual_seed(0)
    n_params = 400_000
    # Shapes like an LFADS generator/encoder mix; sizes only matter in total.
    shapes = [(100, 300), (100, 300), (64, 450), (64, 450), (40, 100), (300,), (450,)]
    tensors = {f"w{i}": torch.randn(*s) for i, s in enumerate(shapes)}
    total = sum(t.numel() for t in tensors.values())
    tensors["rest"] = torch.randn(max(n_params - total, 1))
    model = dict(tensors)
    optim = {
        k: {"exp_avg": torch.randn_like(v), "exp_avg_sq": torch.rand_like(v)}
        for k, v in model.items()
    }
    buf = io.BytesIO()
    torch.save({"model": model, "optimizer": optim, "epoch": 25}, buf)
    params = sum(v.numel() for v in model.values())
    return buf.getvalue(), f"torch state dict, {params / 1e6:.2f}M params + Adam state"


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median, max) seconds over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), max(times)


def bench_store(name: str, store: Store, blob: bytes, data_file: Path, repeats: int) -> list[tuple]:
    key = "bench-run/members/m000/gen-0001/checkpoint.pt"
    data_key = "bench-run/data/bench.h5"
    out = data_file.with_name("downloaded.h5")
    rows = [
        (
            name,
            f"save checkpoint ({len(blob) / MiB:.1f} MiB)",
            *timed(lambda: store.put_bytes(key, blob), repeats),
        ),
        (
            name,
            f"load checkpoint ({len(blob) / MiB:.1f} MiB, verified)",
            *timed(lambda: store.get_bytes(key), repeats),
        ),
    ]
    size = data_file.stat().st_size / MiB
    data_repeats = max(2, repeats // 3)
    rows.append(
        (
            name,
            f"upload data file ({size:.0f} MiB)",
            *timed(lambda: store.put_file(data_key, data_file), data_repeats),
        )
    )
    rows.append(
        (
            name,
            f"download data file ({size:.0f} MiB, verified)",
            *timed(lambda: store.get_file(data_key, out), data_repeats),
        )
    )
    store.delete(key)
    store.delete(data_key)
    return rows


def small_puts(store: Store, rounds: int, count: int = 500) -> list[tuple]:
    """Per put of a 2 KiB object (median of `rounds` rounds of `count`):
    wall, user CPU and system CPU milliseconds. Local writes are where the
    coordinator's write path spends its system time."""
    data = os.urandom(2048)
    per_round = []
    for r in range(rounds + 1):  # the first round (folders made) is a warm-up
        before, start = os.times(), time.perf_counter()
        for i in range(count):
            store.put_bytes(f"bench-run/members/m{i:04d}/history.jsonl", data)
        wall, after = time.perf_counter() - start, os.times()
        if r:
            user, system = after.user - before.user, after.system - before.system
            per_round.append((wall, user, system))
    ms = [statistics.median(x[i] for x in per_round) / count * 1000 for i in range(3)]
    return [("put 2 KiB object", *ms)]


def start_moto() -> tuple[ThreadedMotoServer, str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--s3-url", help="benchmark this S3/MinIO store instead of moto")
    parser.add_argument("--small-rounds", type=int, default=5, help="rounds of 500 small puts")
    parser.add_argument(
        "--small-only", action="store_true", help="only the small puts (local backend)"
    )
    args = parser.parse_args(argv)
    if args.small_only:
        with tempfile.TemporaryDirectory() as tmp:
            print_small(small_puts(open_store(str(Path(tmp) / "store")), args.small_rounds))
        return 0

    blob, label = checkpoint_blob()
    rows: list[tuple] = []
    with tempfile.TemporaryDirectory() as tmp:
        data_file = Path(tmp) / "data.h5"
        data_file.write_bytes(os.urandom(64 * MiB))
        local = open_store(str(Path(tmp) / "store"))
        rows += bench_store("local", local, blob, data_file, args.repeats)
        small = small_puts(local, args.small_rounds)
        if args.s3_url:
            rows += bench_store(
                "s3 (given)", open_store(args.s3_url), blob, data_file, args.repeats
            )
        else:
            server, endpoint = start_moto()
            env = {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench",
                "AWS_REGION": "us-east-1",
            }
            s3 = open_store("s3://autolfads-bench/runs", env=env)
            rows += bench_store("s3 (moto, loopback)", s3, blob, data_file, args.repeats)
            server.stop()

    print(f"checkpoint: {label}, {len(blob) / MiB:.2f} MiB")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print("| backend | operation | median s | max s |")
    print("|---|---|---|---|")
    for backend, op, median, worst in rows:
        print(f"| {backend} | {op} | {median:.3f} | {worst:.3f} |")
    print()
    print_small(small)
    return 0


def print_small(small: list[tuple]) -> None:
    print("| backend | operation | wall ms | user CPU ms | system CPU ms |")
    print("|---|---|---|---|---|")
    for op, wall, user, system in small:
        print(f"| local | {op} | {wall:.2f} | {user:.2f} | {system:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
