"""Unit tests of the entropy bottleneck (learned factorized prior) and its real (range) coding."""

from __future__ import annotations

import copy
import functools
import math
import pickle

import pytest
import torch

from meaning_transform.models.bottlenecks.base import Latent
from meaning_transform.models.bottlenecks.entropy import (
    EntropyBottleneck,
    _CDFNetwork,
    code_jointly,
)
from meaning_transform.models.bottlenecks.histogram import HistogramEntropyModel

D = 8
# Two narrow, two unit, two wide and two very wide channels, at different locations.
SCALES = torch.tensor([0.2, 0.3, 1.0, 1.5, 4.0, 6.0, 20.0, 30.0])
LOCS = torch.tensor([-3.0, 2.2, 0.0, 1.7, -5.0, 8.0, 3.0, -12.0])


def _sample(n: int, generator: torch.Generator) -> torch.Tensor:
    return LOCS + SCALES * torch.randn(n, D, generator=generator)


def _latent(z: torch.Tensor) -> Latent:
    return Latent(z=z, mu=z)


@pytest.fixture(scope="module")
def trained() -> EntropyBottleneck:
    """A prior fitted for a few hundred Adam steps to Gaussian latents (rate + quantile loss)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    eb = EntropyBottleneck(D)
    density = [p for name, p in eb.named_parameters() if name != "quantiles"]
    opt = torch.optim.Adam([{"params": density, "lr": 1e-2}, {"params": [eb.quantiles], "lr": 0.5}])
    for _ in range(300):
        out = eb(_latent(_sample(256, gen)))
        opt.zero_grad()
        (out.rate_loss + out.aux_loss).backward()
        opt.step()
    return eb.eval()


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_cdf_network_backward_matches_finite_differences(scale: float) -> None:
    """The CDF network's hand-written backward (one autograd node) against gradcheck, in
    float64, to the inputs and every layer's parameters; its forward is the layer formula."""
    torch.manual_seed(0)
    eb = EntropyBottleneck(3, filters=(3, 2), density_lr_scale=scale).double()
    with torch.no_grad():
        for p in eb.parameters():
            p.add_(0.3 * torch.randn_like(p) / scale)
    x = torch.randn(3, 1, 5, dtype=torch.float64, requires_grad=True)
    params = eb._parameters_by_layer()
    assert torch.autograd.gradcheck(lambda x, *p: _CDFNetwork.apply(x, scale, *p), (x, *params))
    h = x
    for i, (m, b) in enumerate(zip(eb.matrices, eb.biases, strict=True)):
        h = b * scale + torch.nn.functional.softplus(m * scale) @ h
        if i < len(eb.factors):
            h = h + torch.tanh(eb.factors[i] * scale) * torch.tanh(h)
    torch.testing.assert_close(eb._logits_cumulative(x), h)


def test_rejects_bad_tail_mass() -> None:
    with pytest.raises(ValueError, match="tail_mass"):
        EntropyBottleneck(4, tail_mass=0.0)


def test_likelihoods_are_probabilities_and_pmf_sums_to_one() -> None:
    torch.manual_seed(0)
    eb = EntropyBottleneck(D)
    grid = torch.arange(-300, 301, dtype=torch.float32)[:, None].expand(-1, D) + eb.medians
    with torch.no_grad():
        lik = eb.likelihood(grid)
    assert lik.shape == (601, D)
    assert (lik > 0).all() and (lik <= 1).all()
    torch.testing.assert_close(
        lik.double().sum(0), torch.ones(D, dtype=torch.float64), atol=1e-4, rtol=0
    )


def test_far_tail_likelihood_is_precise_and_floored() -> None:
    torch.manual_seed(0)
    eb = EntropyBottleneck(D)
    y = torch.full((1, D), 60.0)  # deep in the upper tail, where 1 - sigmoid loses float32 bits
    with torch.no_grad():
        lik32 = eb.likelihood(y)
        lik64 = copy.deepcopy(eb).double().likelihood(y.double())
    torch.testing.assert_close(lik32.double(), lik64, rtol=1e-3, atol=0)
    with torch.no_grad():
        floor = eb.likelihood(torch.full((1, D), 1e4))
    assert torch.equal(floor, torch.full((1, D), eb.likelihood_bound))


def test_rate_is_finite_positive_and_in_bits() -> None:
    torch.manual_seed(0)
    eb = EntropyBottleneck(D).eval()
    z = torch.randn(16, D) * 3
    out = eb(_latent(z))
    assert out.rate_bits.shape == (16,)
    assert torch.isfinite(out.rate_bits).all() and (out.rate_bits > 0).all()
    bits = -torch.log2(eb.likelihood(eb.quantize(z))).sum(1)
    torch.testing.assert_close(out.rate_bits, bits)


