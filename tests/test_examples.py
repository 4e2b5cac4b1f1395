"""The example configs the README runs: each one loads, and no two of them
share a generated data file while asking for different data.

A data file named by `data.path` is generated only when missing, so two
examples with the same path but different `data.synth` settings would
silently train one of them on the other's data (the main job's data changed
size once already; its file name changed with it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autolfads.config import load_config

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def test_there_are_examples() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"chaotic_rnn_search.yaml", "train_chaotic_rnn.yaml", "tiny_search.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.data.synth is not None, "examples generate their own data"


def test_examples_sharing_a_data_file_ask_for_the_same_data() -> None:
    by_path: dict[str, tuple[str, object]] = {}
    for path in EXAMPLES:
        cfg = load_config(path)
        spec = cfg.data.synth.model_dump() if cfg.data.synth else None
        seen = by_path.setdefault(cfg.data.path, (path.name, spec))
        assert seen[1] == spec, (
            f"{path.name} and {seen[0]} both use {cfg.data.path} with different data.synth"
        )


def test_main_job_is_a_real_search() -> None:
    """The README's main job: a population of at least 8 that runs several
    generations (exploit and explore happen), on data with held-out neurons
    so that co-bps and the held-out fitness exist."""
    cfg = load_config(EXAMPLES[0].parent / "chaotic_rnn_search.yaml")
    assert cfg.pbt.population >= 8
    assert cfg.pbt.max_generations >= 3
    assert cfg.pbt.fitness == "valid_heldout_recon_smth"
    assert cfg.data.synth is not None and cfg.data.synth.kind == "chaotic-rnn"
