"""`autolfads status ADDRESS-or-RUN`: the population of a PBT search at a glance.

    autolfads status 127.0.0.1:50051            ask the running coordinator
    autolfads status 127.0.0.1:50051 --watch    redraw after every change
    autolfads status ./runs/chaotic-rnn-demo    read the run from storage
    autolfads status s3://autolfads/runs/demo --json

A HOST:PORT argument (or a `dns:`/`ipv4:`/`ipv6:` gRPC target) is a
coordinator, read with the client library. Anything else is a run in
storage: the store URL of its parent plus the run name as the last path
component; the command reads the coordinator's persisted state under
`<run>/coordinator/` (`coordinator.recovery.load_state`, so it works after
the coordinator is gone)
and the newest `<run>/generations/gen-NNNN.json` records. To read a local
folder whose name looks like HOST:PORT, prefix it with `./`.

Output: one row per member (best first): the generation in progress, its
phase, the latest smoothed validation NLL, the member it started from and
its hyperparameters; then the best so far and recent generations. `--json`
prints the same as one JSON object (one per line with `--watch`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from autolfads.cli.grpc_security import add_client_flags, client_security
from autolfads.config import TUNABLE_HPARAMS
from autolfads.errors import AutolfadsError

_ADDRESS = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\]):\d{1,5}$")
_GRPC_SCHEMES = ("dns:", "ipv4:", "ipv6:")
_CLEAR = "\x1b[H\x1b[2J"


class StatusError(AutolfadsError):
    """The run or coordinator named on the command line cannot be read."""


@dataclass(frozen=True)
class GenerationSummary:
    generation: int
    best_metric: float
    best_member: str = ""  # "" when only the metric is known (coordinator source)
    copies: int | None = None  # members that exploited another one after it
    complete: bool = True  # async mode: every member finished this generation


@dataclass(frozen=True)
class StatusReport:
    source: str  # the coordinator address or the store URL + run
    view: Any  # autolfads.coordinator.search.messages.StatusView
    generations: tuple[GenerationSummary, ...]
    # best/metrics.json of a finished, finalized run (storage source only).
    evaluation: dict[str, Any] | None = None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show the population of a PBT search (coordinator or stored run)",
        description="Show every member's generation, hyperparameters, smoothed validation "
        "NLL and parent, and the best member so far.",
    )
    parser.add_argument(
        "target",
        metavar="ADDRESS-or-RUN",
        help="coordinator HOST:PORT, or a stored run such as ./runs/NAME or s3://bucket/prefix/NAME",
    )
    parser.add_argument("--watch", action="store_true", help="redraw on every change until the end")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--top", type=int, default=0, help="show only the N best members (0: all)")
    parser.add_argument(
        "--generations", type=int, default=10, help="recent generations to summarise (default 10)"
    )
    parser.add_argument(
        "--interval", type=float, default=5.0, help="seconds between storage polls with --watch"
    )
    parser.add_argument(
        "--wait", type=float, default=10.0, help="seconds to wait for an unreachable coordinator"
    )
    add_client_flags(parser)  # token (observer is enough) and TLS for a coordinator
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name in ("top", "generations"):
        if getattr(args, name) < 0:
            raise StatusError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if not args.interval > 0 or not args.wait >= 0:
        raise StatusError("--interval must be > 0 and --wait >= 0")
    reports = _reports(args)
    first = True
    for report in reports:
        _emit(report, args, sys.stdout, first)
        first = False
    return 0


def is_coordinator_address(target: str) -> bool:
    """True for HOST:PORT, [IPv6]:PORT and dns:/ipv4:/ipv6: gRPC targets."""
    return bool(_ADDRESS.fullmatch(target)) or target.startswith(_GRPC_SCHEMES)


def _reports(args: argparse.Namespace) -> Iterator[StatusReport]:
    if is_coordinator_address(args.target):
        # (A port outside 1-65535 is refused by the client, before any dial.)
        security = client_security(args, "read")
        return _from_coordinator(args.target, args.watch, args.wait, security)
    return _from_storage(args.target, args.watch, args.interval, args.generations)


# ---------------------------------------------------------------- coordinator


def _from_coordinator(
    target: str, watch: bool, wait_s: float, security: Any = None
) -> Iterator[StatusReport]:
    from autolfads.coordinator.wire.client import CoordinatorClient

    with CoordinatorClient(
        target, timeout_s=max(wait_s, 1.0), unavailable_wait_s=wait_s, security=security
    ) as client:
        views = client.watch() if watch else iter([client.status()])
        for view in views:
            yield StatusReport(target, view, _history_summaries(view.best_history))


def _history_summaries(best_history: tuple[float, ...]) -> tuple[GenerationSummary, ...]:
    return tuple(GenerationSummary(g, float(m)) for g, m in enumerate(best_history))


# -------------------------------------------------------------------- storage


def split_run_url(target: str) -> tuple[str, str]:
    """'s3://bucket/prefix/NAME?endpoint=...' -> ('s3://bucket/prefix?endpoint=...', 'NAME')."""
    base, sep, query = target.partition("?")
    base = base.rstrip("/")
    parent, _, run = base.rpartition("/")
    if not run or not parent or parent.endswith(":/"):
        if "://" in target:
            raise StatusError(
                f"{target!r} names no run: give the run folder, e.g. s3://bucket/prefix/RUN"
            )
        parent = parent or ("/" if base.startswith("/") else ".")
    return parent + (sep + query if sep else ""), run


def _from_storage(
    target: str, watch: bool, interval_s: float, n_generations: int
) -> Iterator[StatusReport]:
    from autolfads.storage import RunLayout, open_store, validate_identifier

    store_url, run = split_run_url(target)
    validate_identifier("run name", run)
    store = open_store(store_url, create_bucket=False)
    layout = RunLayout(run)
    source = f"{store.url.rstrip('/')}/{run}"
    revision = -1
    while True:
        view = _read_state(store, layout, source)
        if view.revision != revision:
            revision = view.revision
            generations = _read_generations(store, layout, n_generations)
            evaluation = _read_evaluation(store, layout) if view.terminal else None
            yield StatusReport(source, view, generations, evaluation)
        if not watch or view.terminal:
            return
        time.sleep(interval_s)


def _read_state(store: Any, layout: Any, source: str) -> Any:
    from autolfads.coordinator.search.recovery import read_state
    from autolfads.coordinator.search.views import status_view

    state = read_state(store, layout.run)
    if state is None:
        raise StatusError(
            f"no coordinator state at {source}/coordinator/: is {source} a run "
            "folder (e.g. ./runs/NAME) whose coordinator has started?"
        )
    cfg = _read_config(store, layout)
    # Without the config only max_generations is unknown (0, shown as '?').
    return status_view(state, cfg.pbt.max_generations if cfg is not None else 0)


def _read_evaluation(store: Any, layout: Any) -> dict[str, Any] | None:
    """best/metrics.json once `finalize` has written it."""
    from autolfads.storage import ObjectNotFound

    try:
        return store.get_json(layout.best("metrics.json"))
    except ObjectNotFound:
        return None


def _read_config(store: Any, layout: Any) -> Any:
    from autolfads.config import loads_config
    from autolfads.storage import ObjectNotFound

    try:
        text = store.get_bytes(layout.config()).decode("utf-8")
    except (ObjectNotFound, UnicodeDecodeError):
        return None
    return loads_config(text, source=layout.config())


def _read_generations(store: Any, layout: Any, count: int) -> tuple[GenerationSummary, ...]:
    """Summaries of the newest `count` generation records, oldest first."""
    if count == 0:
        return ()
    keys = sorted(
        (layout.parse_generation_key(info.key), info.key)
        for info in store.list(layout.generations_prefix())
        if info.key.endswith(".json")
    )
    return tuple(_summary(g, store.get_bytes(key), key) for g, key in keys[-count:])


def _summary(generation: int, raw: bytes, key: str) -> GenerationSummary:
    try:
        doc = json.loads(raw)
        ranking = doc["ranking"]
        best = doc.get("best_member") or (ranking[0] if ranking else "")
        metric = doc.get("best_metric", doc.get("members", {}).get(best, {}).get("metric"))
        return GenerationSummary(
            generation=generation,
            best_metric=math.nan if metric is None else float(metric),
            best_member=best,
            copies=len(doc.get("copies", {})),
            complete=bool(doc.get("complete", True)),
        )
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
        raise StatusError(f"generation record {key} is unreadable: {err}") from None


# ------------------------------------------------------------------ rendering


def _emit(report: StatusReport, args: argparse.Namespace, out: TextIO, first: bool) -> None:
    if args.json:
        out.write(json.dumps(report_to_json(report, args.top), allow_nan=False) + "\n")
    else:
        if args.watch and out.isatty():
            out.write(_CLEAR)
        elif not first:
            out.write("\n")
        out.write(render_text(report, args.top))
    out.flush()


def _ranked(members: tuple[Any, ...]) -> list[Any]:
    """Best first, in the coordinator's one ranking order."""
    from autolfads.coordinator.search.policy import ranking_key

    return sorted(members, key=lambda m: ranking_key(m.member, m.metric))


