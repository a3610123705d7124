"""MeaningModule: encoder -> bottleneck -> decoder, its losses and its semantic metrics."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.trainer.states import TrainerFn

from meaning_transform.baselines import baselines_of_splits, classical_metrics
from meaning_transform.containers import to_plain
from meaning_transform.data.context import check_context, context_input, split_batch
from meaning_transform.errors import ConfigError
from meaning_transform.grid import MeaningGrid
from meaning_transform.losses import CompositeLoss, LossContext
from meaning_transform.metrics import MeanVector, RateMeter, SemanticDrift
from meaning_transform.models.bottlenecks.base import Bottleneck, BottleneckOutput, Latent
from meaning_transform.models.bottlenecks.coding import CodingPart
from meaning_transform.models.bottlenecks.entropy import EntropyBottleneck, code_jointly
from meaning_transform.models.bottlenecks.vq import VQBottleneck
from meaning_transform.models.grid_path import GridPath, GridSteps
from meaning_transform.schema import FeatureSchema, Table
from meaning_transform.schema import table as schema_table
from meaning_transform.schema.layout import SchemaLayout

EVAL_STAGES = ("val", "test")
STAGES = ("train", *EVAL_STAGES)


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
        objective_beta: float | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            {
                "schema": to_plain(schema),
                "model": to_plain(model),
                "compression": to_plain(compression),
                "loss": to_plain(loss),
                "optimizer": to_plain(optimizer),
                "scheduler": to_plain(scheduler) or None,
                "seed": seed,
                "objective_beta": objective_beta,
            }
        )
        hp = self.hparams
        self.schema = FeatureSchema.from_config(hp.schema)
        if not self.schema.fitted:
            raise ValueError("MeaningModule needs a fitted schema (the DataModule fits it)")
        self.layout = SchemaLayout(self.schema)
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
        # per stage, the epoch's mean reported loss, loss terms and rate; the train loss weights
        names = ["loss", *self.loss_fn.names, "rate_bits"]
        self.train_losses, self.val_losses, self.test_losses = (MeanVector(names) for _ in STAGES)
        self.loss_weights = MeanVector([f"weight/{n}" for n in self.loss_fn.names])
        #: per eval stage, the classical baselines of its split (see ``classical_baselines``)
        self.classical: dict[str, dict[str, Any] | None] = {}
        self.run_config: dict[str, Any] | None = None  # the composed config, saved in checkpoints

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: Any,
        map_location: Any = "cpu",
        trusted_targets: Any = (),
        **_: Any,
    ) -> MeaningModule:
        """The model of a checkpoint, read weights-only and rebuilt only after every field of
        its hyperparameters has been checked (``model_loading``): a checkpoint is data, so the
        classes it names must be the project's own or in ``trusted_targets``."""
        from meaning_transform.model_loading import load_module

        return load_module(checkpoint_path, trusted_targets, map_location)

    # ------------------------------------------------------------------ core
    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        grid_steps: GridSteps | None = None,
    ) -> tuple[torch.Tensor, Latent, BottleneckOutput]:
        """Data tensor (and, with ``model.context``, the context [B, F + 1]) -> (decoder heads,
        latent, bottleneck output of all coded channels); ``grid_steps``: the grid path's
        ``steps()`` if the caller computed them (``_step`` does, once for the loss too)."""
        if hasattr(self.codec, "code_state"):  # codes the meaning grid itself (lossless)
            return self.codec.code_state(x, self.bottleneck, context)
        enc_in, ctx = self._encoder_input(x, context)
        latent = self.codec.encoder(enc_in)
        out = self.bottleneck(latent)
        z = out.z if ctx is None else torch.cat([out.z, ctx], dim=1)
        if self.grid is None:
            return self.codec.decoder(z), latent, out
        steps = self.grid.steps() if grid_steps is None else grid_steps
        g, grid_out = self.grid(x, steps)
        heads = self.grid.heads(g, self.codec.decoder(torch.cat([z, g], dim=1)), steps)
        return heads, latent, _with_grid(out, grid_out)

    def _encoder_input(
        self, x: torch.Tensor, context: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(encoder input, context's network input or None): the state in model-input layout,
        followed, with ``model.context``, by the previous state on the grid and the flag."""
        enc_in = self.layout.model_input(x)
        if context is None:
            return enc_in, None
        ctx = context_input(self.layout, self.context_grid, context)
        return torch.cat([enc_in, ctx], dim=1), ctx

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
        return self._loss_step(batch, self.loss_fn.weights(progress))

    def _loss_step(self, batch: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Forward and losses under the loss ``weights`` in effect: what ``compile=true``
        compiles (see compile_step.py), so its inputs are tensors only."""
        x, context = self.unpack(batch)
        steps = self.grid.steps() if self.grid is not None else None
        heads, latent, out = self(x, context, steps)
        ctx = LossContext(x, heads, latent, out, self.layout, self.grid, steps)
        total, reported, values, weights = self.loss_fn(ctx, weights)
        return total, reported, values, weights, heads, out

    def _progress(self, batch_idx: int) -> float:
        trainer = self._trainer
        if trainer is None:
            return 0.0
        batches = max(float(trainer.num_training_batches), 1.0)
        if not math.isfinite(batches):
            batches = 1.0
        return trainer.current_epoch + batch_idx / batches

    def _update_losses(self, stage: str, loss, values, rate_bits, n: int) -> None:  # noqa: ANN001
        row = torch.cat([loss.detach()[None], values.detach(), rate_bits.detach().mean()[None]])
        self._losses(stage).update(row, n)

    def _losses(self, stage: str) -> MeanVector:
        return getattr(self, f"{stage}_losses")

    def _logged_losses(self, stage: str) -> dict[str, torch.Tensor]:
        """The stage's epoch means under their metric names (and reset for the next epoch)."""
        means = self._losses(stage).compute()
        self._losses(stage).reset()
        if stage != "train":  # eval stages report an epoch-level rate from RateMeter instead
            means.pop("rate_bits")
        return {f"{stage}/{name}": value for name, value in means.items()}

    def on_train_epoch_start(self) -> None:
        """Start the epoch's means afresh."""
        self.train_losses.reset()
        self.loss_weights.reset()

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
        self._update_losses("train", reported, values, out.rate_bits, batch.shape[0])
        self.loss_weights.update(weights)  # mean over steps: annealed weights move
        if batch_idx == self.trainer.num_training_batches - 1:
            # Logged at the epoch's last batch, i.e. before validation, so callbacks that
            # record an epoch at validation end (and the checkpoints written then) see them.
            metrics = self._logged_losses("train")
            weights = self.loss_weights.compute()
            metrics.update({f"train/{name}": value for name, value in weights.items()})
            # torchmetrics synced the sums across ranks: no second reduction
            self.log_dict(metrics, sync_dist=False, on_step=True, on_epoch=False)
        return total

    def _eval_step(self, stage: str, batch: torch.Tensor) -> None:
        _, reported, values, _, heads, out = self._step(batch, float(self.current_epoch))
        x, _ = self.unpack(batch)
        self._update_losses(stage, reported, values, out.rate_bits, x.shape[0])
        self.drift[stage].update(x, self.layout.point_estimate(heads))
        grid_bits = out.grid_bits
        latent_bits = out.rate_bits if grid_bits is None else out.rate_bits - grid_bits
        self.rate[stage].update(latent_bits, out.codes, grid_bits)

    def _eval_start(self, stage: str) -> None:
        """Compute the stage's classical baselines once, from the DataModule the trainer has."""
        dm = self._trainer.datamodule if self._trainer is not None else None
        if stage not in self.classical and hasattr(dm, f"{stage}_agents"):
            self.classical[stage] = baselines_of_splits(dm, (stage,))

    def _eval_epoch_end(self, stage: str) -> None:
        metrics = self._logged_losses(stage)
        metrics.update({f"{stage}/{k}": v for k, v in self.drift[stage].compute().items()})
        metrics.update({f"{stage}/{k}": v for k, v in self.rate[stage].compute().items()})
        drift, bits = metrics[f"{stage}/drift"], metrics[f"{stage}/rate_bits"]
        beta = self.hparams.get("objective_beta")
        if beta is not None:  # 32 more bits per state must cut drift by beta to pay off
            metrics[f"{stage}/rate_drift"] = drift + float(beta) * bits / 32
        baselines = self.classical.get(stage)
        if baselines:
            for name, value in classical_metrics(baselines, float(drift), float(bits)).items():
                metrics[f"{stage}/{name}"] = torch.tensor(value)
        fixed = getattr(self.bottleneck, "fixed_rate_bits", None)
        if fixed is not None:
            metrics[f"{stage}/fixed_rate_bits"] = torch.tensor(float(fixed))
        if self.grid is not None:  # the grid step each feature has learned, in 2 x tolerance
            for name, k in self.grid.steps_in_tolerances(self.schema).items():
                metrics[f"{stage}/grid_k/{name}"] = torch.tensor(k)
        self.log_dict(metrics, sync_dist=False)  # torchmetrics already synced across ranks
        self.drift[stage].reset()
        self.rate[stage].reset()

    def on_validation_start(self) -> None:
        """Classical baselines of the validation split (once); while fitting, the grid
        channels' order-0 tables refitted to the weights about to be validated (their mixing
        weights chosen on this validation split, so every checkpoint carries its own)."""
        self._eval_start("val")
        dm = self._trainer.datamodule if self._trainer is not None else None
        fitting = self._trainer is not None and self._trainer.state.fn == TrainerFn.FITTING
        if self.grid is not None and fitting and hasattr(dm, "train_x") and len(dm.val_x):
            self.grid.fit_order0(dm.train_x.to(self.device), dm.val_x.to(self.device))

    def on_test_start(self) -> None:
        """Classical baselines of the test split (once)."""
        self._eval_start("test")

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
    def _state_by_state(self, what: str) -> None:
        """ValueError (one line) if the model reads more than the state itself."""
        if self.context is not None:
            raise ValueError(
                f"{what} takes each state on its own, but this model also reads the agent's "
                f"previous state (model.context={self.context}): code batches as the data module "
                "serves them with module.code, or a database with the codec"
            )

    @torch.no_grad()
    def encode(self, table: Table) -> torch.Tensor:
        """Table of agent states -> what the decoder sees: quantized latents, then (with the
        grid path) the grid-decoded state, [N, latent_dim (+ n_features)]. Not for a model with
        ``model.context`` (ValueError): it codes a state given the agent's previous one."""
        self._state_by_state("encode")
        self.eval()
        x = schema_table.encode(self.schema, table).to(self.device)
        z = self.bottleneck(self.codec.encoder(self.layout.model_input(x))).z
        return z if self.grid is None else torch.cat([z, self.grid(x)[0]], dim=1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> Table:
        """Codes (``encode``'s output) -> table of agent states in native units."""
        self._state_by_state("decode")
        self.eval()
        codes = codes.to(self.device)
        heads = self.codec.decoder(codes)
        if self.grid is not None:
            heads = self.grid.heads(codes[:, self.codec.latent_dim :], heads)
        return schema_table.decode(self.schema, self.layout.point_estimate(heads))

    @torch.no_grad()
    def code(self, x: torch.Tensor) -> dict[str, Any] | None:
        """Really code a batch (rows as batches come: with ``model.context``, state, previous
        state and flag) with ``constriction``: estimated vs coded bits.

        Codes the whole representation in one range-coded stream: the latent (entropy: under
        its prior; vq: the code indices under the codebook's usage table) and the grid channels;
        ``coded`` names the parts. None when nothing can be coded (none without a grid path).
        """
        self.eval()
        x = x.to(self.device)
        if hasattr(self.codec, "code_state"):  # lossless: code it as the codec command does
            from meaning_transform.codec.chunks import coding_report

            return coding_report(self, *self.unpack(x))
        x, context = self.unpack(x)  # with model.context the rows carry the previous state
        parts: dict[str, list[tuple[CodingPart, torch.Tensor]]] = {}
        if isinstance(self.bottleneck, EntropyBottleneck | VQBottleneck):
            latent = self.codec.encoder(self._encoder_input(x, context)[0])
            if isinstance(self.bottleneck, EntropyBottleneck):
                parts["latent"] = [(self.bottleneck, latent.mu)]
            else:
                codes = self.bottleneck(latent).codes.reshape(x.shape[0], -1)
                parts["vq indices"] = [(self.bottleneck.usage_coder(), codes)]
        if self.grid is not None:
            parts["grid"] = self.grid.coding_parts(x)
        if not parts:
            return None
        report = code_jointly([p for part in parts.values() for p in part])
        return {**asdict(report), "num_states": int(x.shape[0]), "coded": list(parts)}

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
    )
