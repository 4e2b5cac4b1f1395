"""Does the search pay off? PBT's best model vs. the baselines, on validation co-bps.

    python benchmarks/search_quality.py [CONFIG] [--workers 2] [--out DIR]

Runs `autolfads run CONFIG` (default: examples/chaotic_rnn_search.yaml, all
checkpoints kept), then scores on the validation split:

- the search's best model (from best/metrics.json);
- the median member of generation 0 (each member's burn-in checkpoint);
- single models without search, trained for as many epochs as the best
  member was, with `--baseline-seeds` seeds each: the config's hand-set
  `training:` values, and autolfads' defaults (the lfads-torch values) for the
  searched hyperparameters;
- the ground-truth rates (the ceiling).

Prints a markdown table and writes quality.json into the output folder.
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

import yaml

REPO = Path(__file__).resolve().parents[1]
SHOWN = ("co_bps", "fp_bps", "vel_r2", "psth_r2", "rate_r2")


def run_search(config: Path, out: Path, workers: int) -> tuple[Path, float]:
    raw = yaml.safe_load(config.read_text())
    raw["data"]["path"] = str((config.parent / raw["data"]["path"]).resolve())
    # Keep every checkpoint so generation 0 can be scored afterwards.
    raw.setdefault("pbt", {})["keep_generations"] = 1000
    patched = out / "config.yaml"
    patched.write_text(yaml.safe_dump(raw, sort_keys=False))
    start = time.monotonic()
    cmd = [sys.executable, "-m", "autolfads", "run", str(patched), "--storage", str(out / "runs")]
    cmd += ["--workers", str(workers), "--threads", "1", "--progress", "plain", "--force"]
    subprocess.run(cmd, check=True)
    return patched, time.monotonic() - start


def train_baseline(
    config: Path, hparams: dict[str, float], seed: int, epochs: int
) -> dict[str, float]:
    """One model without search (runs in a worker process): validation metrics
    after `epochs` epochs, plus the training seconds."""
    import torch

    from autolfads.config import load_config
    from autolfads.trainer.data.config_data import load_config_data
    from autolfads.trainer.model.session import TrainingSession

    torch.set_num_threads(1)
    cfg = load_config(config)
    _, data = load_config_data(cfg)
    start = time.monotonic()
    session = TrainingSession.fresh(cfg, data, hparams, seed=seed)
    for _ in range(epochs):
        session.train_epoch()
    seconds = time.monotonic() - start
    return {**score(session, data), "seconds": round(seconds, 1)}


def score(session, data) -> dict[str, float]:
    """NLB metrics on the validation split from the config's posterior samples."""
    from autolfads.trainer.evaluation.metrics import evaluate
    from autolfads.trainer.evaluation.posterior import posterior_sample

    cfg = session.cfg
    outputs = posterior_sample(
        session, data, num_samples=cfg.training.posterior_samples, seed=cfg.training.seed
    )
    return evaluate(data, outputs)