def _num(value: float | None, fmt: str = ".6g") -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, fmt)


def _metric(member: Any) -> str:
    """The latest metric; 'diverged' if a checkpoint came with a non-finite one."""
    if math.isfinite(member.metric) or not member.checkpoint_key:
        return _num(member.metric)
    return "diverged"


def _hparam_names(members: tuple[Any, ...]) -> list[str]:
    present = {name for m in members for name in m.hparams}
    known = [n for n in TUNABLE_HPARAMS if n in present]
    return known + sorted(present - set(known))


def render_text(report: StatusReport, top: int = 0) -> str:
    v = report.view
    max_gen = str(v.max_generations) if v.max_generations else "?"
    lines = [
        f"run {v.run} ({report.source}): {v.state}, {v.mode} mode, "
        f"generation {v.generation}/{max_gen}, population {v.population}, revision {v.revision}"
    ]
    if v.message:
        lines.append(f"  {v.message}")
    if v.best is not None:
        b = v.best
        lines.append(
            f"best: {b.member} generation {b.generation}, smoothed valid NLL {_num(b.metric)}, "
            f"checkpoint {b.checkpoint_key}"
        )
        lines.append("  " + " ".join(f"{k}={_num(x, '.4g')}" for k, x in sorted(b.hparams.items())))
    else:
        lines.append("best: none yet (no generation finished)")
    names = _hparam_names(v.members)
    header = ["rank", "member", "gen", "phase", "valid_nll_smth", "parent", *names]
    rows = []
    ranked = _ranked(v.members)
    for i, m in enumerate(ranked[:top] if top else ranked):
        rank = str(i + 1) if math.isfinite(m.metric) else "-"
        values = [_num(m.hparams.get(n), ".4g") for n in names]
        rows.append([rank, m.member, str(m.generation), m.phase, _metric(m), m.parent, *values])
    lines.append("")
    lines.extend(_table(header, rows, left={1, 3, 5}))
    if top and len(ranked) > top:
        lines.append(f"... {len(ranked) - top} more member(s); drop --top to see all")
    if report.evaluation is not None:
        from autolfads.cli.metrics_table import metrics_table
        from autolfads.trainer.evaluation.metrics import summary_names

        doc = report.evaluation
        lines.append("")
        lines.append(f"evaluation of {doc.get('member')} (finalize, validation split):")
        lines.extend(metrics_table(doc, summary_names(doc)))
    if report.generations:
        lines.append("")
        gen_rows = [
            [
                str(s.generation),
                s.best_member or "-",
                _num(s.best_metric),
                "-" if s.copies is None else str(s.copies),
                "yes" if s.complete else "no",
            ]
            for s in report.generations
        ]
        gen_header = ["generation", "best", "best_nll_smth", "copies", "complete"]
        lines.extend(_table(gen_header, gen_rows, left={1}))
    return "\n".join(lines) + "\n"


