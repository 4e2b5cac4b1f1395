"""LFADS model structure: clipped GRU maths, encoders, decoder, output shapes."""

from __future__ import annotations

import pytest
import torch

from autolfads.config import ModelConfig
from autolfads.trainer.model.lfads import DataDims, LfadsModel
from autolfads.trainer.model.modules.gru import (
    BidirectionalClippedGRU,
    ClippedGRUCell,
    run_bidirectional,
)
from autolfads.trainer.model.modules.recons import KernelNormalizedLinear

torch.set_num_threads(1)

SMALL = dict(ic_enc_dim=6, ci_enc_dim=5, con_dim=7, co_dim=2, ic_dim=4, gen_dim=9, fac_dim=3)


def _model(dims: DataDims, **overrides) -> LfadsModel:
    torch.manual_seed(0)
    return LfadsModel(ModelConfig(**{**SMALL, **overrides}), dims)


def _reference_gru_step(cell: ClippedGRUCell, x, h):
    """Hand-written LFADS GRU (reset gate before the candidate matmul)."""
    hidden = cell.hidden_size
    xp = x @ cell.weight_ih.T + cell.bias_ih
    w_z, w_r, w_n = cell.weight_hh.split(hidden)
    z = torch.sigmoid(xp[:, :hidden] + h @ w_z.T)
    r = torch.sigmoid(xp[:, hidden : 2 * hidden] + h @ w_r.T)
    n = torch.tanh(xp[:, 2 * hidden :] + (r * h) @ w_n.T)
    return torch.clamp(z * h + (1 - z) * n, -cell.clip_value, cell.clip_value)


def test_clipped_gru_cell_matches_hand_computation_and_clips():
    torch.manual_seed(1)
    cell = ClippedGRUCell(4, 6, clip_value=0.3)
    x, h = torch.randn(5, 4), torch.randn(5, 6)
    out = cell(x, h)
    torch.testing.assert_close(out, _reference_gru_step(cell, x, h))
    assert out.abs().max() <= 0.3 + 1e-7
    assert torch.equal(cell.bias_ih[:12], torch.ones(12))  # z and r gates start at 1
    assert torch.equal(cell.bias_ih[12:], torch.zeros(6))  # candidate at 0


def test_gru_init_scales_follow_fan_in():
    torch.manual_seed(2)
    dec = ClippedGRUCell(400, 100)
    enc = ClippedGRUCell(400, 100, is_encoder=True)
    assert dec.weight_ih.std().item() == pytest.approx(1 / 400**0.5, rel=0.05)
    assert dec.weight_hh.std().item() == pytest.approx(1 / 100**0.5, rel=0.05)
    assert enc.weight_hh.std().item() == pytest.approx(1 / 500**0.5, rel=0.05)


def test_grouped_bidirectional_loop_equals_stepping_each_direction():
    torch.manual_seed(3)
    grus = [BidirectionalClippedGRU(3, 4, 5.0), BidirectionalClippedGRU(3, 4, 5.0)]
    grus.append(BidirectionalClippedGRU(3, 2, 5.0))  # different size: own group
    for gru in grus:
        torch.nn.init.normal_(gru.h0)
    x = torch.randn(2, 7, 3)
    results = run_bidirectional(grus, x)
    for gru, (fwd_out, bwd_out, final) in zip(grus, results, strict=True):
        h = gru.h0[0].expand(2, -1)
        for t in range(7):
            h = _reference_gru_step(gru.fwd, x[:, t], h)
            torch.testing.assert_close(fwd_out[:, t], h)
        h = gru.h0[1].expand(2, -1)
        for t in reversed(range(7)):
            h = _reference_gru_step(gru.bwd, x[:, t], h)
            torch.testing.assert_close(bwd_out[:, t], h)
        torch.testing.assert_close(final, torch.cat([fwd_out[:, -1], bwd_out[:, 0]], dim=1))


def test_output_shapes_with_heldout_neurons_forward_bins_and_ext_input():
    dims = DataDims(
        encod_data_dim=7, recon_data_dim=10, encod_seq_len=8, recon_seq_len=11, ext_input_dim=2
    )
    model = _model(dims)
    out = model(torch.rand(3, 8, 7), torch.rand(3, 11, 2), 0.1, True, torch.Generator())
    assert out.logrates.shape == (3, 11, 10)
    assert out.factors.shape == (3, 11, 3)
    assert out.gen_states.shape == (3, 11, 9)
    assert out.con_states.shape == (3, 11, 7)
    assert out.co_means.shape == out.co_stds.shape == (3, 11, 2)
    assert out.gen_inputs.shape == (3, 11, 4)  # co_dim + ext_input_dim
    assert out.ic_mean.shape == out.ic_std.shape == (3, 4)
    assert out.gen_init.shape == (3, 9)
    assert bool((out.ic_std >= 1e-2 - 1e-7).all())  # sqrt(ic_post_var_min)


