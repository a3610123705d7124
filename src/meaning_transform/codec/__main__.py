"""``python -m meaning_transform.codec compress|decompress|verify KEY=VALUE ...`` (conf/codec.yaml).

Bad input (a missing or foreign checkpoint, a missing database, an out= that exists or is a
folder, a truncated or corrupted file, another model's file) is one line on stderr and exit code
2, and leaves nothing on disk; a file that decodes but differs from the database (verify) exits 1.
"""

from __future__ import annotations

import sys

from meaning_transform.errors import ConfigError

COMMANDS = ("compress", "decompress", "verify")


def run(argv: list[str]) -> str:
    """Run one command; the line to print."""
    from meaning_transform.cli import HELP_FLAGS, compose_checked, config_help
    from meaning_transform.codec.arguments import USAGE, positional_overrides

    if HELP_FLAGS & set(argv):
        return config_help("codec", USAGE)
    if not argv or argv[0] not in COMMANDS:
        given = repr(argv[0]) if argv else "none"
        raise ConfigError(f"first argument must be one of {', '.join(COMMANDS)} (got {given})")
    from meaning_transform.config import validate_config

    cfg = compose_checked("codec", positional_overrides(argv[0], argv[1:]))
    validate_config(cfg)
    from meaning_transform.codec import commands

    src, trusted = cfg.get("in"), list(cfg.trusted_targets)
    if argv[0] == "compress":
        if not cfg.data.path:
            raise ConfigError("data.path= is required: the simulation.db to compress")
        s = commands.compress(
            cfg.ckpt_path,
            cfg.data.path,
            cfg.out,
            cfg.embed_model,
            cfg.chunk_size,
            cfg.overwrite,
            trusted,
        )
        n = max(s["states"], 1)
        return (
            f"compressed {s['states']:,} states into {cfg.out}: {s['bytes']:,} bytes = "
            f"{8 * s['bytes'] / n:.2f} bits/state (model estimate {s['estimated_bits'] / n:.2f} "
            f"for the coded states; {s['states'] / s['seconds']:,.0f} states/s)"
        )
    if argv[0] == "decompress":
        s = commands.decompress(src, cfg.out, cfg.ckpt_path, cfg.overwrite, trusted)
        return (
            f"restored {s['states']:,} states into {cfg.out} "
            f"({s['states'] / s['seconds']:,.0f} states/s)"
        )
    if not cfg.data.path:
        raise ConfigError("data.path= is required: the simulation.db to compare with")
    s = commands.verify(src, cfg.data.path, cfg.ckpt_path, trusted)
    worst = ", ".join(f"{k} {v:.2f}" for k, v in s["max_error_in_tolerances"].items())
    return (
        f"verified {s['states']:,} states: keys and other columns exact, NULLs kept, every "
        f"feature within tolerance (largest error in tolerances: {worst})"
    )


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: 0 ok, 1 verify found a difference, 2 bad input or a failed read/write,
    130/143 interrupted (``entry.run_command``)."""
    from meaning_transform.codec.commands import VerifyError
    from meaning_transform.entry import run_command

    return run_command(lambda: run(list(sys.argv[1:] if argv is None else argv)), {VerifyError: 1})


if __name__ == "__main__":
    sys.exit(main())