def _table(header: list[str], rows: list[list[str]], left: set[int]) -> list[str]:
    """Aligned columns: names in `left` are left-aligned, numbers right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def cell(i: int, text: str) -> str:
        return text.ljust(widths[i]) if i in left else text.rjust(widths[i])

    return ["  ".join(cell(i, c) for i, c in enumerate(r)).rstrip() for r in [header, *rows]]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def report_to_json(report: StatusReport, top: int = 0) -> dict[str, Any]:
    """The report as JSON-safe data (non-finite metrics become null)."""
    v = report.view
    ranked = _ranked(v.members)
    best = None
    if v.best is not None:
        best = {**dataclasses.asdict(v.best), "metric": _finite(v.best.metric)}
    return {
        "source": report.source,
        "run": v.run,
        "state": v.state,
        "mode": v.mode,
        "generation": v.generation,
        "max_generations": v.max_generations or None,
        "population": v.population,
        "revision": v.revision,
        "message": v.message,
        "best": best,
        "best_history": [_finite(x) for x in v.best_history],
        "members": [
            {
                "member": m.member,
                "generation": m.generation,
                "phase": m.phase,
                "metric": _finite(m.metric),
                "parent": m.parent,
                "hparams": dict(m.hparams),
                "worker_id": m.worker_id,
                "checkpoint_key": m.checkpoint_key,
                "attempts": m.attempts,
            }
            for m in (ranked[:top] if top else ranked)
        ],
        "generations": [
            {**dataclasses.asdict(s), "best_metric": _finite(s.best_metric)}
            for s in report.generations
        ],
        "evaluation": report.evaluation,
    }
