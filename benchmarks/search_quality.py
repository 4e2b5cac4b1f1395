"""Does the search pay off? PBT's best model vs. single models, on validation co-bps.

    python benchmarks/search_quality.py [CONFIG] [--workers 2] [--search-seeds 3]
        [--baseline-seeds 3] [--defaults-baseline] [--set pbt.key=value] [--out DIR]

Runs `autolfads run CONFIG` once per search seed (`pbt.seed` 0, 1, ...; all
checkpoints kept), then scores on the validation split:

- each search's best model (best/metrics.json: co-bps and its place between
  the data's smoothing floor and true-rate ceiling);
- the median member of generation 0 (each member's burn-in checkpoint);
- single models without search, trained for as many epochs as a lineage of
  the search (its burn-in plus every later generation), with
  `--baseline-seeds` seeds: the config's `training:` values, and with
  `--defaults-baseline` also autolfads' defaults (the lfads-torch values) for
  the searched hyperparameters;
- the floor and the ceiling.

Writes quality.json and search_quality.png (best validation co-bps against
member-epochs spent, for each search and each single model, floor and ceiling
as lines) into the output folder, and prints a markdown table.
`--set pbt.search_space.kl_ic_scale.clamp=false` etc. override config fields.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SHOWN = ("co_bps", "fp_bps", "vel_r2", "psth_r2", "rate_r2")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> None:
    """`--set section.key=value` items into a config's YAML document (values as YAML)."""
    for item in overrides:
        key, _, text = item.partition("=")
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(text)


def write_config(config: Path, out: Path, seed: int, overrides: list[str]) -> Path:
    """The config with `pbt.seed`, --set overrides and every checkpoint kept."""
    raw = yaml.safe_load(config.read_text())
    raw["data"]["path"] = str((config.parent / raw["data"]["path"]).resolve())
    apply_overrides(raw, overrides)
    pbt = raw.setdefault("pbt", {})
    pbt["seed"] = seed
    pbt["keep_generations"] = 1000  # generation 0 is scored afterwards
    path = out / f"config-seed{seed}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_search(config: Path, storage: Path, workers: int) -> float:
    start = time.monotonic()
    cmd = [sys.executable, "-m", "autolfads", "run", str(config), "--storage", str(storage)]
    cmd += ["--workers", str(workers), "--threads", "1", "--progress", "plain", "--force"]
    cmd += ["--no-report"]
    subprocess.run(cmd, check=True)
    return time.monotonic() - start


def train_single(config: Path, hparams: dict[str, float], seed: int, epochs: int) -> dict:
    """One model without search (runs in a worker process): validation metrics
    after `epochs` epochs, the one-pass validation co-bps of every epoch, and
    the training seconds."""
    import torch

    from autolfads.config import load_config
    from autolfads.trainer.data.config_data import load_config_data
    from autolfads.trainer.model.session import TrainingSession

    torch.set_num_threads(1)
    cfg = load_config(config)
    _, data = load_config_data(cfg)
    start = time.monotonic()
    session = TrainingSession.fresh(cfg, data, hparams, seed=seed)
    curve = [session.train_epoch()["valid_co_bps"] for _ in range(epochs)]
    seconds = time.monotonic() - start
    return {**score(session, data), "curve": curve, "seconds": round(seconds, 1)}


def score(session: Any, data: Any) -> dict[str, float]:
    """NLB metrics on the validation split from the config's posterior samples."""
    from autolfads.trainer.evaluation.metrics import evaluate
    from autolfads.trainer.evaluation.posterior import posterior_sample

    cfg = session.cfg
    outputs = posterior_sample(
        session, data, num_samples=cfg.training.posterior_samples, seed=cfg.training.seed
    )
    return evaluate(data, outputs)


def search_curve(store: Any, layout: Any, cfg: Any, generations: int) -> list[tuple[int, float]]:
    """(member-epochs spent, one-pass validation co-bps of the member the
    fitness ranks first) at the end of every generation."""
    points = []
    for g in range(generations):
        docs = [
            store.get_json(layout.member_metrics(f"m{p:03d}", g)) for p in range(cfg.pbt.population)
        ]
        best = min(docs, key=lambda d: d["fitness"] if d["fitness"] is not None else float("inf"))
        lineage_epochs = cfg.pbt.burn_in_epochs + g * cfg.pbt.generation_epochs
        points.append((cfg.pbt.population * lineage_epochs, best["epochs"][-1]["valid_co_bps"]))
    return points


