"""Does the search pay off? PBT's best model vs. the baselines, on validation co-bps.

    python benchmarks/search_quality.py [CONFIG] [--workers 2] [--out DIR]

Runs `autolfads run CONFIG` (default: examples/chaotic_rnn_search.yaml, all
checkpoints kept), then scores on the validation split:

- the search's best model (from best/metrics.json);
- the median member of generation 0 (each member's burn-in checkpoint);
- one model with the config's default hyperparameters (`training:` values)
  trained for as many epochs as the best member was;
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
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "config", nargs="?", type=Path, default=REPO / "examples/chaotic_rnn_search.yaml"
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="autolfads-quality-"))
    out.mkdir(parents=True, exist_ok=True)

    import torch

    from autolfads.config import load_config
    from autolfads.storage import RunLayout, open_store
    from autolfads.trainer.datafile import load_config_data
    from autolfads.trainer.metrics import evaluate
    from autolfads.trainer.posterior import posterior_sample
    from autolfads.trainer.session import TrainingSession

    torch.set_num_threads(1)
    config_path, search_s = run_search(args.config, out, args.workers)
    cfg = load_config(config_path)
    _, data = load_config_data(cfg)
    store = open_store(str(out / "runs"))
    layout = RunLayout(cfg.name)
    best = json.loads(store.get_bytes(layout.best("metrics.json")))
    samples = cfg.training.posterior_samples

    def co_bps_of(session: TrainingSession) -> float:
        outputs = posterior_sample(session, data, num_samples=samples, seed=cfg.training.seed)
        return evaluate(data, outputs)["co_bps"]

    gen0 = []
    for p in range(cfg.pbt.population):
        blob = store.get_bytes(layout.checkpoint(f"m{p:03d}", 0))
        gen0.append(co_bps_of(TrainingSession.from_checkpoint(cfg, data, blob)))

    best_epochs = cfg.pbt.burn_in_epochs + best["generation"] * cfg.pbt.generation_epochs
    start = time.monotonic()
    default = TrainingSession.fresh(cfg, data, cfg.training.hparams(), seed=cfg.training.seed)
    for _ in range(best_epochs):
        default.train_epoch()
    default_s = time.monotonic() - start
    default_co_bps = co_bps_of(default)

    truth = {f"{s}_output_params": getattr(data, s).truth for s in ("train", "valid")}
    ceiling = evaluate(data, truth)["co_bps"]

    result = {
        "config": str(args.config),
        "workers": args.workers,
        "search_seconds": round(search_s, 1),
        "best_member": best["member"],
        "best_epochs": best_epochs,
        "search_best_co_bps": best["co_bps"],
        "gen0_median_co_bps": statistics.median(gen0),
        "gen0_co_bps": gen0,
        "default_hparams_co_bps": default_co_bps,
        "default_hparams_seconds": round(default_s, 1),
        "true_rates_co_bps": ceiling,
        "fraction_of_ceiling": best["co_bps"] / ceiling,
        "search_best_metrics": {
            k: best.get(k) for k in ("co_bps", "fp_bps", "vel_r2", "psth_r2", "rate_r2")
        },
    }
    (out / "quality.json").write_text(json.dumps(result, indent=1))
    print("| model | validation co-bps |\n|---|---|")
    print(
        f"| PBT search, best member ({best['member']}, {best_epochs} epochs) | {best['co_bps']:.4f} |"
    )
    print(
        f"| generation 0, median member ({cfg.pbt.burn_in_epochs} epochs) | {statistics.median(gen0):.4f} |"
    )
    print(f"| default hyperparameters, {best_epochs} epochs | {default_co_bps:.4f} |")
    print(f"| true rates (ceiling) | {ceiling:.4f} |")
    print(
        f"\nbest reaches {result['fraction_of_ceiling']:.1%} of the ceiling; search took {search_s:.0f} s"
    )
    print(f"details: {out / 'quality.json'}")


if __name__ == "__main__":
    main()