def test_training_adds_noise_and_eval_rounds_around_medians(trained: EntropyBottleneck) -> None:
    eb = copy.deepcopy(trained)
    z = _sample(32, torch.Generator().manual_seed(1))
    eb.train()
    a, b = eb(_latent(z)), eb(_latent(z))
    assert not torch.equal(a.rate_bits, b.rate_bits)  # the rate sees fresh uniform noise
    torch.testing.assert_close(a.z, eb.quantize(z))  # the decoder sees rounded values
    eb.eval()
    c, d = eb(_latent(z)), eb(_latent(z))
    assert torch.equal(c.rate_bits, d.rate_bits) and torch.equal(c.z, d.z)
    offsets = c.z - eb.medians
    torch.testing.assert_close(offsets, torch.round(offsets), atol=1e-4, rtol=0)
    assert (c.z - z).abs().max() <= 0.5 + 1e-5


def test_gradient_reaches_encoder_through_straight_through_estimator() -> None:
    torch.manual_seed(0)
    eb = EntropyBottleneck(D).train()
    z = (torch.randn(4, D) * 2).requires_grad_()
    out = eb(_latent(z))
    out.z.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))
    z.grad = None
    eb(_latent(z)).rate_loss.backward()
    assert z.grad.abs().sum() > 0  # the rate term also pulls on the encoder


def test_aux_loss_moves_only_the_quantiles() -> None:
    torch.manual_seed(0)
    eb = EntropyBottleneck(D)
    out = eb(_latent(torch.randn(8, D)))
    torch.testing.assert_close(out.aux_loss, eb.quantile_loss())
    out.aux_loss.backward()
    assert eb.quantiles.grad.abs().sum() > 0
    for name, param in eb.named_parameters():
        if name != "quantiles":
            assert param.grad.abs().max() < 1e-5, name


def test_trained_quantiles_bracket_the_data(trained: EntropyBottleneck) -> None:
    z = _sample(2000, torch.Generator().manual_seed(2))
    q = trained.quantiles.detach()[:, 0, :]
    assert (q[:, 0] < z.min(0).values).all()
    assert (q[:, 2] > z.max(0).values).all()
    assert ((trained.medians - LOCS).abs() < SCALES.clamp_min(0.5)).all()


def test_round_trip_is_exact_including_out_of_support_values(trained: EntropyBottleneck) -> None:
    z = _sample(50, torch.Generator().manual_seed(3))
    q = trained.quantiles.detach()[:, 0, :]
    z[0, 0] = q[0, 2] + 1.0  # just above the support
    z[1, 1] = q[1, 0] - 1.0  # just below
    z[2, 6] = 1e6
    z[3, 7] = -3e8
    data = trained.compress(z)
    assert isinstance(data, bytes)
    assert torch.equal(trained.decompress(data, tuple(z.shape)), trained(_latent(z)).z)


def test_decompress_rejects_other_latent_dim(trained: EntropyBottleneck) -> None:
    data = trained.compress(_sample(4, torch.Generator().manual_seed(4)))
    with pytest.raises(ValueError, match="latent_dim"):
        EntropyBottleneck(D + 1).decompress(data, (4, D))


def test_estimated_and_coded_bits_agree(trained: EntropyBottleneck) -> None:
    z = _sample(2000, torch.Generator().manual_seed(5))
    report = trained.coding_report(z)
    assert report.exact and report.num_states == 2000
    assert report.num_bytes * 8 / 2000 == report.coded_bits_per_state
    gap = abs(report.coded_bits_per_state / report.estimated_bits_per_state - 1)
    assert gap < 0.02, report
    assert trained.training is False  # coding_report restores the mode it found


def test_level_only_scales_the_rate_loss() -> None:
    torch.manual_seed(0)
    low = EntropyBottleneck(D, level=1.0).eval()
    high = EntropyBottleneck(D, level=3.0).eval()
    high.load_state_dict(low.state_dict())
    z = torch.randn(16, D) * 2
    a, b = low(_latent(z)), high(_latent(z))
    assert torch.equal(a.rate_bits, b.rate_bits)
    torch.testing.assert_close(b.rate_loss, 3.0 * a.rate_loss)


@functools.cache
def _fit(level: float) -> tuple[EntropyBottleneck, torch.Tensor]:
    """Fit a learnable latent [128, 4] to fixed targets under distortion + rate at ``level``."""
    torch.manual_seed(0)
    target = torch.randn(128, 4, generator=torch.Generator().manual_seed(6)) * 4
    z = torch.nn.Parameter(target.clone())
    eb = EntropyBottleneck(4, level=level)
    opt = torch.optim.Adam([z, *eb.parameters()], lr=3e-2)
    for _ in range(200):
        out = eb(_latent(z))
        loss = (out.z - target).pow(2).sum(1).mean() + out.rate_loss + out.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return eb.eval(), z.detach()