def search_result(config: Path, storage: Path, seconds: float, gen0_scores: bool) -> dict:
    """Best model, generation-0 median and the curve of one finished search."""
    from autolfads.config import load_config
    from autolfads.coordinator.search.recovery import read_state
    from autolfads.storage import RunLayout, open_store
    from autolfads.trainer.data.config_data import load_config_data
    from autolfads.trainer.model.session import TrainingSession

    cfg = load_config(config)
    _, data = load_config_data(cfg)
    store, layout = open_store(str(storage)), RunLayout(cfg.name)
    best = store.get_json(layout.best("metrics.json"))
    gen0 = []
    for p in range(cfg.pbt.population if gen0_scores else 0):
        key = layout.checkpoint(f"m{p:03d}", 0)
        if store.exists(key):  # a search run without this script may have pruned it
            session = TrainingSession.from_checkpoint(cfg, data, store.get_bytes(key))
            gen0.append(score(session, data)["co_bps"])
    state = read_state(store, cfg.name, history=False)
    assert state is not None, f"{cfg.name}: no coordinator state in {storage}"
    return {
        "seed": cfg.pbt.seed,
        "search_seconds": round(seconds, 1),
        "generations": state.generation,
        "best_member": best["member"],
        "best_epochs": cfg.pbt.burn_in_epochs + best["generation"] * cfg.pbt.generation_epochs,
        "best": {k: best.get(k) for k in SHOWN},
        "best_fraction_of_range": best.get("fraction_of_range", {}).get("co_bps"),
        "floor": best.get("floor", {}),
        "ceiling": best.get("ceiling") or {},
        "best_hparams": store.get_json(layout.best("search.json"))["best"]["hparams"],
        "gen0_median_co_bps": statistics.median(gen0) if gen0 else float("nan"),
        "curve": search_curve(store, layout, cfg, state.generation + 1),
    }


