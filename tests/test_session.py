"""TrainingSession: learning, determinism, exact resume, hyperparameter changes."""

from __future__ import annotations

import io
import math
from dataclasses import replace

import pytest
import torch
from torch.nn import functional as F

from autolfads.config import parse_config
from autolfads.errors import ConfigError
from autolfads.trainer.data.synth import make_chaotic_rnn
from autolfads.trainer.leased import exploit_generator_seed
from autolfads.trainer.model.batches import SplitTensors, bits_per_spike_terms
from autolfads.trainer.model.lfads import DataDims
from autolfads.trainer.model.session import CheckpointError, TrainingSession, read_checkpoint

torch.set_num_threads(1)

TINY_MODEL = {
    "gen_dim": 16,
    "fac_dim": 4,
    "ic_enc_dim": 8,
    "ci_enc_dim": 4,
    "con_dim": 4,
    "co_dim": 1,
    "ic_dim": 8,
}


def _cfg(model=None, **training):
    train = {
        "batch_size": 40,
        "l2_increase_epochs": 2,
        "kl_increase_epochs": 2,
        "lr_init": 1e-2,
        "weight_decay": 1e-3,
        **training,
    }
    return parse_config(
        {
            "data": {"path": "unused.h5"},
            "model": model or TINY_MODEL,
            "training": train,
            "pbt": {"burn_in_epochs": 3},
        }
    )


@pytest.fixture(scope="module")
def tiny_data():
    return make_chaotic_rnn(
        seed=1, n_conditions=8, n_replications=10, n_neurons=12, n_heldout=3, n_bins=12, n_fp_bins=2
    )


def _params_equal(a: TrainingSession, b: TrainingSession) -> bool:
    pa, pb = a.model.state_dict(), b.model.state_dict()
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def _strip_time(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k != "seconds"}


def test_training_beats_the_null_model_on_synthetic_data():
    data = make_chaotic_rnn(
        seed=0,
        n_conditions=40,
        n_replications=10,
        n_neurons=30,
        n_heldout=6,
        n_bins=30,
        n_fp_bins=4,
        max_rate_hz=60.0,
    )
    model = {
        "gen_dim": 32,
        "fac_dim": 8,
        "ic_enc_dim": 16,
        "ci_enc_dim": 8,
        "con_dim": 8,
        "co_dim": 1,
        "ic_dim": 16,
    }
    cfg = _cfg(model, l2_increase_epochs=0, kl_increase_epochs=0, dropout_rate=0.05)
    session = TrainingSession.fresh(cfg, data, {}, seed=0)
    history = [session.train_epoch() for _ in range(10)]
    first, last = history[0], history[-1]
    # bits/spike > 0 means a lower NLL than per-neuron mean rates (the null model).
    assert first["valid_bps"] < 0.0 < 0.12 < last["valid_bps"]
    assert last["valid_co_bps"] > 0.1 and last["valid_fp_bps"] > 0.1
    assert last["valid_recon"] < 0.95 * first["valid_recon"]
    assert session.epoch == 10 and last["epoch"] == 10
    assert session.valid_recon_smth == last["valid_recon_smth"]


