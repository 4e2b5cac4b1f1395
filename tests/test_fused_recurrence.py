"""Hand-written BPTT of the GRU recurrences: gradients and values are exact.

The encoder and decoder loops are custom autograd Functions (gru_tape.py,
decoder_loop.py). Their backward passes are checked against finite
differences (gradcheck, float64) with the clamp active, dropout masks and
posterior noise, and their forward values against a plain per-bin loop
written from the LFADS equations and stepped through autograd
(`modules/reference.py`, which ships beside the kernels).
"""

from __future__ import annotations

import pytest
import torch

from autolfads.config import ModelConfig
from autolfads.trainer.model.lfads import DataDims, LfadsModel
from autolfads.trainer.model.modules.decoder_loop import (
    ControllerOperands,
    GeneratorOperands,
    run_decoder_loop,
)
from autolfads.trainer.model.modules.gru import StreamRecurrence
from autolfads.trainer.model.modules.reference import (
    decoder_loop_reference,
    stream_recurrence_reference,
)

torch.set_num_threads(1)
D64 = torch.float64


def _rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, dtype=D64) * scale).requires_grad_()


def _mask(*shape: int, rate: float = 0.3) -> torch.Tensor:
    return (torch.rand(*shape, dtype=D64) >= rate).to(D64) / (1.0 - rate)


def test_stream_recurrence_gradients_match_finite_differences():
    torch.manual_seed(0)
    seq_len, k, batch, hidden = 5, 2, 3, 4
    # Large inputs so that some states hit the clip (zero gradient there).
    x = _rand(seq_len, k, batch, 3 * hidden, scale=2.0)
    h0, w = _rand(k, batch, hidden), _rand(k, hidden, 3 * hidden, scale=0.8)
    x_zr, x_n = x[..., : 2 * hidden].detach(), x[..., 2 * hidden :].detach()
    x_zr.requires_grad_(), x_n.requires_grad_()
    states = StreamRecurrence.apply(x_zr, x_n, h0, w, 0.9)
    assert bool((states.abs() == 0.9).any()), "the clip must be exercised"
    assert bool((states.abs() < 0.9).any())
    assert torch.autograd.gradcheck(lambda *a: StreamRecurrence.apply(*a, 0.9), (x_zr, x_n, h0, w))


def test_stream_recurrence_values_match_stepping_gru_step():
    torch.manual_seed(1)
    x, h0, w = _rand(6, 3, 2, 9), _rand(3, 2, 3), _rand(3, 3, 9)
    states = StreamRecurrence.apply(x[..., :6], x[..., 6:], h0, w, 1.5)
    plain = stream_recurrence_reference(x[..., :6], x[..., 6:], h0, w, 1.5)
    torch.testing.assert_close(states, plain)
    weights = torch.randn_like(plain)
    fused_grads = torch.autograd.grad((states * weights).sum(), (x, h0, w))
    plain_grads = torch.autograd.grad((plain * weights).sum(), (x, h0, w))
    for a, b in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b)


def _decoder_operands(with_con: bool, dropout: bool, sample: bool) -> tuple[list, dict]:
    """Differentiable inputs and constants of run_decoder_loop, float64."""
    seq_len, batch, gen, fac, con, co = 4, 3, 5, 2, 3, 2
    grads = [_rand(batch, fac), _rand(batch, gen)]
    grads += [_rand(seq_len, batch, 2 * gen), _rand(seq_len, batch, gen)]
    grads += [_rand(gen, 3 * gen, scale=0.7), _rand(gen, fac)]
    consts = {"gen_drop": _mask(seq_len, batch, gen) if dropout else None}
    if with_con:
        grads += [_rand(batch, con), _rand(seq_len, batch, 2 * con)]
        grads += [_rand(seq_len, batch, con), _rand(fac, 3 * con)]
        grads += [_rand(con, 3 * con), _rand(con, 2 * co), _rand(2 * co), _rand(co, 3 * gen)]
        consts["fac_drop"] = _mask(seq_len, batch, fac) if dropout else None
        consts["eps"] = torch.randn(seq_len, batch, co, dtype=D64) if sample else None
    return grads, consts