def main() -> None:
    args = parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="autolfads-quality-"))
    out.mkdir(parents=True, exist_ok=True)
    configs = [write_config(args.config, out, seed, args.set) for seed in range(args.search_seeds)]
    seconds = [
        float("nan") if args.evaluate_only else run_search(c, out / f"runs-seed{i}", args.workers)
        for i, c in enumerate(configs)
    ]
    # As many epochs as a lineage that ran every generation (the search's best
    # is normally from its last one; each search's own count is in its row).
    from autolfads.config import load_config

    pbt = load_config(configs[0]).pbt
    epochs = pbt.burn_in_epochs + (pbt.max_generations - 1) * pbt.generation_epochs
    # Saved at once and reused by --evaluate-only: a search still finalizing
    # must not cost the single models' training.
    cache = out / "singles.json"
    if args.evaluate_only and cache.exists():
        singles = json.loads(cache.read_text())
    else:
        singles = train_singles(args, configs[0], epochs) if args.baseline_seeds else {}
        cache.write_text(json.dumps(singles))
    searches = [
        search_result(c, out / f"runs-seed{i}", seconds[i], args.gen0)
        for i, c in enumerate(configs)
    ]
    result = summarise(args, searches, singles)
    (out / "quality.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "search_quality.png")
    print_table(result)
    print(f"details: {out / 'quality.json'}; figure: {out / 'search_quality.png'}")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "config", nargs="?", type=Path, default=REPO / "examples/chaotic_rnn_search.yaml"
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    ap.add_argument("--search-seeds", type=int, default=1, help="searches with pbt.seed 0, 1, ...")
    ap.add_argument(
        "--baseline-seeds", type=int, default=3, help="single models per baseline (seed 0, 1, ...)"
    )
    ap.add_argument(
        "--defaults-baseline",
        action="store_true",
        help="also train single models at autolfads' default hyperparameters",
    )
    ap.add_argument("--set", action="append", default=[], help="section.key=value override")
    ap.add_argument(
        "--no-gen0",
        dest="gen0",
        action="store_false",
        help="skip scoring generation 0's members (population x posterior sampling)",
    )
    ap.add_argument(
        "--evaluate-only", action="store_true", help="score the searches already in --out"
    )
    return ap.parse_args()


def train_singles(args: argparse.Namespace, config: Path, epochs: int) -> dict[str, list[dict]]:
    """Each baseline's single models, trained in parallel processes."""
    from autolfads.config import TrainingConfig, load_config

    cfg = load_config(config)
    baselines = {"config_hparams": cfg.training.hparams()}
    if args.defaults_baseline:
        baselines["autolfads_default_hparams"] = {
            **cfg.training.hparams(),
            **TrainingConfig().hparams(),
        }
    seeds = [cfg.training.seed + i for i in range(args.baseline_seeds)]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {
            (name, s): pool.submit(train_single, config, hparams, s, epochs)
            for name, hparams in baselines.items()
            for s in seeds
        }
        runs = {job: future.result() for job, future in futures.items()}
    return {
        name: [
            {"seed": s, "epochs": epochs, "hparams": baselines[name], **runs[name, s]}
            for s in seeds
        ]
        for name in baselines
    }


def summarise(args: argparse.Namespace, searches: list[dict], singles: dict) -> dict:
    floor, ceiling = searches[0]["floor"], searches[0]["ceiling"]
    search_mean = statistics.mean(s["best"]["co_bps"] for s in searches)
    single_means = {
        name: {k: statistics.mean(r[k] for r in runs) for k in SHOWN}
        for name, runs in singles.items()
    }
    config_single = single_means.get("config_hparams", {}).get("co_bps", float("nan"))
    span = ceiling.get("co_bps", float("nan")) - floor.get("co_bps", float("nan"))
    return {
        "config": str(args.config),
        "overrides": args.set,
        "workers": args.workers,
        "floor": floor,
        "ceiling": ceiling,
        "searches": searches,
        "search_best_co_bps_mean": search_mean,
        "search_fraction_of_range_mean": (search_mean - floor.get("co_bps", 0.0)) / span,
        "singles": singles,
        "single_means": single_means,
        "search_minus_config_single": search_mean - config_single,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), constrained_layout=True)
    # One colour per search seed (blues), so each line's legend entry is its own.
    blues = plt.get_cmap("Blues")
    count = len(result["searches"])
    for i, s in enumerate(result["searches"]):
        color = blues(0.9 - 0.45 * i / max(1, count - 1))
        x, y = zip(*s["curve"], strict=True)
        ax.plot(x, y, "o-", color=color, ms=3, label=f"PBT search, pbt.seed {s['seed']}")
        ax.plot([x[-1]], [s["best"]["co_bps"]], "*", color=color, ms=11)
    for run in result["singles"].get("config_hparams", []):
        ax.plot(
            range(1, len(run["curve"]) + 1),
            run["curve"],
            color="C1",
            lw=1,
            label="single model, config values" if run["seed"] == 0 else None,
        )
        ax.plot([len(run["curve"])], [run["co_bps"]], "*", color="C1", ms=11)
    ax.axhline(result["floor"]["co_bps"], color="0.4", ls="--", label="smoothing (floor)")
    ax.axhline(result["ceiling"]["co_bps"], color="k", ls=":", label="true rates (ceiling)")
    ax.set_xscale("log")
    ax.set_ylim(result["floor"]["co_bps"] - 0.05, result["ceiling"]["co_bps"] + 0.01)
    ax.set_xlabel("member-epochs spent (a single model: its epochs)")
    ax.set_ylabel("validation co-bps")
    ax.set_title("lines: one-pass validation co-bps; stars: the final posterior-averaged score")
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(result: dict) -> None:
    print("| model | " + " | ".join(SHOWN) + " |\n|---|" + "---|" * len(SHOWN))
    for s in result["searches"]:
        name = (
            f"PBT search pbt.seed {s['seed']}, best ({s['best_member']}, {s['best_epochs']} epochs)"
        )
        print(f"| {name} | " + " | ".join(f"{s['best'][k]:.4f}" for k in SHOWN) + " |")
    for name, means in result["single_means"].items():
        runs = result["singles"][name]
        label = f"{name.replace('_', ' ')}, {runs[0]['epochs']} epochs, mean of {len(runs)} seeds"
        print(f"| {label} | " + " | ".join(f"{means[k]:.4f}" for k in SHOWN) + " |")
    for ref in ("floor", "ceiling"):
        values = result[ref]
        print(
            f"| {ref} | " + " | ".join(f"{values.get(k, float('nan')):.4f}" for k in SHOWN) + " |"
        )
    for name, runs in result["singles"].items():
        print(f"{name} co-bps per seed: " + ", ".join(f"{r['co_bps']:.4f}" for r in runs))
    gen0 = ", ".join(f"{s['gen0_median_co_bps']:.4f}" for s in result["searches"])
    print(f"generation 0 median co-bps per search: {gen0}")
    print(
        f"search best, mean over searches: {result['search_best_co_bps_mean']:.4f} "
        f"({result['search_fraction_of_range_mean']:.1%} of floor-to-ceiling); "
        f"minus the config's single models: {result['search_minus_config_single']:+.4f}"
    )
    times = ", ".join(f"{s['search_seconds']:.0f}" for s in result["searches"])
    print(f"search seconds: {times}")


if __name__ == "__main__":
    main()
