"""Semantic-drift report of a checkpoint on any dataset: a table on stdout and a JSON file.

``meaning-evaluate ckpt_path=PATH [split=val] [data=sqlite data.path=DB]`` (or
``python -m meaning_transform.evaluate ...``)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from meaning_transform.cli import HELP_FLAGS, compose_checked, config_help
from meaning_transform.config import instantiate_checked
from meaning_transform.errors import ConfigError
from meaning_transform.io import atomic_write, check_input, check_output

if TYPE_CHECKING:  # torch and Lightning are imported where used: bad arguments answer at once
    import torch

SPLITS = ("train", "val", "test", "all")
USAGE = """\
usage: meaning-evaluate ckpt_path=PATH [split=val|test|train|all] [data=sqlite data.path=DB]
       [output=REPORT.json]   (also: python -m meaning_transform.evaluate ...)
Prints the drift table and writes <run dir>/eval/<checkpoint>_<split>.json."""


def _data_config(data_cfg: Any, ckpt: dict[str, Any], path: str, trusted: Any) -> Any:
    """The user's ``data=...``, else the checkpoint's own data config, checked like any config
    read from a file (``registry``: known classes, plain values, file size limits)."""
    if data_cfg:
        return data_cfg
    run_config = ckpt.get("run_config")
    stored = run_config.get("data") if isinstance(run_config, dict) else None
    if not stored:
        raise ConfigError(f"checkpoint {path!r} holds no data config: pass data=... explicitly")
    from meaning_transform.registry import Registry

    return Registry(trusted).check("data", stored, f"checkpoint {path!r}: run_config.data")


def split_tensor(datamodule: Any, split: str) -> torch.Tensor:
    """The encoded states of one split (``all``: every split)."""
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is invalid: expected one of {SPLITS}")
    if split == "all":
        import torch

        return torch.cat([datamodule.train_x, datamodule.val_x, datamodule.test_x])
    return getattr(datamodule, f"{split}_x")


def evaluate_checkpoint(
    ckpt_path: str, data_cfg: Any = None, split: str = "val", trusted: Any = ()
) -> dict[str, Any]:
    """Drift (per feature, group, predicate), losses, rate and real coded size on one split;
    ``trusted``: classes beyond the project's own that the checkpoint may name."""
    from meaning_transform.checkpoint_reader import read_checkpoint

    ckpt = read_checkpoint(ckpt_path)  # a missing or bad file is reported before Lightning loads
    data = _data_config(data_cfg, ckpt, ckpt_path, trusted)
    import lightning as L

    from meaning_transform.baselines import baselines_of_splits
    from meaning_transform.console import quiet_libraries
    from meaning_transform.model_loading import load_module

    quiet_libraries()
    module = load_module(ckpt_path, trusted, ckpt=ckpt)
    datamodule = instantiate_checked(data, "data", schema=module.schema.to_dict())
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
    from meaning_transform.config import validate_config

    cfg = compose_checked("eval", overrides)
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise ConfigError("ckpt_path is required: ckpt_path=outputs/.../checkpoints/best.ckpt")
    validate_config(cfg)
    if cfg.split not in SPLITS:
        raise ConfigError(f"split={cfg.split!r} is invalid: expected one of {SPLITS}")
    return cfg


def _evaluate(argv: list[str]) -> str:
    if HELP_FLAGS & set(argv):
        return config_help("eval", USAGE)
    cfg = compose_eval_config(argv)
    ckpt = str(check_input(cfg.ckpt_path, "ckpt_path"))
    data = OmegaConf.select(cfg, "data.path", default=None)
    if cfg.output:  # the user's file: exclusive unless overwrite=true, never an input
        out = check_output(
            cfg.output, cfg.overwrite, {"ckpt_path": ckpt, "data.path": data}, "output"
        )
        exclusive = not cfg.overwrite
    else:  # the report's own place in the run's eval/ folder, replaced on a rerun
        out, exclusive = default_output(ckpt, cfg.split), False
    report = evaluate_checkpoint(ckpt, cfg.get("data"), cfg.split, list(cfg.trusted_targets))
    text = json.dumps(report, indent=2)
    atomic_write(out, lambda tmp: Path(tmp).write_text(text), exclusive=exclusive)
    return f"{format_report(report)}\nwrote {out}"


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: 0 ok, 2 bad input or a failed read/write, 130/143 interrupted."""
    from meaning_transform.entry import run_command

    return run_command(lambda: _evaluate(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