def test_smoothed_validation_nll_and_ramps(tiny_data):
    session = TrainingSession.fresh(_cfg(), tiny_data, {}, seed=0)
    assert math.isnan(session.valid_recon_smth)
    m1, m2, m3 = (session.train_epoch() for _ in range(3))
    assert m1["valid_recon_smth"] == m1["valid_recon"]
    assert m2["valid_recon_smth"] == pytest.approx(
        0.3 * m1["valid_recon_smth"] + 0.7 * m2["valid_recon"]
    )
    assert [m["kl_ramp"] for m in (m1, m2, m3)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert [m["l2_ramp"] for m in (m1, m2, m3)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert session.optimizer.param_groups[0]["weight_decay"] == pytest.approx(1e-3)
    expected = {
        "epoch",
        "train_loss",
        "train_recon",
        "valid_loss",
        "valid_recon",
        "valid_recon_smth",
        "kl_ic",
        "kl_co",
        "l2",
        "kl_ramp",
        "l2_ramp",
        "lr",
        "valid_bps",
        "valid_co_bps",
        "valid_fp_bps",
        "valid_heldout_recon",
        "valid_heldout_recon_smth",
        "seconds",
    }
    assert expected <= set(m3)
    assert all(math.isfinite(v) for v in m3.values())
    assert m1["valid_heldout_recon_smth"] == m1["valid_heldout_recon"]
    assert m3["valid_heldout_recon_smth"] == pytest.approx(
        0.3 * m2["valid_heldout_recon_smth"] + 0.7 * m3["valid_heldout_recon"]
    )
    assert session.smoothed("valid_heldout_recon_smth") == m3["valid_heldout_recon_smth"]
    assert session.smoothed("valid_recon_smth") == m3["valid_recon_smth"]


def test_heldout_nll_is_the_mean_over_heldout_neurons_in_observed_bins(tiny_data):
    dims = DataDims.from_data(tiny_data)
    split = SplitTensors.build(tiny_data.valid, torch.device("cpu"))
    assert split.recon is not None
    logrates = torch.randn(split.recon.shape, generator=torch.Generator().manual_seed(0)) - 2.0
    sums = bits_per_spike_terms(logrates, split.recon, dims, split.recon_stirling)
    # lfads-torch's loss: torch's full Poisson NLL (Stirling term for counts > 1).
    nll = F.poisson_nll_loss(logrates, split.recon, full=True, reduction="none").numpy()
    ne, te = tiny_data.encod_data_dim, tiny_data.encod_seq_len
    assert split.heldout_nll(sums, dims) == pytest.approx(nll[:, :te, ne:].mean(), rel=1e-6)
    # Neither held-in neurons nor forward bins count (they differ from it here).
    assert nll[:, te:, :].mean() != pytest.approx(nll[:, :te, ne:].mean(), rel=1e-3)


def test_heldout_fitness_needs_heldout_parts(tiny_data):
    # The same trials with only the held-in neurons and observed bins to reconstruct.
    def held_in_only(split):
        return replace(split, recon_data=split.encod_data.copy(), truth=None)

    data = replace(
        tiny_data, train=held_in_only(tiny_data.train), valid=held_in_only(tiny_data.valid)
    )
    session = TrainingSession.fresh(_cfg(), data, {}, seed=0)
    metrics = session.train_epoch()
    assert "valid_heldout_recon_smth" not in metrics and "valid_heldout_recon" not in metrics
    with pytest.raises(ConfigError, match="needs held-out neurons"):
        session.smoothed("valid_heldout_recon_smth")
    # A search ranking by it cannot start a session on this data (a trainer
    # handed a run staged elsewhere fails the segment before any epoch).
    heldout_cfg = _cfg().model_copy(
        update={"pbt": _cfg().pbt.model_copy(update={"fitness": "valid_heldout_recon_smth"})}
    )
    with pytest.raises(ConfigError, match="pbt.fitness valid_heldout_recon_smth needs held-out"):
        TrainingSession.fresh(heldout_cfg, data, {}, seed=0)


def test_same_seed_is_bitwise_identical_and_other_seed_differs(tiny_data):
    a = TrainingSession.fresh(_cfg(), tiny_data, {}, seed=3)
    b = TrainingSession.fresh(_cfg(), tiny_data, {}, seed=3)
    c = TrainingSession.fresh(_cfg(), tiny_data, {}, seed=4)
    ma = [_strip_time(a.train_epoch()) for _ in range(2)]
    mb = [_strip_time(b.train_epoch()) for _ in range(2)]
    c.train_epoch()
    assert ma == mb and _params_equal(a, b)
    assert not _params_equal(a, c)


def test_restored_session_continues_exactly_like_an_uninterrupted_one(tiny_data):
    cfg = _cfg(sv_rate=0.2)
    straight = TrainingSession.fresh(cfg, tiny_data, {}, seed=5)
    for _ in range(2):
        straight.train_epoch()
    blob = straight.checkpoint()
    restored = TrainingSession.from_checkpoint(cfg, tiny_data, blob)
    assert restored.epoch == 2 and restored.valid_recon_smth == straight.valid_recon_smth
    held = "valid_heldout_recon_smth"
    assert restored.smoothed(held) == straight.smoothed(held)
    assert restored.hparams == straight.hparams
    ahead = [_strip_time(straight.train_epoch()) for _ in range(2)]
    resumed = [_strip_time(restored.train_epoch()) for _ in range(2)]
    assert ahead == resumed
    assert "valid_recon_sv" in resumed[0]
    assert _params_equal(straight, restored)
    sa, sb = straight.optimizer.state_dict()["state"], restored.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)


def test_an_exploiting_copy_draws_its_own_randomness(tiny_data):
    # PBT's exploit copies the winner's checkpoint: with the winner's generator
    # the copy would draw the same batches, dropout masks and samples, and
    # follow the winner (here even with the same hyperparameters).
    cfg = _cfg(sv_rate=0.2)
    winner = TrainingSession.fresh(cfg, tiny_data, {}, seed=7)
    winner.train_epoch()
    blob = winner.checkpoint()
    seed = exploit_generator_seed(cfg.pbt.seed, "m001", 1)
    kept = TrainingSession.from_checkpoint(cfg, tiny_data, blob)
    copy = TrainingSession.from_checkpoint(cfg, tiny_data, blob, generator_seed=seed)
    again = TrainingSession.from_checkpoint(cfg, tiny_data, blob, generator_seed=seed)
    ahead = _strip_time(winner.train_epoch())
    assert _strip_time(kept.train_epoch()) == ahead and _params_equal(kept, winner)
    copied = _strip_time(copy.train_epoch())
    assert copied != ahead and not _params_equal(copy, winner)
    assert copied == _strip_time(again.train_epoch()) and _params_equal(copy, again)


def test_exploit_seeds_differ_by_member_generation_and_search_seed():
    seeds = {
        exploit_generator_seed(s, m, g) for s in (0, 1) for m in ("m000", "m001") for g in (1, 2)
    }
    assert len(seeds) == 8 and all(0 <= x < 2**63 for x in seeds)
    assert exploit_generator_seed(0, "m001", 1) == exploit_generator_seed(0, "m001", 1)


def test_a_checkpoint_from_another_kind_of_device_continues_deterministically(tiny_data):
    # A CUDA generator saves its seed and offset (16 bytes), a CPU one 5,056:
    # a GPU-trained checkpoint used to fail to load on CPU (finalize, apply, a
    # CPU trainer of a mixed pool) with a RuntimeError no caller handled.
    cfg = _cfg()
    session = TrainingSession.fresh(cfg, tiny_data, {}, seed=5)
    session.train_epoch()
    state = torch.load(io.BytesIO(session.checkpoint()), weights_only=True)
    state["generator_state"] = torch.tensor([5, 1234], dtype=torch.int64).view(torch.uint8)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    blob = buffer.getvalue()
    runs = []
    for _ in range(2):
        resumed = TrainingSession.from_checkpoint(cfg, tiny_data, blob)
        assert resumed.epoch == 1
        runs.append(_strip_time(resumed.train_epoch()))
    assert runs[0] == runs[1]


def _checkpoint_state(session: TrainingSession) -> dict:
    state = torch.load(io.BytesIO(session.checkpoint()), weights_only=True)
    del state["global_rng"]  # seeded from OS entropy in every process (see test_trainer_reuse)
    return state


def _assert_same_state(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            _assert_same_state(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)  # type: ignore[arg-type]
        for x, y in zip(a, b, strict=True):  # type: ignore[call-overload]
            _assert_same_state(x, y)
    else:
        assert a == b or (a != a and b != b), (a, b)  # nan == nan here


def test_a_reused_session_trains_exactly_like_a_new_one(tiny_data):
    """What a trainer does across leases: one session, moved to each start."""
    cfg = _cfg(sv_rate=0.2)
    donor = TrainingSession.fresh(cfg, tiny_data, {"dropout_rate": 0.1}, seed=5)
    donor.train_epoch()
    start = donor.checkpoint()
    reused = TrainingSession.fresh(cfg, tiny_data, {"cd_rate": 0.3}, seed=6)
    reused.train_epoch()
    plans = [
        (lambda s: s.start_from(read_checkpoint(start), {"lr_init": 3e-3}),
         lambda: TrainingSession.from_checkpoint(cfg, tiny_data, start, {"lr_init": 3e-3})),
        (lambda s: s.start_fresh({"kl_co_scale": 1e-5}, 7),
         lambda: TrainingSession.fresh(cfg, tiny_data, {"kl_co_scale": 1e-5}, seed=7)),
    ]  # fmt: skip
    for move, build in plans:
        move(reused)
        new = build()
        ours = [_strip_time(reused.train_epoch()) for _ in range(2)]
        theirs = [_strip_time(new.train_epoch()) for _ in range(2)]
        assert ours == theirs
        _assert_same_state(_checkpoint_state(reused), _checkpoint_state(new))


def test_new_lr_reaches_every_param_group_after_restore(tiny_data):
    session = TrainingSession.fresh(_cfg(), tiny_data, {"lr_init": 1e-2}, seed=0)
    session.train_epoch()
    blob = session.checkpoint()
    kept = TrainingSession.from_checkpoint(_cfg(), tiny_data, blob)
    assert all(g["lr"] == 1e-2 for g in kept.optimizer.param_groups)
    new = TrainingSession.from_checkpoint(_cfg(), tiny_data, blob, {"lr_init": 3e-4})
    assert new.hparams["lr_init"] == 3e-4
    assert all(g["lr"] == 3e-4 for g in new.optimizer.param_groups)
    assert new.train_epoch()["lr"] == 3e-4
    assert all(g["lr"] == 3e-4 for g in new.optimizer.param_groups)


def test_apply_hparams_changes_training_without_rebuilding(tiny_data):
    base = TrainingSession.fresh(_cfg(), tiny_data, {}, seed=0)
    ids = [id(p) for p in base.model.parameters()]
    model_id, opt_id = id(base.model), id(base.optimizer)
    blob = base.checkpoint()
    results = {}
    changes = {
        "dropout_rate": 0.5,
        "cd_rate": 0.6,
        "kl_ic_scale": 0.1,
        "kl_co_scale": 0.1,
        "l2_gen_scale": 10.0,
        "l2_con_scale": 10.0,
        "lr_init": 2e-3,
    }
    reference = TrainingSession.from_checkpoint(_cfg(), tiny_data, blob)
    results["none"] = _strip_time(reference.train_epoch())
    for name, value in changes.items():
        session = TrainingSession.from_checkpoint(_cfg(), tiny_data, blob)
        session.apply_hparams({name: value})
        assert session.hparams[name] == value
        results[name] = _strip_time(session.train_epoch())
        assert results[name]["train_loss"] != results["none"]["train_loss"], name
    base.apply_hparams(changes)
    assert [id(p) for p in base.model.parameters()] == ids
    assert (id(base.model), id(base.optimizer)) == (model_id, opt_id)
    assert all(g["lr"] == 2e-3 for g in base.optimizer.param_groups)


@pytest.mark.parametrize(
    ("hparams", "fragment"),
    [
        ({"lr": 1e-3}, "unknown hyperparameter 'lr'"),
        ({"lr_init": 0.0}, "lr_init"),
        ({"dropout_rate": 1.0}, "dropout_rate"),
        ({"cd_rate": -0.1}, "cd_rate"),
        ({"kl_ic_scale": float("nan")}, "not a finite number"),
        ({"l2_gen_scale": "x"}, "not a number"),
    ],
)
def test_bad_hparams_are_refused_with_one_line(tiny_data, hparams, fragment):
    session = TrainingSession.fresh(_cfg(), tiny_data, {}, seed=0)
    before = session.hparams
    with pytest.raises(ConfigError, match=fragment) as err:
        session.apply_hparams(hparams)
    assert "\n" not in str(err.value) and session.hparams == before
    with pytest.raises(ConfigError):
        TrainingSession.fresh(_cfg(), tiny_data, hparams, seed=0)


def test_checkpoint_for_other_model_or_data_is_refused(tiny_data):
    blob = TrainingSession.fresh(_cfg(), tiny_data, {}, seed=0).checkpoint()
    other_model = _cfg({**TINY_MODEL, "gen_dim": 17})
    with pytest.raises(CheckpointError, match="model.gen_dim = 16 but the config says 17"):
        TrainingSession.from_checkpoint(other_model, tiny_data, blob)
    other_data = make_chaotic_rnn(
        seed=1, n_conditions=8, n_replications=10, n_neurons=13, n_heldout=3, n_bins=12, n_fp_bins=2
    )
    with pytest.raises(CheckpointError, match="encod_data_dim = 9 but this data has 10"):
        TrainingSession.from_checkpoint(_cfg(), other_data, blob)
    with pytest.raises(CheckpointError, match="not a readable"):
        TrainingSession.from_checkpoint(_cfg(), tiny_data, b"garbage" + blob[:100])


@pytest.mark.parametrize("start, increase", [(0, 2), (3, 4), (0, 0)])
def test_every_epoch_after_burn_in_trains_at_full_ramp_weight(start, increase):
    from autolfads.trainer.model.objective import ramp

    def config(burn_in):
        return parse_config(
            {
                "data": {"path": "unused.h5"},
                "model": TINY_MODEL,
                "training": {"kl_start_epoch": start, "kl_increase_epochs": increase,
                             "l2_increase_epochs": 0},
                "pbt": {"burn_in_epochs": burn_in},
            }
        )  # fmt: skip

    shortest = max(start + increase, 1)
    first_after = config(shortest).pbt.burn_in_epochs  # 0-based index
    assert ramp(first_after, start, increase) == 1.0
    if shortest > 1:
        assert ramp(first_after - 1, start, increase) < 1.0
        with pytest.raises(ConfigError, match=f"raise it to at least {shortest} "):
            config(shortest - 1)


def test_a_training_seed_torch_cannot_take_is_refused_by_the_config(tiny_data):
    # torch seeds with 64 bits: 2**64 passed the config, then `autolfads
    # train` (and finalize's posterior sampling) ended in a ValueError traceback.
    with pytest.raises(ConfigError, match=r"training\.seed: .*\(got 18446744073709551616\)"):
        _cfg(seed=2**64)
    cfg = _cfg(seed=2**64 - 1)
    session = TrainingSession.fresh(cfg, tiny_data, cfg.initial_hparams(), cfg.training.seed, "cpu")
    assert session.epoch == 0


CPU_SESSION_ON_A_GPU_HOST = """
import torch
from autolfads.config import parse_config
from autolfads.trainer.data.synth import make_chaotic_rnn
from autolfads.trainer.model.session import TrainingSession

cfg = parse_config({"data": {"path": "unused.h5"}, "model": %r,
                    "training": {"batch_size": 40, "l2_increase_epochs": 2,
                                 "kl_increase_epochs": 2}, "pbt": {"burn_in_epochs": 3}})
data = make_chaotic_rnn(seed=1, n_conditions=8, n_replications=10, n_neurons=12,
                        n_heldout=3, n_bins=12, n_fp_bins=2)
session = TrainingSession.fresh(cfg, data, {}, seed=5, device="cpu")
session.train_epoch()
TrainingSession.from_checkpoint(cfg, data, session.checkpoint(), device="cpu").train_epoch()
print("cuda initialized:", torch.cuda.is_initialized())
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cpu_session_on_a_gpu_host_creates_no_cuda_context():
    # A checkpoint used to capture every GPU's RNG state, which creates a
    # CUDA context (hundreds of MB) on each GPU of the host, in every
    # trainer, a CPU one included. A fresh process: this one may use CUDA.
    import subprocess
    import sys

    script = CPU_SESSION_ON_A_GPU_HOST % (TINY_MODEL,)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "cuda initialized: False" in proc.stdout
