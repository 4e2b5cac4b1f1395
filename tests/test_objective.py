"""Loss terms against hand computations; ramps; priors; CD / SV masking."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from autolfads.trainer.model.augment import (
    apply_grad_mask,
    coordinated_dropout,
    make_sv_mask,
    sample_validation_losses,
)
from autolfads.trainer.model.modules.priors import AutoregressivePrior, GaussianPrior
from autolfads.trainer.model.modules.recons import poisson_nll
from autolfads.trainer.model.objective import LossWeights, combine, l2_penalty, ramp, reconstruction

torch.set_num_threads(1)


@pytest.mark.parametrize(
    ("epoch", "start", "increase", "expected"),
    [
        (0, 0, 80, 1 / 81),
        (79, 0, 80, 80 / 81),
        (80, 0, 80, 1.0),
        (500, 0, 80, 1.0),
        (0, 5, 10, 0.0),
        (4, 5, 10, 0.0),
        (5, 5, 10, 1 / 11),
        (0, -80, 80, 1.0),
        (0, 0, 0, 1.0),
    ],
)
def test_ramp_values(epoch, start, increase, expected):
    assert ramp(epoch, start, increase) == pytest.approx(expected)


def test_poisson_nll_is_full_likelihood_with_stirling_term():
    logrates = torch.tensor([0.3, -1.0, 1.2, 0.0])
    counts = torch.tensor([0.0, 1.0, 4.0, 7.0])
    rates = logrates.exp()
    stirling = torch.where(
        counts > 1,
        counts * torch.log(counts) - counts + 0.5 * torch.log(2 * math.pi * counts),
        torch.zeros(()),
    )
    expected = rates - counts * logrates + stirling
    torch.testing.assert_close(poisson_nll(logrates, counts), expected)


def test_l2_penalty_matches_hand_computation_and_skips_zero_scales():
    w_gen, w_con = torch.full((6, 2), 2.0), torch.full((3, 1), 1.0)
    w_ic = torch.full((4, 4), 9.0)
    groups = {"gen": [w_gen], "con": [w_con], "ic_enc": [w_ic, w_ic]}
    got = l2_penalty(groups, {"gen": 0.5, "con": 3.0, "ic_enc": 0.0})
    expected = (0.5 * 0.5 * 4.0 * 12 + 3.0 * 0.5 * 1.0 * 3) / (12 + 3)
    assert got.item() == pytest.approx(expected)
    assert l2_penalty(groups, {}).item() == 0.0


def test_gaussian_ic_prior_kl_matches_torch_distributions():
    torch.manual_seed(0)
    prior = GaussianPrior(5, variance=0.1)
    with torch.no_grad():
        prior.mean.copy_(torch.randn(5))
    mean, std = torch.randn(3, 5), torch.rand(3, 5) + 0.1
    expected = kl_divergence(Normal(mean, std), Normal(prior.mean, math.sqrt(0.1))).sum(-1)
    torch.testing.assert_close(prior.kl(mean, std), expected)
    assert prior.mean.requires_grad and not any(b.requires_grad for b in prior.buffers())


def test_ar1_prior_log_prob_matches_manual_recursion():
    torch.manual_seed(1)
    prior = AutoregressivePrior(2, tau=10.0, nvar=0.1)
    with torch.no_grad():
        prior.logtaus.copy_(torch.log(torch.tensor([10.0, 3.0])))
        prior.lognvars.copy_(torch.log(torch.tensor([0.1, 0.5])))
    z = torch.randn(4, 6, 2)
    alpha = torch.exp(-1.0 / torch.tensor([10.0, 3.0]))
    nvar = torch.tensor([0.1, 0.5])
    expected = Normal(0.0, torch.sqrt(nvar / (1 - alpha**2))).log_prob(z[:, 0]).sum(-1)
    for t in range(1, 6):
        expected = expected + Normal(alpha * z[:, t - 1], nvar.sqrt()).log_prob(z[:, t]).sum(-1)
    torch.testing.assert_close(prior.log_prob(z), expected)


def test_ar1_kl_is_single_sample_log_q_minus_log_p():
    torch.manual_seed(2)
    prior = AutoregressivePrior(3, tau=5.0, nvar=0.2)
    mean, std, eps = torch.randn(2, 4, 3), torch.rand(2, 4, 3) + 0.2, torch.randn(2, 4, 3)
    z = mean + std * eps
    log_q = Normal(mean, std).log_prob(z).sum(dim=(1, 2))
    torch.testing.assert_close(prior.kl(mean, std, eps), log_q - prior.log_prob(z))
    kl = prior.kl(mean, std, eps).sum()
    kl.backward()
    assert prior.logtaus.grad is not None and prior.lognvars.grad is not None


def test_total_loss_formula():
    w = LossWeights(
        loss_scale=1e4, kl_ic_scale=2e-3, kl_co_scale=5e-4, l2_scales={}, l2_ramp=0.25, kl_ramp=0.5
    )
    got = combine(torch.tensor(0.7), torch.tensor(30.0), torch.tensor(80.0), torch.tensor(0.01), w)
    expected = 1e4 * (0.7 + 0.25 * 0.01 + 0.5 * (2e-3 * 30.0 + 5e-4 * 80.0))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_reconstruction_is_mean_nll_over_all_elements():
    logrates, counts = torch.randn(2, 5, 4), torch.poisson(torch.ones(2, 5, 4))
    recon, recon_sv = reconstruction(logrates, counts)
    assert recon.item() == pytest.approx(poisson_nll(logrates, counts).mean().item())
    assert recon_sv is None


def test_coordinated_dropout_gradient_flows_only_through_dropped_elements():
    gen = torch.Generator().manual_seed(3)
    data = torch.poisson(torch.full((4, 6, 5), 2.0)) + 1.0  # no zeros: 0 means dropped
    masked, grad_mask = coordinated_dropout(data, 0.4, 0.0, 8, 7, gen)
    assert grad_mask is not None
    dropped = masked == 0
    kept = ~dropped
    assert 0.25 < dropped.float().mean().item() < 0.55
    # Kept inputs are rescaled by 1/(1 - cd_rate); dropped ones are zero.
    torch.testing.assert_close(masked[kept], data[kept] / 0.6)
    assert grad_mask.shape == (4, 8, 7)
    assert bool((grad_mask[:, 6:] == 1).all()) and bool((grad_mask[:, :, 5:] == 1).all())
    logrates = torch.zeros(4, 8, 7, requires_grad=True)
    recon = torch.poisson(torch.full((4, 8, 7), 2.0))
    loss, _ = reconstruction(logrates, recon, grad_mask)
    plain, _ = reconstruction(logrates, recon)
    assert loss.item() == pytest.approx(plain.item())  # same value, masked gradient
    loss.backward()
    assert logrates.grad is not None
    nonzero = logrates.grad != 0
    observed = nonzero[:, :6, :5]
    # d nll / d lograte = exp(0) - count: nonzero wherever the count is not 1.
    informative = recon[:, :6, :5] != 1.0
    assert not bool(observed[kept].any())
    assert bool(observed[dropped & informative].all())
    assert bool(nonzero[:, 6:][recon[:, 6:] != 1.0].all())


def test_cd_pass_rate_lets_some_kept_elements_through_and_zero_rate_disables():
    data = torch.ones(50, 10, 10)
    _, mask = coordinated_dropout(data, 0.3, 0.5, 10, 10, torch.Generator().manual_seed(0))
    assert mask is not None
    assert 0.6 < mask.mean().item() < 0.7  # 0.3 + 0.7 * 0.5
    same, none = coordinated_dropout(data, 0.0, 0.5, 10, 10, torch.Generator())
    assert same is data and none is None
    loss = torch.arange(4.0, requires_grad=True)
    apply_grad_mask(loss, torch.tensor([1.0, 0.0, 1.0, 0.0])).sum().backward()
    assert loss.grad is not None and loss.grad.tolist() == [1.0, 0.0, 1.0, 0.0]


def test_sample_validation_mask_is_fixed_and_splits_the_loss():
    a, b = make_sv_mask((20, 10, 6), 0.2, seed=4), make_sv_mask((20, 10, 6), 0.2, seed=4)
    assert (a == b).all() and 0.7 < a.mean() < 0.9
    sv = torch.from_numpy(a[:2, :3, :2])  # (2, 3, 2) encoder shape
    loss = torch.rand(2, 4, 3)  # one forward bin and one held-out channel
    train, held = sample_validation_losses(loss, sv, 0.2)
    torch.testing.assert_close(train[:, :3, :2], loss[:, :3, :2] * sv / 0.8)
    torch.testing.assert_close(held, loss[:, :3, :2] * (1 - sv) / 0.2)
    torch.testing.assert_close(train[:, 3:], loss[:, 3:])


def test_sv_nll_is_the_mean_over_the_encoder_elements_as_lfads_torch_logs_it():
    """recon/sv estimates the mean NLL of the hidden elements: held-out
    channels and forward bins (never hidden) must not dilute its mean."""
    sv_rate = 0.25
    sv = torch.from_numpy(make_sv_mask((8, 5, 4), sv_rate, seed=2))  # encoder (B, Te, Ne)
    gen = torch.Generator().manual_seed(0)
    counts = torch.poisson(torch.full((8, 7, 6), 2.0), generator=gen)  # 2 bins, 2 channels more
    logrates = torch.randn(counts.shape, generator=gen)
    _, recon_sv = reconstruction(logrates, counts, sv_mask=sv, sv_rate=sv_rate)
    nll = poisson_nll(logrates, counts)[:, :5, :4]
    assert recon_sv is not None
    # lfads-torch SampleValidation: mean(loss[:, :Te, :Ne] * (1 - sv) / sv_rate).
    torch.testing.assert_close(recon_sv, (nll * (1 - sv) / sv_rate).mean())
    # The same NLL everywhere: the estimate is that NLL up to the mask's sampling error.
    _, flat_sv = reconstruction(
        torch.zeros_like(counts), torch.zeros_like(counts), None, sv, sv_rate
    )
    assert flat_sv is not None
    assert float(flat_sv) == pytest.approx(float((1 - sv).mean() / sv_rate))