def test_no_controller_when_co_dim_is_zero():
    dims = DataDims(5, 6, 8, 9)
    model = _model(dims, ci_enc_dim=0, con_dim=0, co_dim=0)
    assert model.co_prior is None and model.encoder.ci_enc is None
    assert "con" not in model.recurrent_kernels()
    out = model(torch.rand(2, 8, 5), None, 0.0, True, torch.Generator())
    assert out.logrates.shape == (2, 9, 6)
    assert out.co_means.shape == (2, 9, 0) and out.con_states.shape == (2, 9, 0)


def test_forward_bins_ignore_ext_input_and_encoder_sees_observed_bins_only():
    dims = DataDims(4, 4, 6, 9, ext_input_dim=1)
    model = _model(dims).eval()
    data, ext = torch.rand(2, 6, 4), torch.rand(2, 9, 1)
    base = model(data, ext, 0.0, False).logrates
    ext2 = ext.clone()
    ext2[:, 6:] = 100.0  # unknown in forward bins: must be ignored
    torch.testing.assert_close(model(data, ext2, 0.0, False).logrates, base)
    ext3 = ext.clone()
    ext3[:, 2] += 1.0
    assert not torch.allclose(model(data, ext3, 0.0, False).logrates, base)


def test_controller_inputs_are_lagged_and_zero_in_forward_bins():
    dims = DataDims(3, 3, 6, 8)
    model = _model(dims, ci_lag=2)
    data = torch.rand(2, 6, 3)
    assert model.encoder.ci_enc is not None
    fwd, bwd, _ = model.encoder.ci_enc(data)
    ci = model.encoder._lag_and_pad(fwd, bwd, 8)
    h = model.encoder.ci_enc_dim
    torch.testing.assert_close(ci[:, 2:6, :h], fwd[:, :4])
    torch.testing.assert_close(ci[:, :4, h:], bwd[:, 2:])
    assert ci[:, :2, :h].abs().sum() == 0 and ci[:, 4:, h:].abs().sum() == 0
    assert ci[:, 6:].abs().sum() == 0


def test_factor_weights_are_row_normalised_every_call():
    layer = KernelNormalizedLinear(5, 3)
    with torch.no_grad():
        layer.weight.mul_(7.0)
    x = torch.randn(4, 5)
    expected = x @ (layer.weight / layer.weight.norm(dim=1, keepdim=True)).T
    torch.testing.assert_close(layer(x), expected)


def test_sampling_and_dropout_follow_the_generator():
    dims = DataDims(4, 5, 6, 6)
    model = _model(dims)
    data = torch.rand(3, 6, 4)
    a = model(data, None, 0.3, True, torch.Generator().manual_seed(5)).logrates
    b = model(data, None, 0.3, True, torch.Generator().manual_seed(5)).logrates
    c = model(data, None, 0.3, True, torch.Generator().manual_seed(6)).logrates
    assert torch.equal(a, b) and not torch.equal(a, c)
    mean1 = model(data, None, 0.0, False, torch.Generator().manual_seed(1)).logrates
    mean2 = model(data, None, 0.0, False, torch.Generator().manual_seed(2)).logrates
    assert torch.equal(mean1, mean2)  # no sampling, no dropout: deterministic


def test_gradients_reach_every_trainable_parameter():
    dims = DataDims(4, 6, 6, 8, ext_input_dim=1)
    model = _model(dims)
    out = model(torch.rand(3, 6, 4), torch.rand(3, 8, 1), 0.2, True, torch.Generator())
    loss = out.logrates.exp().sum() + model.ic_prior.kl(out.ic_mean, out.ic_std).sum()
    eps = torch.randn_like(out.co_means)
    assert model.co_prior is not None
    loss = loss + model.co_prior.kl(out.co_means, out.co_stds, eps).sum()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


def test_the_package_module_maps_name_what_their_modules_define():
    """The module maps in the packages' docstrings are where a
    reader starts: every `Name` they list for a module exists there."""
    import importlib
    import re

    for package in (
        "autolfads.trainer.model",
        "autolfads.trainer.model.modules",
        "autolfads.coordinator.search",
    ):
        doc = importlib.import_module(package).__doc__ or ""
        for line in doc.splitlines():
            entry = re.match(r"^(\w+)(?:, (\w+))?/?\s{2,}(.*)$", line)
            if entry is None:
                continue
            names = re.findall(r"`([A-Za-z_]\w*)`", entry.group(3))
            for module_name in filter(None, entry.group(1, 2)):
                module = importlib.import_module(f"{package}.{module_name}")
                missing = [name for name in names if not hasattr(module, name)]
                assert not missing, f"{package}.{module_name} has no {missing}"
