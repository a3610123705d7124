"""``python -m meaning_transform.codec compress|decompress|verify KEY=VALUE ...`` (conf/codec.yaml).

Bad input (a missing or foreign checkpoint, a missing database, an out= that exists or is a
folder, a truncated or corrupted file, another model's file) is one line on stderr and exit code
2, and leaves nothing on disk; a file that decodes but differs from the database (verify) exits 1.
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf

from meaning_transform.errors import ConfigError

COMMANDS = ("compress", "decompress", "verify")


def parse(argv: list[str]) -> DictConfig:
    """The composed and checked config of a command line (not ``--help``); ConfigError (one
    line) for a bad one. Nothing is read or written."""
    from meaning_transform.cli import compose_checked
    from meaning_transform.codec.arguments import positional_overrides
    from meaning_transform.config import validate_config

    if not argv or argv[0] not in COMMANDS:
        given = repr(argv[0]) if argv else "none"
        raise ConfigError(f"first argument must be one of {', '.join(COMMANDS)} (got {given})")
    cfg = compose_checked("codec", positional_overrides(argv[0], argv[1:]))
    validate_config(cfg)
    return cfg


def run(argv: list[str]) -> str:
    """Run one command; the line to print."""
    from meaning_transform.cli import HELP_FLAGS, config_help
    from meaning_transform.codec.arguments import USAGE

    if HELP_FLAGS & set(argv):
        return config_help("codec", USAGE)
    cfg = parse(argv)
    from meaning_transform.codec import commands

    src, trusted = cfg.get("in"), list(cfg.trusted_targets)
    if argv[0] == "compress":
        if not cfg.data.path:
            raise ConfigError("data.path= is required: the simulation.db to compress")
        s = commands.compress(
            cfg.data.path,
            cfg.out,
            cfg.ckpt_path,
            cfg.embed_model,
            cfg.chunk_size,
            cfg.overwrite,
            trusted,
            OmegaConf.to_container(cfg.tolerances),
            cfg.coder,
            cfg.fit_seconds,
        )
        return compress_report(cfg.out, s)
    if argv[0] == "decompress":
        s = commands.decompress(src, cfg.out, cfg.ckpt_path, cfg.overwrite, trusted)
        tables = len(s["rows"])
        return (
            f"restored {tables} tables into {cfg.out}: {sum(s['rows'].values()):,} rows, "
            f"{s['states']:,} agent states ({s['states'] / max(s['seconds'], 1e-9):,.0f} states/s)"
        )
    if not cfg.data.path:
        raise ConfigError("data.path= is required: the simulation.db to compare with")
    s = commands.verify(src, cfg.data.path, cfg.ckpt_path, trusted)
    loose = ", ".join(sorted(s["tolerances"])) or "none"
    return (
        f"verified {len(s['rows'])} tables, {sum(s['rows'].values()):,} rows: every value "
        f"exact, storage class included, except within tolerance: {loose}"
    )


def compress_report(out: str, s: dict) -> str:
    """What compress prints: the file, its size per state, by table, and the model."""
    n = max(s["states"], 1)
    per_table = ", ".join(
        f"{t} {8 * b / n:.2f}" for t, b in sorted(s["table_bytes"].items(), key=lambda x: -x[1])
    )
    return (
        f"compressed {s['source_bytes']:,} bytes ({s['states']:,} agent states) into {out}: "
        f"{s['bytes']:,} bytes = {8 * s['bytes'] / n:.2f} bits per agent state "
        f"({s['source_bytes'] / s['bytes']:.1f}x smaller) in {s['seconds']:.1f} s\n"
        f"  model: {s['model']}, {s['model_bytes']:,} bytes in the file\n"
        f"  bits per agent state by table: {per_table}"
    )


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: 0 ok, 1 verify found a difference, 2 bad input or a failed read/write,
    130/143 interrupted (``entry.run_command``)."""
    from meaning_transform.codec.commands import VerifyError
    from meaning_transform.entry import run_command

    return run_command(lambda: run(list(sys.argv[1:] if argv is None else argv)), {VerifyError: 1})


if __name__ == "__main__":
    sys.exit(main())
