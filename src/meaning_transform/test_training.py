"""Self-check of the installed package: ``python -m meaning_transform.test_training``.

Trains a tiny model on built-in synthetic data in a temporary folder, resumes it, and checks what
a run leaves behind; prints one line per check and exits 0 when every check passes, 1 otherwise.
(The seed document's name for this; the project's real tests are ``pytest`` in ``tests/``.)
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: a model and data small enough for a few seconds per stage on one CPU core
TINY = [
    "data.num_states=600",
    "data.num_agents=30",
    "model.hidden_dims=[32,16]",
    "model.latent_dim=4",
    "callbacks.progress_bar=null",
    "+trainer.enable_progress_bar=false",
    "logger=none",
    "torch_threads=1",
]
#: what every run directory must hold
OUTPUTS = (
    "config.yaml",
    "checkpoints/best.ckpt",
    "checkpoints/last.ckpt",
    "metrics.csv",
    "semantic_drift.csv",
    "training_curves.png",
    "semantic_drift.png",
    "summary.json",
)


def _fit(out: Path) -> dict[str, Any]:
    from meaning_transform.api import MeaningTrainer, load_config

    cfg = load_config([*TINY, "trainer.max_epochs=2", f"paths.output_dir={out}"])
    return MeaningTrainer(cfg).train()


def _resume(out: Path, last: str) -> dict[str, Any]:
    from meaning_transform.api import load_config
    from meaning_transform.training import run

    cfg = load_config([*TINY, "trainer.max_epochs=3", f"paths.output_dir={out}"])
    cfg.ckpt_path = last
    return run(cfg)


def run_checks(folder: Path, say: Callable[[str], None] = print) -> bool:
    """Run every check in ``folder``; ``say`` gets one line per check. True when all pass."""
    state: dict[str, Any] = {}

    def fit() -> str:
        s = state["fit"] = _fit(folder / "fit")
        assert s["epochs_run"] == 2, f"{s['epochs_run']} epochs run, expected 2"
        return f"2 epochs, val drift {s['drift']:.4f} at {s['rate_bits']:.1f} bits/state"

    def outputs() -> str:
        run_dir = Path(state["fit"]["experiment_dir"])
        missing = [name for name in OUTPUTS if not (run_dir / name).is_file()]
        assert not missing, f"missing in {run_dir}: {', '.join(missing)}"
        return f"{len(OUTPUTS)} files in {run_dir}"

    def resume() -> str:
        s = _resume(folder / "resume", state["fit"]["last_model_path"])
        epochs = [int(r["epoch"]) for r in s["history"]]
        assert s["epochs_run"] == 3, f"{s['epochs_run']} epochs run, expected 3"
        assert epochs == [1, 2, 3], f"history epochs {epochs}, expected [1, 2, 3]"
        return "continued from epoch 2 to 3, history kept"

    def reload() -> str:
        from meaning_transform.data.synthetic import generate_synthetic
        from meaning_transform.module import MeaningModule
        from meaning_transform.schema.table import encode

        module = MeaningModule.load_from_checkpoint(state["fit"]["best_model_path"])
        table = generate_synthetic(num_states=50, seed=1)
        decoded = module.reconstruct(table)
        assert len(next(iter(decoded.values()))) == 50, "decoded table has the wrong length"
        code = module.code(encode(module.schema, table))
        assert code is None or code["exact"], "coded states did not decode back exactly"
        coded = f"; coded 50 states in {code['num_bytes']} bytes, decoded exactly" if code else ""
        return f"best.ckpt loads with no other argument, decodes 50 states{coded}"

    ok = True
    for name, check in (("fit", fit), ("outputs", outputs), ("resume", resume), ("reload", reload)):
        start = time.perf_counter()
        try:
            detail = check()
        except Exception as e:  # noqa: BLE001 - a self-check reports every failure as a line
            ok = False
            say(f"FAIL {name:<8} {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            if name == "fit":
                break
            continue
        say(f"ok   {name:<8} {detail} ({time.perf_counter() - start:.1f}s)")
    return ok


def main(argv: list[str] | None = None) -> int:
    """Run the checks in a temporary folder (or ``--keep DIR``); 0 when all pass."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="run in this folder and keep what it writes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[%(name)s] %(message)s")
    for handler in logging.root.handlers:  # the runs' own INFO lines would bury the checks
        handler.setLevel(logging.WARNING)
    from meaning_transform.console import quiet_libraries

    quiet_libraries()
    if args.keep is not None:
        ok = run_checks(args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="meaning_transform_check_") as tmp:
            ok = run_checks(Path(tmp))
    print("all checks passed" if ok else "some checks failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