def _run(grads: list, consts: dict, clip: float = 1.2) -> tuple[torch.Tensor, ...]:
    # The arguments as one tuple: mypy cannot count f(*grads, clip, ...).
    con = None
    if len(grads) > 6:
        con_args = (*grads[6:], clip, consts["fac_drop"], consts["eps"])
        con = ControllerOperands(*con_args)
    gen_args = (*grads[:6], clip, consts["gen_drop"])
    return run_decoder_loop(GeneratorOperands(*gen_args), con)


@pytest.mark.parametrize(
    "with_con, dropout, sample",
    [(True, True, True), (True, False, False), (False, True, False)],
)
def test_decoder_recurrence_gradients_match_finite_differences(with_con, dropout, sample):
    torch.manual_seed(2)
    grads, consts = _decoder_operands(with_con, dropout, sample)
    outputs = [o for o in _run(grads, consts) if o.numel() > 0]
    assert len(outputs) == (6 if with_con else 2)
    assert torch.autograd.gradcheck(
        lambda *g: tuple(o for o in _run(list(g), consts) if o.numel() > 0), tuple(grads)
    )


def _reference(grads: list, consts: dict, clip: float = 1.2) -> list[torch.Tensor]:
    con = None
    if len(grads) > 6:
        con_args = (*grads[6:], clip, consts["fac_drop"], consts["eps"])
        con = ControllerOperands(*con_args)
    gen_args = (*grads[:6], clip, consts["gen_drop"])
    return list(decoder_loop_reference(GeneratorOperands(*gen_args), con))


@pytest.mark.parametrize(
    "with_con, dropout, sample",
    [(True, True, True), (True, False, False), (False, True, False), (False, False, False)],
)
def test_decoder_loop_values_and_gradients_equal_the_plain_per_bin_loop(with_con, dropout, sample):
    torch.manual_seed(3)
    grads, consts = _decoder_operands(with_con, dropout, sample)
    fused = _run(grads, consts)
    naive = _reference(grads, consts)
    for a, b in zip(fused, naive, strict=True):
        torch.testing.assert_close(a, b)
    weights = [torch.randn_like(o) for o in naive]

    def weighted(outs: list[torch.Tensor]) -> torch.Tensor:
        return sum(
            ((o * w).sum() for o, w in zip(outs, weights, strict=True)), torch.zeros((), dtype=D64)
        )

    fused_grads = torch.autograd.grad(weighted(list(fused)), grads, materialize_grads=True)
    naive_grads = torch.autograd.grad(weighted(naive), grads, materialize_grads=True)
    for a, b in zip(fused_grads, naive_grads, strict=True):
        torch.testing.assert_close(a, b)


def test_whole_model_gradients_match_finite_differences():
    """Encoder + decoder + readout in float64, with dropout and sampling."""
    dims = DataDims(encod_data_dim=3, recon_data_dim=4, encod_seq_len=4, recon_seq_len=5)
    cfg = ModelConfig(
        ic_enc_dim=3, ci_enc_dim=2, con_dim=2, co_dim=1, ic_dim=2, gen_dim=3, fac_dim=2
    )
    torch.manual_seed(4)
    model = LfadsModel(cfg, dims).double()
    data = torch.rand(2, 4, 3, dtype=D64)
    names = [name for name, _ in model.named_parameters()]

    def logrates(*values: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator().manual_seed(0)  # same masks and noise every call
        params = dict(zip(names, values, strict=True))
        return torch.func.functional_call(model, params, (data, None, 0.2, True, gen)).logrates

    values = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    assert torch.autograd.gradcheck(logrates, values)


def test_graph_memory_is_released_after_backward():
    """The tapes live on the autograd nodes; nothing there may reference the
    nodes back (an output unpacked in backward does): such a cycle keeps every
    step's activations alive until Python's cyclic GC happens to run
    (measured: +100 MiB RSS per training step)."""
    import gc
    import weakref

    torch.manual_seed(5)
    x = _rand(3, 2, 2, 9)
    h0, w = _rand(2, 2, 3), _rand(2, 3, 9)
    grads, consts = _decoder_operands(True, True, True)
    gc.disable()
    try:
        states = StreamRecurrence.apply(x[..., :6], x[..., 6:], h0, w, 1.0)
        outputs = _run(grads, consts)
        (states.sum() + sum(o.sum() for o in outputs)).backward()
        nodes = [weakref.ref(states.grad_fn), weakref.ref(outputs[0].grad_fn)]
        del states, outputs
        assert all(node() is None for node in nodes)  # freed by reference counting
    finally:
        gc.enable()
