"""Naive per-step LFADS reference: a stand-in for lfads-torch's code structure.

    python benchmarks/bench_naive_reference.py --threads 1 --epochs 2 --steps 5

lfads-torch cannot be installed here (it pins torch 1.13, Lightning 1.6 and
Ray 2.1), so this file is NOT lfads-torch. It is an independent, plain
PyTorch implementation of the same model and loss at the same sizes, written
the way lfads-torch structures its computation (facts from
shared/reference/lfads-and-pbt.md section 1):

- GRU cells subclass `nn.GRUCell` (a frozen zero `bias_hh` included); each
  cell call projects its own input, splits the gates and clamps the state;
- the encoders step their cells in a Python loop, forward and backward
  direction one after the other, IC and CI encoders separately;
- the decoder steps one cell per bin that concatenates [ci_t, factor_{t-1}],
  applies dropout, samples co_t with `rsample`, and normalises the factor
  weights on every call; per-bin outputs are collected with `torch.stack`;
- batches come from a `DataLoader` over a `TensorDataset`, and every step
  logs its loss terms with `.item()` (as Lightning's `self.log` does).

It uses the same data file and sizes as `bench_train.py --size stated`, so
the two scripts' numbers compare the code structure, not the maths.
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import SIZES, _cpu_name, _load_data  # noqa: E402


class NaiveClippedGRUCell(nn.GRUCell):
    def __init__(self, input_size: int, hidden_size: int, clip: float) -> None:
        super().__init__(input_size, hidden_size, bias=True)
        self.clip = clip
        with torch.no_grad():
            self.bias_hh.zero_()
            self.bias_ih.fill_(1.0)
            self.bias_ih[2 * hidden_size :] = 0.0
        self.bias_hh.requires_grad_(False)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.hidden_size
        if h is None:  # nn.GRUCell's contract: no state means zeros
            h = x.new_zeros(x.shape[0], hidden)
        x_z, x_r, x_n = F.linear(x, self.weight_ih, self.bias_ih).chunk(3, dim=1)
        w_zr, w_n = self.weight_hh.split([2 * hidden, hidden])
        b_zr, b_n = self.bias_hh.split([2 * hidden, hidden])
        h_z, h_r = F.linear(h, w_zr, b_zr).chunk(2, dim=1)
        z = torch.sigmoid(x_z + h_z)
        r = torch.sigmoid(x_r + h_r)
        n = torch.tanh(x_n + F.linear(r * h, w_n, b_n))
        return torch.clamp(z * h + (1 - z) * n, -self.clip, self.clip)


class NaiveBidirectionalGRU(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, clip: float) -> None:
        super().__init__()
        self.fwd = NaiveClippedGRUCell(input_size, hidden_size, clip)
        self.bwd = NaiveClippedGRUCell(input_size, hidden_size, clip)
        self.h0 = nn.Parameter(torch.zeros(2, hidden_size))

    @staticmethod
    def _run(cell: NaiveClippedGRUCell, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        states = []
        for t in range(x.shape[1]):
            h = cell(x[:, t], h)
            states.append(h)
        return torch.stack(states, dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x.shape[0]
        fwd = self._run(self.fwd, x, self.h0[0].expand(batch, -1))
        bwd = self._run(self.bwd, x.flip(1), self.h0[1].expand(batch, -1)).flip(1)
        return fwd, bwd


class NaiveLfads(nn.Module):
    def __init__(self, m: dict, n_in: int, n_out: int, recon_len: int, clip: float = 5.0) -> None:
        super().__init__()
        self.m, self.recon_len = m, recon_len
        self.ic_enc = NaiveBidirectionalGRU(n_in, m["ic_enc_dim"], clip)
        self.ci_enc = NaiveBidirectionalGRU(n_in, m["ci_enc_dim"], clip)
        self.ic_linear = nn.Linear(2 * m["ic_enc_dim"], 2 * m["ic_dim"])
        self.ic_to_g0 = nn.Linear(m["ic_dim"], m["gen_dim"])
        self.con = NaiveClippedGRUCell(2 * m["ci_enc_dim"] + m["fac_dim"], m["con_dim"], clip)
        self.co_linear = nn.Linear(m["con_dim"], 2 * m["co_dim"])
        self.gen = NaiveClippedGRUCell(m["co_dim"], m["gen_dim"], clip)
        self.fac_weight = nn.Parameter(torch.randn(m["fac_dim"], m["gen_dim"]) / 10.0)
        self.con_h0 = nn.Parameter(torch.zeros(m["con_dim"]))
        self.readout = nn.Linear(m["fac_dim"], n_out)
        self.ic_prior_mean = nn.Parameter(torch.zeros(m["ic_dim"]))
        self.logtaus = nn.Parameter(torch.full((m["co_dim"],), math.log(10.0)))
        self.lognvars = nn.Parameter(torch.full((m["co_dim"],), math.log(0.1)))
        self.drop = nn.Dropout(0.3)

    def factor(self, gen: torch.Tensor) -> torch.Tensor:
        return F.linear(self.drop(gen), F.normalize(self.fac_weight, dim=1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.drop(x)
        ic_fwd, ic_bwd = self.ic_enc(x)
        ic_h = self.drop(torch.cat([ic_fwd[:, -1], ic_bwd[:, 0]], dim=1))
        ic_mean, ic_logvar = self.ic_linear(ic_h).chunk(2, dim=1)
        ic_std = torch.sqrt(torch.exp(ic_logvar) + 1e-4)
        ic = torch.distributions.Normal(ic_mean, ic_std).rsample()
        ci_fwd, ci_bwd = self.ci_enc(x)
        batch, seq_len, hid = ci_fwd.shape
        ci = torch.zeros(batch, self.recon_len, 2 * hid)  # lag 1, zero-padded
        ci[:, 1:seq_len, :hid] = ci_fwd[:, :-1]
        ci[:, : seq_len - 1, hid:] = ci_bwd[:, 1:]
        gen = self.ic_to_g0(ic)
        fac = self.factor(gen)
        con = self.con_h0.expand(batch, -1)
        outs: dict[str, list[torch.Tensor]] = {"factors": [], "co_mean": [], "co_std": []}
        for t in range(self.recon_len):
            con = self.con(self.drop(torch.cat([ci[:, t], fac], dim=1)), con)
            co_mean, co_logvar = self.co_linear(con).chunk(2, dim=1)
            co_std = torch.sqrt(torch.exp(co_logvar))
            co = torch.distributions.Normal(co_mean, co_std).rsample()
            gen = self.gen(co, gen)
            fac = self.factor(gen)
            for key, value in (("factors", fac), ("co_mean", co_mean), ("co_std", co_std)):
                outs[key].append(value)
        res = {k: torch.stack(v, dim=1) for k, v in outs.items()}
        res.update(logrates=self.readout(res["factors"]), ic_mean=ic_mean, ic_std=ic_std)
        return res

    def loss(self, out: dict, recon: torch.Tensor, grad_mask: torch.Tensor | None) -> dict:
        nll = F.poisson_nll_loss(out["logrates"], recon, full=True, reduction="none")
        if grad_mask is not None:
            nll = nll * grad_mask + (nll * (1 - grad_mask)).detach()
        prior = torch.distributions.Normal(self.ic_prior_mean, math.sqrt(0.1))
        post = torch.distributions.Normal(out["ic_mean"], out["ic_std"])
        ic_kl = torch.distributions.kl_divergence(post, prior).sum(1).mean()
        co_kl = self._co_kl(out["co_mean"], out["co_std"])
        l2 = sum(0.5 * c.weight_hh.pow(2).sum() for c in (self.gen, self.con)) / (
            self.gen.weight_hh.numel() + self.con.weight_hh.numel()
        )
        total = 1e4 * (nll.mean() + l2 + 1e-4 * ic_kl + 1e-4 * co_kl)
        return {"total": total, "recon": nll.mean(), "ic_kl": ic_kl, "co_kl": co_kl, "l2": l2}

    def _co_kl(self, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        post = torch.distributions.Normal(mean, std)
        z = post.rsample()
        alpha = torch.exp(-1.0 / torch.exp(self.logtaus))
        var0 = torch.exp(self.lognvars) / (1 - alpha**2)
        prior_mean = torch.cat([torch.zeros_like(z[:, :1]), alpha * z[:, :-1]], dim=1)
        prior_std = torch.cat(
            [var0.sqrt().expand_as(z[:, :1]), torch.exp(0.5 * self.lognvars).expand_as(z[:, 1:])],
            dim=1,
        )
        log_p = torch.distributions.Normal(prior_mean, prior_std).log_prob(z)
        return (post.log_prob(z) - log_p).sum((1, 2)).mean()


def train_step(model, opt, encod, recon, cd_rate: float = 0.3) -> dict[str, float]:  # noqa: ANN001
    keep = (torch.rand_like(encod) >= cd_rate).float()
    grad_mask = F.pad(1 - keep, (0, recon.shape[2] - encod.shape[2], 0, 0), value=1.0)
    out = model(encod * keep / (1 - cd_rate))
    terms = model.loss(out, recon, grad_mask)
    opt.zero_grad()
    terms["total"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 200.0)
    opt.step()
    return {k: v.item() for k, v in terms.items()}  # per-step logging


def run_epoch(model, opt, train_loader, valid_loader) -> float:  # noqa: ANN001
    start = time.perf_counter()
    model.train()
    for encod, recon in train_loader:
        train_step(model, opt, encod, recon)
    model.eval()
    with torch.no_grad():
        for encod, recon in valid_loader:
            model.loss(model(encod), recon, None)["total"].item()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = SIZES["stated"]
    data = _load_data(size["data"])
    to_t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    train = TensorDataset(to_t(data.train.encod_data), to_t(data.train.recon_data))
    valid = TensorDataset(to_t(data.valid.encod_data), to_t(data.valid.recon_data))
    batch = size["batch_size"]
    train_loader = DataLoader(train, batch_size=batch, shuffle=True)
    valid_loader = DataLoader(valid, batch_size=batch)
    model = NaiveLfads(size["model"], data.encod_data_dim, data.recon_data_dim, data.recon_seq_len)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3)
    print(f"machine: {_cpu_name()}, torch {torch.__version__}, threads {args.threads}, device cpu")
    print(f"naive per-step reference (stand-in for lfads-torch's structure), batch {batch}")
    encod, recon = next(iter(train_loader))
    wall, cpu = [], []
    for _ in range(args.steps + 2):
        start, start_cpu = time.perf_counter(), time.process_time()
        train_step(model, opt, encod, recon)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    wall, cpu = wall[2:], cpu[2:]  # the first steps warm up allocators
    print(
        f"train step: median {statistics.median(wall) * 1e3:.1f} ms wall, "
        f"{statistics.median(cpu) * 1e3:.1f} ms CPU (over {len(wall)})"
    )
    epochs = [run_epoch(model, opt, train_loader, valid_loader) for _ in range(args.epochs)]
    print(f"epoch (train + valid): median {statistics.median(epochs):.2f} s over {len(epochs)}")
    print(
        f"peak RSS (load + train): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )


if __name__ == "__main__":
    main()
