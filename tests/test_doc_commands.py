"""Every command in README.md and docs/*.md names a program that exists, with arguments it takes.

The commands are not executed (each is minutes of training, a sweep, or a benchmark on the shared
databases; see ``doc_blocks``); they are checked the way the command itself checks its command
line before any work: Hydra overrides composed against the packaged configs and their values
validated (``cli.check_args``, ``evaluate.compose_eval_config``, ``codec.__main__.parse``), in
this process, without torch. A renamed option, a removed config group or a script flag that is
gone fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from doc_blocks import REPO, commands
from hydra.core.global_hydra import GlobalHydra

from meaning_transform.cli import HELP_FLAGS, check_args
from meaning_transform.codec.__main__ import parse as parse_codec
from meaning_transform.codec.arguments import POSITIONAL, positional_overrides
from meaning_transform.errors import ConfigError
from meaning_transform.evaluate import compose_eval_config

#: programs that are not this project's: installers, the linter, MLflow's own UI. Their
#: arguments are theirs to check.
OTHER_TOOLS = {"pip", "ruff", "mlflow", "git"}
#: keys whose value is a file the command reads
READS = ("ckpt_path", "init_from", "in", "data.path")
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*")


def program(argv: list[str]) -> tuple[str, list[str]]:
    """(what runs, its arguments): ``train``, ``eval``, ``codec``, ``module:<name>``,
    ``file:<path>`` or a bare program name; environment assignments in front are dropped."""
    while argv and _ENV.fullmatch(argv[0]):
        argv = argv[1:]
    head, rest = argv[0], argv[1:]
    if re.fullmatch(r"(\S*/)?python3?", head):
        head, rest = (f"module:{rest[1]}", rest[2:]) if rest[0] == "-m" else (rest[0], rest[1:])
    elif head == "bash":
        head, rest = rest[0], rest[1:]
    aliases = {
        "train.py": "train",
        "meaning-train": "train",
        "module:meaning_transform.train": "train",
        "meaning-evaluate": "eval",
        "module:meaning_transform.evaluate": "eval",
        "meaning-codec": "codec",
        "module:meaning_transform.codec": "codec",
    }
    if head in aliases:
        return aliases[head], rest
    return (f"file:{head}" if head.endswith((".py", ".sh")) else head), rest


def provide_inputs(kind: str, args: list[str]) -> None:
    """Create (empty) the files the command reads, relative to the current folder: a command
    is checked as if the checkpoint, database or ``.mtc`` file it names were there."""
    named = args
    if kind == "codec" and args and args[0] in POSITIONAL:
        named = positional_overrides(args[0], args[1:])
    for arg in named:
        key, _, value = arg.partition("=")
        value = value.strip("'")
        if key in READS and value and not Path(value).is_absolute():
            Path(value).parent.mkdir(parents=True, exist_ok=True)
            Path(value).touch()


def check(argv: list[str]) -> None:
    """AssertionError, ConfigError or a missing file unless ``argv`` would start (run it in an
    empty folder: its input files are created there)."""
    kind, args = program(argv)
    provide_inputs(kind, args)
    try:
        if HELP_FLAGS & set(args):
            assert kind in ("train", "eval", "codec"), f"{kind} has no --help here"
        elif kind == "train":
            check_args(args)
        elif kind == "eval":
            compose_eval_config(args)
        elif kind == "codec":
            parse_codec(args)
        elif kind == "module:meaning_transform.report":
            assert len(args) == 1, "report takes the sweep folder"
        elif kind.startswith("module:"):
            name = kind.split(":", 1)[1]
            module = REPO / "src" / f"{name.replace('.', '/')}.py"
            assert name == "pytest" or module.is_file(), f"no module {name}"
        elif kind.startswith("file:"):
            source = (REPO / kind.split(":", 1)[1]).read_text()
            for flag in (a.split("=", 1)[0] for a in args if a.startswith("--")):
                assert f'"{flag}"' in source, f"{kind} defines no {flag}"
        else:
            assert kind.rsplit("/", 1)[-1] in OTHER_TOOLS, f"unknown program {kind}"
    finally:
        GlobalHydra.instance().clear()


COMMANDS = list({tuple(argv): (doc, argv) for doc, argv in commands()}.values())  # once each


def test_the_docs_have_commands():
    docs = {doc for doc, _ in COMMANDS}
    assert {"README.md", "training.md", "codec.md", "scaling.md"} <= docs
    assert len(COMMANDS) > 20


@pytest.mark.parametrize(
    "argv", [argv for _, argv in COMMANDS], ids=[f"{d}:{' '.join(a)[:60]}" for d, a in COMMANDS]
)
def test_doc_command_is_accepted(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check(argv)


@pytest.mark.parametrize(
    ("argv", "error", "says"),
    [
        (["python", "train.py", "data.batchsize=64"], ConfigError, "batchsize"),
        (["meaning-train", "compression=foo"], ConfigError, "foo"),
        (["meaning-codec", "squeeze", "run.db"], ConfigError, "compress, decompress, verify"),
        (["meaning-evaluate", "split=val"], ConfigError, "ckpt_path is required"),
        (["meaning-evaluate", "ckpt_path=/no/such.ckpt"], ConfigError, "no such checkpoint"),
        (["python", "benchmarks/codec.py", "--no-such-flag"], AssertionError, "--no-such-flag"),
        (["python", "-m", "meaning_transform.nothing"], AssertionError, "no module"),
        (["rm", "-rf", "x"], AssertionError, "unknown program rm"),
    ],
)
def test_a_broken_command_is_caught(argv, error, says, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=re.escape(says)):
        check(argv)
