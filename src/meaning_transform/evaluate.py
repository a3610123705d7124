"""Semantic-drift report of a checkpoint on any dataset: a table on stdout and a JSON file.

``meaning-evaluate ckpt_path=PATH [split=val] [data=sqlite data.path=DB]`` (or
``python -m meaning_transform.evaluate ...``)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from meaning_transform.cli import HELP_FLAGS, compose_checked, config_help
from meaning_transform.config import instantiate_checked
from meaning_transform.errors import USER_ERRORS, ConfigError
from meaning_transform.io import atomic_write
from meaning_transform.messages import one_line

if TYPE_CHECKING:  # torch and Lightning are imported where used: bad arguments answer at once
    import torch

SPLITS = ("train", "val", "test", "all")
USAGE = """\
usage: meaning-evaluate ckpt_path=PATH [split=val|test|train|all] [data=sqlite data.path=DB]
       [output=REPORT.json]   (also: python -m meaning_transform.evaluate ...)
Prints the drift table and writes <run dir>/eval/<checkpoint>_<split>.json."""


def _data_config(data_cfg: Any, ckpt: dict[str, Any], path: str) -> Any:
    if data_cfg:
        return data_cfg
    stored = (ckpt.get("run_config") or {}).get("data")
    if not stored:
        raise ConfigError(f"checkpoint {path!r} holds no data config: pass data=... explicitly")
    return stored


def split_tensor(datamodule: Any, split: str) -> torch.Tensor:
    """The encoded states of one split (``all``: every split)."""
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is invalid: expected one of {SPLITS}")
    if split == "all":
        import torch

        return torch.cat([datamodule.train_x, datamodule.val_x, datamodule.test_x])
    return getattr(datamodule, f"{split}_x")


def evaluate_checkpoint(ckpt_path: str, data_cfg: Any = None, split: str = "val") -> dict[str, Any]:
    """Drift (per feature, group, predicate), losses, rate and real coded size on one split."""
    from meaning_transform.checkpoint_reader import read_checkpoint

    ckpt = read_checkpoint(ckpt_path)  # a missing or bad file is reported before Lightning loads
    import lightning as L

    from meaning_transform.baselines import baselines_of_splits
    from meaning_transform.console import quiet_libraries
    from meaning_transform.module import MeaningModule

    quiet_libraries()
    module = MeaningModule.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    datamodule = instantiate_checked(
        _data_config(data_cfg, ckpt, ckpt_path), "data", schema=module.schema.to_dict()
    )
    datamodule.context = module.context  # the model decides whether rows carry context
    datamodule.setup("validate")
    x = split_tensor(datamodule, split)
    if x.shape[0] == 0:
        raise ConfigError(f"split={split!r} has no states in this data")
    if module.context:
        import torch

        names = SPLITS[:-1] if split == "all" else (split,)
        x = torch.cat([datamodule.rows(s) for s in names])
    loader = datamodule._loader(x, datamodule.eval_batch_size)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    # the module logs where it stands against the classical codes of the rows it is shown
    parts = SPLITS[:-1] if split == "all" else (split,)  # the rows split_tensor gave
    module.classical["val"] = baselines_of_splits(datamodule, parts)
    metrics = trainer.validate(module, dataloaders=loader, verbose=False)[0]
    report: dict[str, Any] = {
        "checkpoint": str(Path(ckpt_path).resolve()),
        "epoch": int(ckpt.get("epoch", -1)) + 1,
        "split": split,
        "num_states": int(x.shape[0]),
        "metrics": {k.removeprefix("val/"): float(v) for k, v in metrics.items()},
    }
    report["coding"] = module.code(x)
    report["baselines"] = module.classical["val"]
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as a readable table."""
    from meaning_transform.baselines import describe as describe_baselines

    m = report["metrics"]
    lines = [
        f"checkpoint {report['checkpoint']} (epoch {report['epoch']}), split {report['split']}, "
        f"{report['num_states']} states",
        f"  drift {m['drift']:.4f}   preservation {m['preservation']:.4f}   "
        f"rate {m['rate_bits']:.2f} bits/state   loss {m['loss']:.4f}",
        "  group            drift",
    ]
    lines += [
        f"  {k.split('/', 1)[1]:<16} {v:.4f}" for k, v in m.items() if k.startswith("drift_group/")
    ]
    lines.append("  feature/predicate  drift   mean |error| (native units)")
    for k, v in m.items():
        if k.startswith("drift/"):
            name = k.split("/", 1)[1]
            mae = m.get(f"mae/{name}")
            lines.append(f"  {name:<18} {v:.4f}  {'' if mae is None else f'{mae:.4g}'}")
    c = report.get("coding")
    if c:
        lines.append(
            f"  coded ({' + '.join(c['coded'])}): {c['num_bytes']} bytes = "
            f"{c['coded_bits_per_state']:.2f} bits/state "
            f"(estimated {c['estimated_bits_per_state']:.2f}; exact round trip: {c['exact']})"
        )
    b = report.get("baselines")
    if b:
        lines.append(f"  {describe_baselines(b)} (tables fitted on the training split)")
        lines.append(
            "  classical quantizer by k: "
            + ", ".join(
                f"k={e['k']:g} {e['bits_per_state']:.1f} bits drift {e['drift']:.3f}"
                for e in b["quantizer"]
            )
        )
    return "\n".join(lines)


def default_output(ckpt_path: str, split: str) -> Path:
    """``<run dir>/eval/<checkpoint stem>_<split>.json``."""
    ckpt = Path(ckpt_path).resolve()
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return run_dir / "eval" / f"{ckpt.stem}_{split}.json"


def compose_eval_config(overrides: list[str]) -> DictConfig:
    """Compose ``conf/eval.yaml`` with command-line overrides (no run dir, no log file)."""
    cfg = compose_checked("eval", overrides)
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise ConfigError("ckpt_path is required: ckpt_path=outputs/.../checkpoints/best.ckpt")
    return cfg


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if HELP_FLAGS & set(argv):
            print(config_help("eval", USAGE))
            return 0
        cfg = compose_eval_config(argv)
        report = evaluate_checkpoint(str(cfg.ckpt_path), cfg.get("data"), cfg.split)
        out = Path(cfg.output) if cfg.output else default_output(str(cfg.ckpt_path), cfg.split)
        atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    except (*USER_ERRORS, HydraException) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    print(format_report(report))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
