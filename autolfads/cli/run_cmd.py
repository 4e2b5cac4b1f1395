"""`autolfads run CONFIG.yaml`: the whole PBT search on this machine.

Starts the coordinator and N trainer workers, runs the search to the end,
posterior-samples and evaluates the best model, builds the report, and prints
where everything is. Storage defaults to ./runs/<name>/; `--storage s3://...`
uses MinIO/S3 (credentials from the environment, see docs/storage.md).
Ctrl-C stops cleanly; run again with --resume to carry on.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from pathlib import Path

DEFAULT_STORAGE = "./runs"
LOCAL_LISTEN = "127.0.0.1:0"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="run a whole PBT search locally (coordinator + workers), then evaluate and report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", type=Path, metavar="CONFIG.yaml")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="store URL (default ./runs)")
    p.add_argument("--workers", type=int, help="trainer processes (default: GPUs, else cores/2)")
    p.add_argument("--threads", type=int, help="torch threads per worker (default: cores/workers)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="carry on an existing run")
    group.add_argument(
        "--force", action="store_true", help="delete an existing run and start again"
    )
    p.add_argument(
        "--progress",
        default="auto",
        choices=["auto", "plain", "jsonl", "quiet"],
        help="progress display on stderr (default: a live line on a terminal)",
    )
    p.add_argument(
        "--lease-timeout", type=float, default=60.0, metavar="SECONDS",
        help="re-queue a member whose worker is silent this long (default 60)",
    )  # fmt: skip
    p.add_argument(
        "--listen",
        default=LOCAL_LISTEN,
        help="coordinator address (default: a free loopback port); tokens are random per run",
    )
    p.add_argument(
        "--allow-plaintext",
        action="store_true",
        help="allow a non-loopback --listen without TLS (the tokens travel in the clear)",
    )
    p.add_argument("--log-dir", type=Path, help="worker logs (default: a temporary folder)")
    ray = p.add_argument_group("on a Ray cluster (needs the 'ray' extra)")
    ray.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run on the existing Ray cluster at auto, HEAD:6379 or ray://HEAD:10001",
    )
    # Defaults applied in `_join_ray`: None says the flag was not given.
    ray.add_argument(
        "--trainer-cpus", type=float, metavar="N",
        help="CPUs Ray reserves per trainer actor (default 1)",
    )  # fmt: skip
    ray.add_argument(
        "--trainer-gpus", type=float, metavar="N",
        help="GPUs per trainer actor; a fraction (0.5) lets trainers share a GPU (default 0)",
    )  # fmt: skip
    ray.add_argument(
        "--tls-dir", type=Path, metavar="DIR",
        help="TLS for a coordinator beyond loopback: tls.crt + tls.key (head) and ca.crt",
    )  # fmt: skip
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.set_defaults(func=run)


def _check_log_dir(path: Path) -> None:
    """Fail unless `path` is a folder, or one this user can create: the
    launcher makes it only after the run is staged (a failure there left a
    traceback and a staged run that the rerun refused as existing)."""
    from autolfads.errors import ConfigError

    if path.exists() and not path.is_dir():
        raise ConfigError(f"--log-dir {path}: is a file, not a folder")
    existing = path.absolute()
    while not existing.exists():  # the folder that `mkdir -p` would write into
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--log-dir {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--log-dir {path}: cannot write in {existing}")


def _options(args: argparse.Namespace):
    from autolfads.errors import ConfigError
    from autolfads.launcher import LaunchOptions, default_workers

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    workers, threads = default_workers(args.workers)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        threads = args.threads
    if not 0 < args.lease_timeout < math.inf:
        raise ConfigError(f"--lease-timeout must be > 0 seconds, got {args.lease_timeout}")
    # Checked here, before anything is staged (they used to fail after).
    if args.log_dir is not None:
        _check_log_dir(args.log_dir)
    if args.device == "cuda" and args.ray is None:
        from autolfads.trainer.model.device import resolve_device

        resolve_device(args.device)  # one line on a machine without a GPU
    return LaunchOptions(
        storage_url=args.storage,
        workers=workers,
        threads_per_worker=threads,
        device=args.device,
        resume=args.resume,
        force=args.force,
        lease_timeout_s=args.lease_timeout,
        listen=args.listen,
        log_dir=args.log_dir,
        allow_plaintext=args.allow_plaintext,
    )


def _print_results(store, run_name: str, doc: dict, report_keys: dict | None) -> None:
    from autolfads.cli.metrics_table import metrics_table
    from autolfads.trainer.evaluation.metrics import summary_names

    print(f"\nbest member {doc['member']} (generation {doc['generation']}), validation split:")
    print("\n".join(metrics_table(doc, summary_names(doc))))
    print(f"\nrun:     {store.location(run_name)}")
    print(f"best:    {store.location(run_name + '/best/')}")
    if report_keys:
        print(f"report:  {store.location(report_keys['index.html'])}")
    else:
        print(
            f"report:  not built (--no-report); later: autolfads report {store.location(run_name)}"
        )


def _resume_command(args: argparse.Namespace) -> str:
    """The command that carries this run on, quoted for a shell: a store URL
    such as `s3://b/p?endpoint=...&region=...` or a path with a space,
    pasted unquoted, ran another command (or the wrong one)."""
    argv = ["autolfads", "run", str(args.config), "--resume"]
    if args.storage != DEFAULT_STORAGE:
        argv += ["--storage", args.storage]
    if args.ray is not None:
        argv += ["--ray", args.ray]
    return shlex.join(argv)


def _join_ray(args: argparse.Namespace, opts, security):
    """Join and check the Ray cluster: (options with its worker count, the launch)."""
    from dataclasses import replace

    from autolfads import ray_launch
    from autolfads.ray_cluster import TrainerResources

    cpus = 1.0 if args.trainer_cpus is None else args.trainer_cpus
    gpus = 0.0 if args.trainer_gpus is None else args.trainer_gpus
    ray_opts = ray_launch.RayOptions(
        address=args.ray,
        resources=TrainerResources(cpus=cpus, gpus=gpus),
        tls_dir=args.tls_dir,
    )
    cluster = ray_launch.join(opts, ray_opts, security)
    if args.workers is None:  # the cluster's size, not this machine's
        opts = replace(opts, workers=ray_launch.default_workers(ray_opts.resources))
    if args.threads is None:
        opts = replace(opts, threads_per_worker=max(1, int(cpus)))

    def launch(cfg, store, data_path, printer) -> str:
        return ray_launch.run_on_ray(cfg, store, data_path, opts, ray_opts, cluster, printer)

    return opts, launch


def run(args: argparse.Namespace) -> int:
    from autolfads.config import load_config
    from autolfads.errors import ConfigError
    from autolfads.extras import require_extras
    from autolfads.launcher import check_launch, run_search
    from autolfads.progress_display import ProgressPrinter
    from autolfads.signals import interrupt_on_sigterm, restore_signals
    from autolfads.storage import open_store
    from autolfads.trainer.data.config_data import load_config_data
    from autolfads.worker_pool import SearchFailed

    # Checked before anything starts: a search must not train for hours and
    # then fail at its report for want of matplotlib.
    require_extras("autolfads run", "trainer")
    if not args.no_report:
        require_extras("autolfads run", "report", alternative="or pass --no-report")
    if args.ray is not None:
        require_extras("autolfads run --ray", "ray")
        if args.listen != LOCAL_LISTEN:
            raise ConfigError("--listen is not for --ray: the coordinator actor picks its address")
    elif args.tls_dir is not None:
        raise ConfigError("--tls-dir is for --ray; `autolfads coordinator` takes TLS flags")
    elif args.trainer_cpus is not None or args.trainer_gpus is not None:
        # Without Ray nothing reserves them: a local run would silently train
        # on --device with --threads.
        raise ConfigError(
            "--trainer-cpus and --trainer-gpus are for --ray; a local run takes "
            "--threads and --device"
        )
    opts = _options(args)
    cfg = load_config(args.config)
    security = check_launch(opts)  # before the data is made (synthetic) or read
    launch = None
    if args.ray is not None:  # the cluster is checked before anything is created
        opts, launch = _join_ray(args, opts, security)
    data_path, _ = load_config_data(cfg)  # bad data fails here, before a run exists
    store = open_store(opts.storage_url)
    printer = ProgressPrinter(mode=args.progress)
    # SIGTERM stops the search as Ctrl-C does: trainers stopped, state saved
    # (it used to kill this process alone, leaving the trainers training).
    previous = interrupt_on_sigterm()
    try:
        if launch is None:
            status = run_search(cfg, store, data_path, opts, security, printer)
        else:
            status = launch(cfg, store, data_path, printer)
    except KeyboardInterrupt:
        print(
            f"\nautolfads: interrupted; state saved. Resume with: {_resume_command(args)}",
            file=sys.stderr,
        )
        return 130
    finally:
        restore_signals(previous)
    if status != "finished":
        raise SearchFailed(
            f"search ended {status}; see `autolfads status {store.location(cfg.name)}`"
        )
    from autolfads.trainer.evaluation.finalize import finalize_run

    doc = finalize_run(store, cfg.name, device=opts.device)
    keys = None
    if not args.no_report:
        from autolfads.report.build import build_report

        keys = build_report(store, cfg.name)
    _print_results(store, cfg.name, doc, keys)
    return 0
