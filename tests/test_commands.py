"""The console commands' arguments: codec paths by position, --help of each command."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

from meaning_transform.cli import compose_checked
from meaning_transform.codec.__main__ import main as codec_main
from meaning_transform.codec.__main__ import parse as codec_parse
from meaning_transform.codec.arguments import hydra_quoted, positional_overrides
from meaning_transform.errors import ConfigError
from meaning_transform.evaluate import main as evaluate_main


@pytest.mark.parametrize(
    ("command", "args", "expected"),
    [
        ("compress", ["run.db", "run.mtc"], ["data.path='run.db'", "out='run.mtc'"]),
        ("decompress", ["run.mtc", "back.db"], ["in='run.mtc'", "out='back.db'"]),
        ("verify", ["run.mtc", "run.db"], ["in='run.mtc'", "data.path='run.db'"]),
        # key=value stays an override wherever it is; paths fill the keys in order
        (
            "compress",
            ["ckpt_path=m.ckpt", "run.db", "overwrite=true", "run.mtc"],
            ["ckpt_path=m.ckpt", "data.path='run.db'", "overwrite=true", "out='run.mtc'"],
        ),
        ("compress", ["run.db", "out=x.mtc"], ["data.path='run.db'", "out=x.mtc"]),
        ("verify", ["in=a.mtc", "data.path=b.db"], ["in=a.mtc", "data.path=b.db"]),
    ],
)
def test_positional_paths_become_the_overrides_their_position_names(command, args, expected):
    assert positional_overrides(command, args) == expected


def test_too_many_paths_or_a_key_given_twice_is_one_line():
    with pytest.raises(ConfigError, match=r"compress takes at most 2 paths .* got 3: a b c"):
        positional_overrides("compress", ["a", "b", "c"])
    with pytest.raises(ConfigError, match=r"out is given twice: as 'b.mtc' and as out="):
        positional_overrides("compress", ["out=x.mtc", "a.db", "b.mtc"])


@pytest.mark.parametrize(
    "path", ["run.db", "my run.db", "it's.db", "a,b=c.db", "${x}.db", "a[1].db", "d\\", "e\\'f"]
)
def test_any_path_composes_to_itself(path):
    cfg = compose_checked("codec", [f"data.path={hydra_quoted(path)}"])
    assert cfg.data.path == path


@pytest.mark.parametrize("coder", ["auto", "adaptive", "packaged", "fit"])
def test_every_coder_composes_from_the_command_line(coder):
    """``coder=`` is a plain key (``model=`` would be the training configs' model group)."""
    assert codec_parse(["compress", "run.db", "run.mtc", f"coder={coder}"]).coder == coder


def test_an_unknown_coder_is_one_line_before_anything_is_read(capsys, tmp_path):
    args = ["compress", str(tmp_path / "none.db"), str(tmp_path / "o.mtc"), "coder=neural"]
    assert codec_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: coder='neural' is invalid") and err.count("\n") == 1, err


def test_codec_and_evaluate_help_list_their_groups_and_keys(capsys):
    assert codec_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: meaning-codec compress DB OUT")
    assert "== codec.yaml: override any key with key=value ==" in out and "embed_model:" in out
    assert evaluate_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: meaning-evaluate ckpt_path=PATH")
    assert "data: sqlite, synthetic" in out and "split: val" in out


def test_train_help_lists_the_config_groups_without_training(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("meaning-train (or python train.py)")
    assert "logger: csv, mlflow, none, tensorboard" in proc.stdout
    assert not any(tmp_path.iterdir())  # nothing written
