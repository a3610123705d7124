"""MeaningModule: encoder -> bottleneck -> decoder, its losses and its semantic metrics."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from meaning_transform.data.context import check_context, context_input, split_batch
from meaning_transform.errors import ConfigError
from meaning_transform.grid import MeaningGrid
from meaning_transform.losses import CompositeLoss, LossContext
from meaning_transform.metrics import RateMeter, SemanticDrift
from meaning_transform.models.bottlenecks.base import Bottleneck, BottleneckOutput, Latent
from meaning_transform.models.grid_path import GridPath
from meaning_transform.schema import FeatureSchema, Table

EVAL_STAGES = ("val", "test")
FLUSH_ROWS = 256  # steps whose loss rows _accumulate keeps before summing them


def _plain(cfg: Any) -> Any:
    """DictConfig -> plain container (hyperparameters must be plain to be saved)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


class MeaningModule(L.LightningModule):
    """Learns a compact code of agent states that keeps their meaning.

    Every constructor argument is a plain config dict (saved as hyperparameters), so
    ``MeaningModule.load_from_checkpoint(path)`` rebuilds the model, bottleneck, losses and the
    fitted schema with no other argument.
    """

    def __init__(
        self,
        schema: Mapping[str, Any],
        model: Mapping[str, Any],
        compression: Mapping[str, Any],
        loss: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            {
                "schema": _plain(schema),
                "model": _plain(model),
                "compression": _plain(compression),
                "loss": _plain(loss),
                "optimizer": _plain(optimizer),
                "scheduler": _plain(scheduler) or None,
                "seed": seed,
            }
        )
        hp = self.hparams
        self.schema = FeatureSchema.from_config(hp.schema)
        if not self.schema.fitted:
            raise ValueError("MeaningModule needs a fitted schema (the DataModule fits it)")
        model_cfg = dict(hp.model)
        grid_cfg = dict(model_cfg.pop("grid_path", None) or {})
        self.grid: GridPath | None = None
        if grid_cfg.pop("enabled", False):
            level = hp.compression.get("level", 1.0)
            self.grid = GridPath(self.schema, level=level, **grid_cfg)
        # model.context=previous: batches carry the agent's previous state (data/context.py)
        self.context = check_context(model_cfg.get("context"))
        extra: dict[str, Any] = {}
        if getattr(get_class(model_cfg["_target_"]), "needs_schema", False):
            extra["schema"] = self.schema  # codecs that code the meaning grid themselves
        elif self.context == "history":
            raise ConfigError("model.context=history needs compression=lossless; use previous")
        elif self.context:
            extra["context_dim"] = self.schema.input_dim + 1
            self.context_grid = MeaningGrid(self.schema, 1)
        # partial: a schema object cannot go through OmegaConf
        self.codec = instantiate(model_cfg, _partial_=True)(
            input_dim=self.schema.input_dim,
            output_dim=self.schema.head_dim,
            grid_dim=len(self.schema.features) if self.grid is not None else 0,
            **extra,
        )
        self.bottleneck: Bottleneck = instantiate(hp.compression, latent_dim=self.codec.latent_dim)
        terms = {name: instantiate(t) for name, t in (hp.loss.get("terms") or {}).items()}
        self.loss_fn = CompositeLoss(terms)
        codebook = getattr(self.bottleneck, "codebook_size", 0)
        self.drift = torch.nn.ModuleDict({s: SemanticDrift(self.schema) for s in EVAL_STAGES})
        has_grid = self.grid is not None or hasattr(self.codec, "code_state")
        self.rate = torch.nn.ModuleDict({s: RateMeter(codebook, has_grid) for s in EVAL_STAGES})
        self._sums: dict[str, torch.Tensor] = {}  # per-stage running sums, see _accumulate
        self._rows: dict[str, list[tuple[torch.Tensor, int]]] = {}  # not yet summed
        self.run_config: dict[str, Any] | None = None  # the composed config, saved in checkpoints

    # ------------------------------------------------------------------ core
    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Latent, BottleneckOutput]:
        """Data tensor (and, with ``model.context``, the context [B, F + 1]) -> (decoder heads,
        latent, bottleneck output of all coded channels)."""
        if hasattr(self.codec, "code_state"):  # codes the meaning grid itself (lossless)
            return self.codec.code_state(x, self.bottleneck, context)
        enc_in = self.schema.model_input(x)
        ctx = None
        if context is not None:
            ctx = context_input(self.schema, self.context_grid, context)
            enc_in = torch.cat([enc_in, ctx], dim=1)
        latent = self.codec.encoder(enc_in)
        out = self.bottleneck(latent)
        z = out.z if ctx is None else torch.cat([out.z, ctx], dim=1)
        if self.grid is None:
            return self.codec.decoder(z), latent, out
        g, grid_out = self.grid(x)
        heads = self.grid.heads(g, self.codec.decoder(torch.cat([z, g], dim=1)))
        return heads, latent, _with_grid(out, grid_out)

    def unpack(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch -> (data tensor, context or None); see data/context.py."""
        if self.context is None:
            if batch.shape[1] != len(self.schema.features):
                raise ValueError(
                    f"batches of {batch.shape[1]} columns for a model without context: set "
                    "model.context (data.context follows it) instead of data.context alone"
                )
            return batch, None
        return split_batch(batch, len(self.schema.features), self.context)

    def _step(self, batch: torch.Tensor, progress: float) -> tuple[torch.Tensor, ...]:
        x, context = self.unpack(batch)
        heads, latent, out = self(x, context)
        ctx = LossContext(x, heads, latent, out, self.schema, progress, self.grid)
        total, reported, values, weights = self.loss_fn(ctx)
        return total, reported, values, weights, heads, out

    def _progress(self, batch_idx: int) -> float:
        trainer = self._trainer
        if trainer is None:
            return 0.0
        batches = max(float(trainer.num_training_batches), 1.0)
        if not math.isfinite(batches):
            batches = 1.0
        return trainer.current_epoch + batch_idx / batches

    def _accumulate(self, stage: str, loss, values, weights, rate_bits, n: int) -> None:
        # Summed on device and logged once per epoch: per-step self.log calls cost as much
        # as a small model's whole step. A step only stacks its row [loss, terms..., rate,
        # weights...] (one kernel); _flush sums FLUSH_ROWS rows at once in float64, as
        # [loss, terms..., rate] * n, weights..., n, steps.
        row = torch.cat(
            [loss.detach()[None], values.detach(), rate_bits.detach().mean()[None], weights]
        )
        rows = self._rows.setdefault(stage, [])
        rows.append((row, n))
        if len(rows) >= FLUSH_ROWS:
            self._flush(stage)

    def _flush(self, stage: str) -> None:
        rows = self._rows.pop(stage, None)
        if not rows:
            return
        k = len(self.loss_fn.names)
        stats = torch.stack([r for r, _ in rows]).double()  # float32 sums of 1000s of steps drift
        n = stats.new_tensor([m for _, m in rows])
        row = torch.cat(
            [
                (stats[:, : k + 2] * n[:, None]).sum(0),
                stats[:, k + 2 :].sum(0),
                n.sum()[None],
                stats.new_tensor([len(rows)]),
            ]
        )
        acc = self._sums.get(stage)
        self._sums[stage] = row if acc is None else acc + row

    def _log_sums(self, stage: str) -> None:
        self._flush(stage)
        acc = self._sums.pop(stage, None)
        if acc is None:
            return
        names = self.loss_fn.names
        k = len(names)
        means = acc[: k + 2] / acc[-2]
        weights = acc[k + 2 : 2 * k + 2] / acc[-1]  # mean over steps (annealed weights move)
        means, weights = means.float(), weights.float()
        metrics = {f"{stage}/loss": means[0]}
        metrics.update({f"{stage}/{name}": means[i + 1] for i, name in enumerate(names)})
        if stage == "train":  # eval stages log an epoch-level rate from RateMeter instead
            metrics["train/rate_bits"] = means[k + 1]
            metrics.update({f"train/weight/{n}": weights[i] for i, n in enumerate(names)})
        self.log_dict(metrics, sync_dist=True, on_step=stage == "train", on_epoch=stage != "train")

    def on_train_epoch_start(self) -> None:
        """Start the epoch's running sums afresh."""
        self._sums.pop("train", None)
        self._rows.pop("train", None)

    def on_train_batch_start(self, batch: torch.Tensor, batch_idx: int) -> None:
        """At an epoch's first batch, reseed from (seed, epoch, rank).

        A resumed run then replays exactly the randomness (dropout, noise, sampling) of an
        uninterrupted one. Done here, not at epoch start: Lightning creates the epoch's data
        iterator (which draws from the global RNG) at different points when resuming.
        """
        seed = self.hparams.seed
        if batch_idx == 0 and seed is not None:
            s = (int(seed) * 1_000_003 + self.current_epoch * 7919 + self.global_rank) % 2**31
            random.seed(s)
            np.random.seed(s)
            torch.manual_seed(s)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """One optimization step."""
        total, reported, values, weights, _, out = self._step(batch, self._progress(batch_idx))
        self._accumulate("train", reported, values, weights, out.rate_bits, batch.shape[0])
        if batch_idx == self.trainer.num_training_batches - 1:
            # Logged at the epoch's last batch, i.e. before validation, so callbacks that
            # record an epoch at validation end (and the checkpoints written then) see them.
            self._log_sums("train")
        return total

    def _eval_step(self, stage: str, batch: torch.Tensor) -> None:
        _, reported, values, weights, heads, out = self._step(batch, float(self.current_epoch))
        x, _ = self.unpack(batch)
        self._accumulate(stage, reported, values, weights, out.rate_bits, x.shape[0])
        self.drift[stage].update(x, self.schema.point_estimate(heads))
        grid_bits = out.grid_bits
        latent_bits = out.rate_bits if grid_bits is None else out.rate_bits - grid_bits
        self.rate[stage].update(latent_bits, out.codes, grid_bits)

    def _eval_epoch_end(self, stage: str) -> None:
        self._log_sums(stage)
        metrics = {f"{stage}/{k}": v for k, v in self.drift[stage].compute().items()}
        metrics.update({f"{stage}/{k}": v for k, v in self.rate[stage].compute().items()})
        fixed = getattr(self.bottleneck, "fixed_rate_bits", None)
        if fixed is not None:
            metrics[f"{stage}/fixed_rate_bits"] = torch.tensor(float(fixed))
        if self.grid is not None:  # the grid step each feature has learned, in 2 x tolerance
            for name, k in self.grid.steps_in_tolerances(self.schema).items():
                metrics[f"{stage}/grid_k/{name}"] = torch.tensor(k)
        self.log_dict(metrics, sync_dist=False)  # torchmetrics already synced across ranks
        self.drift[stage].reset()
        self.rate[stage].reset()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        """Accumulate validation losses, drift and rate."""
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        """Log ``val/*``."""
        self._eval_epoch_end("val")

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        """Accumulate test losses, drift and rate."""
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        """Log ``test/*``."""
        self._eval_epoch_end("test")

    def configure_optimizers(self) -> Any:
        """Optimizer and scheduler from their ``_partial_`` configs."""
        optimizer = instantiate(self.hparams.optimizer)(params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        scheduler = instantiate(self.hparams.scheduler)(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }

    def on_train_start(self) -> None:
        """After a resume, the configured scheduler settings win over the restored ones.

        E.g. cosine's ``T_max`` follows ``trainer.max_epochs``: resuming a 3-epoch run with
        ``trainer.max_epochs=6`` anneals to epoch 6 instead of restarting the cosine at 3.
        """
        wanted = {k: v for k, v in (self.hparams.scheduler or {}).items() if not k.startswith("_")}
        for cfg in self.trainer.lr_scheduler_configs:
            for key, value in wanted.items():
                if hasattr(cfg.scheduler, key) and getattr(cfg.scheduler, key) != value:
                    setattr(cfg.scheduler, key, value)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the composed run config beside the hyperparameters."""
        if self.run_config is not None:
            checkpoint["run_config"] = self.run_config

    # ------------------------------------------------------------------ table API
    @torch.no_grad()
    def encode(self, table: Table) -> torch.Tensor:
        """Table of agent states -> what the decoder sees: quantized latents, then (with the
        grid path) the grid-decoded state, [N, latent_dim (+ n_features)]."""
        self.eval()
        x = self.schema.encode(table).to(self.device)
        z = self.bottleneck(self.codec.encoder(self.schema.model_input(x))).z
        return z if self.grid is None else torch.cat([z, self.grid(x)[0]], dim=1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> Table:
        """Codes (``encode``'s output) -> table of agent states in native units."""
        self.eval()
        codes = codes.to(self.device)
        heads = self.codec.decoder(codes)
        if self.grid is not None:
            heads = self.grid.heads(codes[:, self.codec.latent_dim :], heads)
        return self.schema.decode(self.schema.point_estimate(heads))

    @torch.no_grad()
    def code(self, x: torch.Tensor) -> dict[str, Any] | None:
        """Really code a batch (data tensor) with ``constriction``: estimated vs coded bits.

        Codes the grid channels and, when its bottleneck can (entropy), the latent; ``coded``
        names the parts. None when nothing can be coded (vq or none without a grid path).
        """
        self.eval()
        x = x.to(self.device)
        if hasattr(self.codec, "code_state"):  # lossless: code it as the codec command does
            from meaning_transform.codec.chunks import coding_report

            return coding_report(self, *self.unpack(x))
        parts: dict[str, list[Any]] = {}
        latent = self.bottleneck.coding_report(self.codec.encoder(self.schema.model_input(x)).mu)
        if latent is not None:
            parts["latent"] = [latent]
        if self.grid is not None:
            parts["grid"] = self.grid.coding_report(x)
        if not parts:
            return None
        reports = [r for part in parts.values() for r in part]
        return {
            "num_states": int(x.shape[0]),
            "estimated_bits_per_state": sum(r.estimated_bits_per_state for r in reports),
            "coded_bits_per_state": sum(r.coded_bits_per_state for r in reports),
            "num_bytes": sum(r.num_bytes for r in reports),
            "exact": all(r.exact for r in reports),
            "coded": list(parts),
        }

    def reconstruct(self, table: Table) -> Table:
        """Encode then decode a table."""
        return self.decode(self.encode(table))


def _with_grid(out: BottleneckOutput, grid: BottleneckOutput) -> BottleneckOutput:
    """The learned bottleneck's output with the grid channels' rate and losses added."""
    return BottleneckOutput(
        z=out.z,
        rate_bits=out.rate_bits + grid.rate_bits,
        rate_loss=out.rate_loss + grid.rate_loss,
        aux_loss=out.aux_loss + grid.aux_loss,
        codes=out.codes,
        kl_scale=out.kl_scale,
        grid_bits=grid.rate_bits,
        stats=out.stats,
    )