def finalize(config: Path, out: Path) -> None:
    """Finalize a search that ran to its end but was not finalized."""
    from autolfads.config import load_config

    name = load_config(config).name
    cmd = [sys.executable, "-m", "autolfads", "finalize", "--storage", str(out / "runs")]
    subprocess.run([*cmd, "--run", name], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "config", nargs="?", type=Path, default=REPO / "examples/chaotic_rnn_search.yaml"
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    ap.add_argument(
        "--baseline-seeds",
        type=int,
        default=3,
        help="train each no-search baseline with this many seeds (training.seed + 0, 1, ...)",
    )
    ap.add_argument(
        "--evaluate-only",
        action="store_true",
        help="score the search already in --out (finalizing it if needed) instead of running one",
    )
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="autolfads-quality-"))
    out.mkdir(parents=True, exist_ok=True)

    import torch

    from autolfads.config import TrainingConfig, load_config
    from autolfads.storage import RunLayout, open_store
    from autolfads.trainer.data.config_data import load_config_data
    from autolfads.trainer.evaluation.metrics import evaluate
    from autolfads.trainer.model.session import TrainingSession

    torch.set_num_threads(1)
    if args.evaluate_only:
        config_path, search_s = out / "config.yaml", float("nan")
        if not (out / "runs" / load_config(config_path).name / "best" / "metrics.json").exists():
            finalize(config_path, out)
    else:
        config_path, search_s = run_search(args.config, out, args.workers)
    cfg = load_config(config_path)
    _, data = load_config_data(cfg)
    store = open_store(str(out / "runs"))
    layout = RunLayout(cfg.name)
    best = json.loads(store.get_bytes(layout.best("metrics.json")))

    gen0 = []
    for p in range(cfg.pbt.population):
        blob = store.get_bytes(layout.checkpoint(f"m{p:03d}", 0))
        gen0.append(score(TrainingSession.from_checkpoint(cfg, data, blob), data)["co_bps"])

    best_epochs = cfg.pbt.burn_in_epochs + best["generation"] * cfg.pbt.generation_epochs
    # Two single models, no search, as many epochs as the best member had: the
    # config's hand-set `training:` values, and autolfads' own defaults (the
    # lfads-torch values) for the hyperparameters the search tunes.
    baselines = {
        "config_hparams": cfg.training.hparams(),
        "autolfads_default_hparams": {**cfg.training.hparams(), **TrainingConfig().hparams()},
    }
    seeds = [cfg.training.seed + i for i in range(args.baseline_seeds)]
    jobs = [(name, seed) for name in baselines for seed in seeds]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {
            job: pool.submit(train_baseline, config_path, baselines[job[0]], job[1], best_epochs)
            for job in jobs
        }
        runs = {job: future.result() for job, future in futures.items()}
    # Per baseline: every metric averaged over the seeds, plus each seed's co-bps.
    baseline_metrics = {
        name: {k: statistics.mean(runs[name, s][k] for s in seeds) for k in SHOWN}
        for name in baselines
    }

    truth = {f"{s}_output_params": getattr(data, s).truth for s in ("train", "valid")}
    ceiling = evaluate(data, truth)["co_bps"]

    result = {
        "config": str(args.config),
        "workers": args.workers,
        "fitness": cfg.pbt.fitness,
        "first_member": cfg.pbt.first_member,
        "search_seconds": round(search_s, 1),
        "best_member": best["member"],
        "best_epochs": best_epochs,
        "search_best_co_bps": best["co_bps"],
        "search_best_metrics": {k: best.get(k) for k in SHOWN},
        "search_best_hparams": store.get_json(layout.best("search.json"))["best"]["hparams"],
        "gen0_median_co_bps": statistics.median(gen0),
        "gen0_co_bps": gen0,
        "baselines": {
            name: {
                "hparams": baselines[name],
                "seeds": seeds,
                "mean": baseline_metrics[name],
                "co_bps_per_seed": [runs[name, s]["co_bps"] for s in seeds],
                "seconds_per_seed": [runs[name, s]["seconds"] for s in seeds],
            }
            for name in baselines
        },
        "true_rates_co_bps": ceiling,
        "fraction_of_ceiling": best["co_bps"] / ceiling,
    }
    (out / "quality.json").write_text(json.dumps(result, indent=1))
    print(f"fitness: {cfg.pbt.fitness}, first member: {cfg.pbt.first_member}\n")
    print("| model | " + " | ".join(SHOWN) + " |\n|---|" + "---|" * len(SHOWN))
    rows = {
        f"PBT search, best member ({best['member']}, {best_epochs} epochs)": best,
        **{
            f"{name.replace('_', ' ')}, {best_epochs} epochs, mean of seeds {seeds}": metrics
            for name, metrics in baseline_metrics.items()
        },
    }
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{values[k]:.4f}" for k in SHOWN) + " |")
    print(
        f"| generation 0, median member ({cfg.pbt.burn_in_epochs} epochs) "
        f"| {statistics.median(gen0):.4f} |" + " |" * (len(SHOWN) - 1)
    )
    print(f"| true rates (ceiling) | {ceiling:.4f} |" + " |" * (len(SHOWN) - 1))
    for name in baselines:
        per_seed = ", ".join(f"{runs[name, s]['co_bps']:.4f}" for s in seeds)
        print(f"\n{name} co_bps per seed: {per_seed}")
    print(
        f"\nbest reaches {result['fraction_of_ceiling']:.1%} of the ceiling; search took {search_s:.0f} s"
    )
    print(f"details: {out / 'quality.json'}")


if __name__ == "__main__":
    main()
