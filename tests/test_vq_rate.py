"""compression=vq's ECVQ rate term: hand-computed code choices and soft-assignment bits."""

from __future__ import annotations

import math

import pytest
import torch

from meaning_transform.models.bottlenecks.base import Latent
from meaning_transform.models.bottlenecks.vq import (
    VQBottleneck,
    assignment_logits,
    soft_index_bits,
    usage_pmf,
)


def test_soft_index_bits_by_hand() -> None:
    """Counts 3:1 -> pmf 0.75/0.25. Equidistant codes (d2 1, 1): q = pmf, bits = H(0.75) =
    0.8113. d2 (0, ln 3) at temperature 1, scale 1: q ~ (0.75, 0.25 / 3) = (0.9, 0.1), bits =
    0.9 * log2(4/3) + 0.1 * 2 = 0.5735."""
    pmf = usage_pmf(torch.tensor([3.0, 1.0]))
    assert pmf.tolist() == pytest.approx([0.75, 0.25])
    d2 = torch.tensor([[1.0, 1.0], [0.0, math.log(3.0)]], dtype=torch.float64)
    logits = assignment_logits(d2, pmf, temperature=1.0, scale=1.0)
    assert torch.softmax(logits, 1)[1].tolist() == pytest.approx([0.9, 0.1])
    bits = soft_index_bits(logits, pmf)
    h = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert bits.tolist() == pytest.approx([h, 0.9 * math.log2(4 / 3) + 0.2])


def test_vq_picks_the_popular_code_until_distance_outweighs_its_bits() -> None:
    """Codes at x = 0 and 1, used 3:1, temperature 1, scale 1: a latent takes code 0 while
    d2_0 - d2_1 < ln 3 (the bits saved, in nats): x = 0.6, 0.95 -> 0 (nearest: 1), x = 1.2 -> 1.
    Without the term (usage_weight 0) every one takes the nearest code."""
    z = torch.tensor([[0.6, 0.0], [0.95, 0.0], [1.2, 0.0]])
    for weight, expected in ((1.0, [0, 0, 1]), (0.0, [1, 1, 1])):
        vq = VQBottleneck(2, num_embeddings=2, kmeans_init=False, usage_weight=weight)
        vq.usage_temperature = 1.0
        codebook = vq.vq._codebook
        codebook.embed.zero_()
        codebook.embed[0, 1, 0] = 1.0
        codebook.cluster_size.copy_(torch.tensor([[3.0, 1.0]]))
        out = vq.eval()(Latent(z=z, mu=z))
        assert out.codes.tolist() == expected
        assert out.z[:, 0].tolist() == [float(c) for c in expected]  # the code, latent dims only
        if weight:  # rate loss: mean soft bits, logits -d2 + ln pmf
            d2 = torch.tensor([[0.36, 0.16], [0.9025, 0.0025], [1.44, 0.04]])
            q = torch.softmax(-d2 + torch.tensor([0.75, 0.25]).log(), 1)
            bits = -(q * torch.tensor([0.75, 0.25]).log2()).sum(1).mean()
            assert out.rate_loss.item() == pytest.approx(bits.item(), rel=1e-5)
        else:
            assert out.rate_loss.item() == 0.0