def _bits_after_fit(level: float) -> float:
    """Eval bits/state of the latent fitted at ``level``."""
    eb, z = _fit(level)
    with torch.no_grad():
        return eb(_latent(z)).rate_bits.mean().item()


def test_higher_level_gives_fewer_bits() -> None:
    assert _bits_after_fit(level=10.0) < 0.5 * _bits_after_fit(level=0.1)  # ~3.3 vs ~16.3


@pytest.mark.parametrize("level", [0.1, 1.0, 10.0])
def test_coded_bits_within_one_percent_at_every_level(level: float) -> None:
    """2,048 states (the fitted latents, jittered within their bins): ~16 to ~3 bits/state."""
    eb, z = _fit(level)
    jitter = torch.rand(16, *z.shape, generator=torch.Generator().manual_seed(9)) * 0.8 - 0.4
    batch = (eb.quantize(z) + jitter).reshape(-1, z.shape[1])
    report = eb.coding_report(batch)
    assert report.exact and report.num_states == 2048
    gap = report.coded_bits_per_state / report.estimated_bits_per_state - 1
    assert abs(gap) <= 0.01, report


@pytest.mark.parametrize("spread", [0.3, 3.0, 10.0])
def test_histogram_tables_coded_within_one_percent(spread: float) -> None:
    """Learned tables from near-uniform to peaked (~14 to ~2 bits/state), 3,000 states."""
    lo, hi = torch.tensor([0, -3, 0, 5]), torch.tensor([1, 3, 20, 60])
    model = HistogramEntropyModel(lo, hi).eval()
    logits = torch.randn(model.table_logits.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.table_logits.copy_(logits * spread / model.density_lr_scale)
        gen = torch.Generator().manual_seed(2)
        index = torch.multinomial(model.probabilities(), 3000, True, generator=gen).t()
    report = model.coding_report((index + lo).float())
    assert report.exact
    gap = report.coded_bits_per_state / report.estimated_bits_per_state - 1
    assert abs(gap) <= 0.01, report


def test_a_run_of_the_likeliest_symbol_is_not_coded_for_free() -> None:
    """An empty ANS stack codes such a run in no bits at all; the range coder pays for each."""
    model = HistogramEntropyModel(torch.tensor([0]), torch.tensor([1])).eval()
    with torch.no_grad():
        model.table_logits.copy_(torch.tensor([[math.log(9.0), 0.0]]) / model.density_lr_scale)
    report = model.coding_report(torch.zeros(3000, 1))  # p = 0.9 each: 456 bits
    assert report.exact
    coded, estimated = report.coded_bits_per_state * 3000, report.estimated_bits_per_state * 3000
    assert estimated - 0.1 <= coded <= estimated + 40  # the stream's end: ~16 bits, at most ~33


def test_tables_follow_the_weights(trained: EntropyBottleneck) -> None:
    """update() rebuilds only when the weights changed (load_state_dict, a step, in-place)."""
    model = copy.deepcopy(trained)
    assert model.update() is True and model.update() is False and model.tables_are_current()
    z = _sample(100, torch.Generator().manual_seed(8))
    before = model.compress(z)
    other = EntropyBottleneck(D)
    model.load_state_dict(other.state_dict())
    assert not model.tables_are_current()
    after = model.compress(z)  # rebuilt, not coded with the old tables
    assert after == other.compress(z) and after != before
    with torch.no_grad():
        model.biases[0].add_(0.5)
    assert model.update() is True
    assert torch.equal(model.decompress(model.compress(z), tuple(z.shape)), model.quantize(z))
    copied = pickle.loads(pickle.dumps(model))  # the cached tables stay behind; rebuilt on use
    assert copied.compress(z) == model.compress(z)


def test_one_stream_for_several_parts(trained: EntropyBottleneck) -> None:
    """Coding two parts jointly round-trips and costs no more than two streams."""
    z = _sample(500, torch.Generator().manual_seed(11))
    joint = code_jointly([(trained, z), (trained, z + 1.0)])
    apart = [trained.coding_report(z), trained.coding_report(z + 1.0)]
    assert joint.exact
    assert joint.num_bytes <= sum(r.num_bytes for r in apart)
    estimated = sum(r.estimated_bits_per_state for r in apart)
    assert joint.estimated_bits_per_state == pytest.approx(estimated)
