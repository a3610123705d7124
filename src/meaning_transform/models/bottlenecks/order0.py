"""Order-0 tables mixed into a learned prior, so that it codes unseen agents no worse than them.

A learned density fitted by gradient descent on the training agents can code held-out agents
worse than the classical quantizer's order-0 table of the same training agents (measured on a
real run's held-out agents: 0.06-0.09 bits more on ``resource_level`` and ``age``, where it
spent 1-1.6 bits less on positions). Here each channel also gets that table -- counts of its
integers on the training split, every value between the smallest and the largest counted +1/2,
and 1/2 more for everything else (``baselines.Table``, the classical quantizer's own) -- and
codes under the mixture ``w * learned + (1 - w) * table``, with ``w`` per channel chosen on the
validation split (the test split never chooses). ``w`` in ``[MIN_WEIGHT, 1]`` includes the
learned part alone and all but 0.006 bits of the table alone, so on the validation split the
mixture is never worse than the better of the two by more than that; a value outside the
table's range takes the table's share of the escape mass (the coder's overflow bin).

The owner (:class:`~meaning_transform.models.bottlenecks.entropy.EntropyBottleneck`) mixes in
its eval forward and in its coding tables; training prices the learned part alone, so the
mixture changes no gradient.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

#: the least weight the learned prior keeps: a value the training split never held (another
#: run's agent type, a position past its grid) costs at most 8 bits more than under the learned
#: prior alone, never the floor's 30; where the table alone is best, this costs
#: -log2(1 - 1/256) = 0.006 bits per value
MIN_WEIGHT = 1 / 256
#: golden-section steps of the weight search: the bracket shrinks to 0.618**60 ~ 3e-13
SEARCH_STEPS = 60
_GOLDEN = (5**0.5 - 1) / 2


class OrderZeroMixture(nn.Module):
    """Per-channel order-0 tables over the integers ``lo[c] .. lo[c] + width - 1`` and the
    weight of the learned prior beside them (1: the table is unused, as before any fit).

    ``cover[c]`` > 0: channel c's table counts every integer ``lo[c] .. lo[c] + cover[c] - 1``
    +1/2 whether the training split held it or not (a binary or categorical feature's whole
    vocabulary, as the classical quantizer's tables do); otherwise the range its training
    values span.
    """

    def __init__(self, lo: torch.Tensor, width: int, cover: torch.Tensor | None = None) -> None:
        super().__init__()
        lo = torch.as_tensor(lo).long()
        if lo.dim() != 1 or width < 1:
            raise ValueError(f"order-0 tables need lo [D] and width >= 1, got {lo.shape}, {width}")
        cover = torch.zeros_like(lo) if cover is None else torch.as_tensor(cover).long()
        if cover.shape != lo.shape or (cover < 0).any() or (cover > width).any():
            raise ValueError(f"cover must be [D] integers in 0..{width}, got {cover}")
        self.register_buffer("lo", lo, persistent=False)  # from the schema: rebuilt, not saved
        self.register_buffer("cover", cover, persistent=False)
        self.register_buffer("probs", torch.zeros(len(lo), width, dtype=torch.float64))
        self.register_buffer("weight", torch.ones(len(lo), dtype=torch.float64))

    @property
    def active(self) -> torch.Tensor:
        """Channels whose table takes part (weight below 1), [D] bool."""
        return self.weight < 1

    def table_probability(self, offsets: torch.Tensor) -> torch.Tensor:
        """Table probability of integer ``offsets`` [B, D] (0 outside each table), float64."""
        index = offsets.double().t() - self.lo[:, None]  # [D, B]
        inside = index.clamp(0, self.probs.shape[1] - 1)
        p = self.probs.gather(1, inside.long())
        return p.masked_fill(inside != index, 0.0).t()

    def mix(self, learned: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """``w * learned + (1 - w) * table`` at ``offsets`` [B, D], in ``learned``'s dtype."""
        table = self.table_probability(offsets)
        return (self.weight * learned.double() + (1 - self.weight) * table).to(learned.dtype)

    def escape_mass(self) -> torch.Tensor:
        """Each table's mass outside its range, [D] float64."""
        return (1.0 - self.probs.sum(1)).clamp_min(0.0)

    def ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """Lowest and highest integer each active table gives mass to; inactive channels give
        an empty range (``lowest > highest``)."""
        has = (self.probs > 0) & self.active[:, None]
        cols = torch.arange(self.probs.shape[1], device=has.device)
        first = torch.where(has, cols, self.probs.shape[1]).amin(1)
        last = torch.where(has, cols, -1).amax(1)
        return (self.lo + first).cpu().numpy(), (self.lo + last).cpu().numpy()

    @torch.no_grad()
    def fit_tables(self, offsets: torch.Tensor) -> None:
        """Order-0 tables of integer ``offsets`` [N, D] (the training split); values outside a
        channel's ``width`` are left out of its counts. Weights are reset to 1."""
        # imported here: baselines pulls in the metrics (torchmetrics, scipy: ~1.4 s and
        # ~100 MB), which the codec commands that import the bottlenecks never need
        from meaning_transform.baselines import Table

        values = offsets.round().long().cpu().numpy()
        lo, cover, width = self.lo.cpu().numpy(), self.cover.cpu().numpy(), self.probs.shape[1]
        probs = np.zeros((len(lo), width))
        for c in range(len(lo)):
            v = values[:, c] - lo[c]
            v = v[(v >= 0) & (v < width)]
            if cover[c]:
                first, last = 0, int(cover[c]) - 1
                v = v[v <= last]
            elif len(v):
                first, last = int(v.min()), int(v.max())
            else:
                continue
            table = Table.fit(v, first, last)
            probs[c, first : last + 1] = table.probs[:-1]
        self.probs.copy_(torch.from_numpy(probs))
        self.weight.fill_(1.0)

    @torch.no_grad()
    def choose_weights(self, learned: torch.Tensor, offsets: torch.Tensor, floor: float) -> None:
        """Per channel, the weight that codes integer ``offsets`` [N, D] (the validation split)
        in the fewest bits, given the learned prior's probabilities ``learned`` [N, D] of them;
        every probability floored at ``floor`` as the owner's forward floors it.

        The bits are convex in the weight (a sum of ``-log`` of functions linear in it), so a
        golden-section search finds the minimum over ``[MIN_WEIGHT, 1]``; the ends are tried
        too.
        """
        a = learned.double()
        b = self.table_probability(offsets)

        def bits(w: torch.Tensor) -> torch.Tensor:  # [D] weights -> [D] total bits
            return -torch.log2((w * a + (1 - w) * b).clamp_min(floor)).sum(0)

        lo, hi = torch.full_like(self.weight, MIN_WEIGHT), torch.ones_like(self.weight)
        for _ in range(SEARCH_STEPS):
            left, right = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
            better_left = bits(left) <= bits(right)
            hi, lo = torch.where(better_left, right, hi), torch.where(better_left, lo, left)
        candidates = torch.stack([torch.ones_like(lo), torch.full_like(lo, MIN_WEIGHT), lo])
        cost = torch.stack([bits(w) for w in candidates])  # ties keep the learned prior alone
        self.weight.copy_(candidates.gather(0, cost.argmin(0, keepdim=True))[0])
