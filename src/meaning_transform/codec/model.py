"""Which model codes a file's agent states, and how a reader gets the same one back.

Without a checkpoint (``coder=auto``, or ``adaptive``) no model at all: the adaptive coder
(``codec/adaptive.py``) learns integer counts while coding, given the tables restored before
the states; the header names the row contexts it read (``source: adaptive``).

Otherwise a file is coded by an integer coding model (``models/integer_export.py``: the same
integers on every machine) and names it by the SHA-256 of its bytes. The model comes from

- ``embedded``: carried in the file (its bytes count in the file size): the default, so a file
  decodes with nothing but the installed package;
- ``packaged``: shipped inside this package (``codec/packaged/``), named by hash, 0 bytes in
  the file;
- ``checkpoint``: exported again from a checkpoint the header names (``embed_model=false``;
  the checkpoint's hash is compared before anything is built from it).

``coder=fit`` fits a model on the database itself within a time budget (``fit_seconds``);
``coder=packaged`` takes the packaged one that gives the smallest whole file (``choose_model``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meaning_transform.checkpoint_reader import read_checkpoint
from meaning_transform.codec.bounded import CodecFileError
from meaning_transform.codec.sql_guard import quote
from meaning_transform.codec.states import FileModel, IntegerCoder
from meaning_transform.errors import CheckpointError, ConfigError, DataError
from meaning_transform.grid import MeaningGrid
from meaning_transform.model_loading import build_checked, checked_schema, load_weights
from meaning_transform.models.integer_export import export, export_encoder
from meaning_transform.models.integer_model import IntegerEncoder, IntegerModel
from meaning_transform.registry import Registry
from meaning_transform.schema import FeatureSchema

log = logging.getLogger("meaning_transform")

PACKAGED = Path(__file__).with_name("packaged")


def build_model(ckpt: dict[str, Any], where: str, trusted: Any = ()) -> Any:
    """A lossless MeaningModule from a checkpoint dict whose fields are checked first."""
    module = build_checked(ckpt.get("hyper_parameters"), where, Registry(trusted))
    if not hasattr(module.codec, "code_state"):
        raise CheckpointError(
            f"{where} is not a lossless model: train one with compression=lossless"
        )
    return load_weights(module, ckpt, where)


def read_model(path: str | Path) -> tuple[dict[str, Any], str]:
    """(checkpoint dict, its model hash) of a checkpoint file, nothing built."""
    ckpt = read_checkpoint(path)
    return ckpt, checkpoint_hash(ckpt, f"checkpoint {str(path)!r}")


def checkpoint_hash(ckpt: dict[str, Any], where: str) -> str:
    """SHA-256 of a checkpoint dict's hyperparameters and every tensor of its state dict."""
    hp, state = ckpt.get("hyper_parameters"), ckpt.get("state_dict")
    if not isinstance(hp, dict) or not isinstance(state, dict):
        raise CheckpointError(f"{where} holds no hyperparameters and state_dict")
    try:
        h = hashlib.sha256(json.dumps(hp, sort_keys=True, default=str).encode())
    except (TypeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{where}: hyperparameters are not plain data ({e})") from None
    for key in sorted(state, key=str):
        value = state[key]
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{where}: state_dict entry {str(key)[:60]!r} is not a tensor")
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class CodingModel:
    """What compress codes with: the integer model and encoder (None: the adaptive coder and
    the row contexts it reads), its schema, where it comes from."""

    model: IntegerModel | None
    encoder: IntegerEncoder | None
    schema: FeatureSchema
    source: str  # embedded | packaged | checkpoint | adaptive
    checkpoint: dict[str, str] | None = None  # sha256, path (source checkpoint)
    origin: str = ""  # how it was obtained, for the user
    sources: tuple[Any, ...] = ()  # the adaptive coder's row contexts (state_context.Source)
    anchors: tuple[str, ...] = ()  # its features whose first states agents' columns guess
    hints: tuple[Any, ...] = ()  # state_hints.Hint: other tables' values it guesses states from

    @property
    def context(self) -> str | None:
        """The integer model's ``model.context`` (the header's ``context``)."""
        return None if self.model is None else self.model.context

    def coder(self, con: sqlite3.Connection) -> Any:
        """The chunks' coder, its row contexts read from ``con``."""
        if self.model is None:
            from meaning_transform.codec.adaptive import AdaptiveCoder

            return AdaptiveCoder.reading(self.schema, con, self.sources, self.anchors, self.hints)
        return IntegerCoder(self.model, self.encoder)

    def blob(self) -> bytes:
        """The bytes the file carries as its model (empty unless embedded)."""
        return self.model.to_bytes() if self.model and self.source == "embedded" else b""

    @property
    def grid(self) -> MeaningGrid:
        """The meaning grid of its schema (k = 1)."""
        return MeaningGrid(self.schema, 1)

    def header(self) -> dict[str, Any]:
        """The file header's ``model`` entry."""
        if self.model is None:
            return {
                "source": self.source,
                "contexts": [s.name for s in self.sources],
                "anchors": list(self.anchors),
                "hints": [h.entry() for h in self.hints],
            }
        entry: dict[str, Any] = {"integer_sha256": self.model.sha256, "source": self.source}
        if self.checkpoint is not None:
            entry["checkpoint"] = self.checkpoint
        return entry

    def describe(self) -> str:
        """One phrase: which model, where it travels."""
        where = {
            "embedded": "in the file",
            "packaged": "in the package",
            "checkpoint": "by path",
            "adaptive": "nothing stored: counts learned while coding",
        }
        return f"{self.origin} ({where[self.source]})"


def from_module(module: Any, source: str, origin: str, checkpoint: Any = None) -> CodingModel:
    """The integer coding model (and encoder) of a trained lossless module."""
    return CodingModel(
        export(module.codec, module.bottleneck),
        export_encoder(module.codec, module.bottleneck),
        module.schema,
        source,
        checkpoint,
        origin,
    )


def from_checkpoint(path: str, trusted: Any, embed: bool) -> CodingModel:
    """The coding model of checkpoint ``path`` (embedded in the file, or named by path)."""
    ckpt, sha256 = read_model(path)
    module = build_model(ckpt, f"checkpoint {path!r}", trusted)
    reference = None if embed else {"sha256": sha256, "path": str(Path(path).resolve())}
    return from_module(
        module, "embedded" if embed else "checkpoint", f"checkpoint {path}", reference
    )


# ---------------------------------------------------------------------- packaged models
def packaged_models() -> list[dict[str, Any]]:
    """The models shipped with the package: ``index.json`` entries (name, sha256, schema,
    what it was fitted on), each with its decoder and encoder files beside it."""
    index = PACKAGED / "index.json"
    if not index.is_file():
        return []
    return json.loads(index.read_text())["models"]


def load_packaged(entry: dict[str, Any]) -> CodingModel:
    """A packaged model ready to code (its bytes are checked against the index's hash)."""
    data = (PACKAGED / f"{entry['sha256']}.mtim").read_bytes()
    model = IntegerModel.from_bytes(data)
    if model.sha256 != entry["sha256"]:
        raise DataError(f"packaged model {entry['name']} does not match its hash (reinstall)")
    encoder = IntegerEncoder.from_bytes((PACKAGED / f"{entry['sha256']}.mtie").read_bytes())
    schema = FeatureSchema.from_config(entry["schema"])
    return CodingModel(model, encoder, schema, "packaged", None, f"packaged model {entry['name']}")


def _packaged_by_hash(sha256: str) -> FileModel | None:
    for entry in packaged_models():
        if entry["sha256"] == sha256:
            coding = load_packaged(entry)
            return FileModel(coding.model, coding.schema, coding.grid)
    return None


# ---------------------------------------------------------------------- compress: which model
def choose_model(
    con: sqlite3.Connection,
    snapshot: str,
    name: str,
    ckpt_path: str | None,
    trusted: Any,
    choice: str,
    embed: bool,
    fit_seconds: float,
    tolerances: Any = (),
) -> CodingModel:
    """The model to code ``con``'s agent states with: the checkpoint's when given; else
    (``choice``) the adaptive coder (``auto``: no model, no training), one fitted on the
    database within ``fit_seconds``, or the packaged model that gives the smallest whole file
    (estimated by coding a sample with each). ``choice`` is one of ``config.CODERS`` (checked
    by ``compress`` before any work). ``tolerances``: the declared ones (tables with one give no
    row context)."""
    if ckpt_path:
        return from_checkpoint(ckpt_path, trusted, embed)
    if choice in ("auto", "adaptive"):
        return adaptive_model(con, snapshot, tolerances)
    if choice == "fit":
        if fit_seconds <= 0:
            raise ConfigError("coder=fit needs fit_seconds > 0 (or give ckpt_path=)")
        return fit_model(snapshot, name, fit_seconds)
    candidates = [c for c in map(load_packaged, packaged_models()) if _fits(con, c)]
    if not candidates:
        raise DataError(f"{name}: no packaged model codes this database's agent states")
    if len(candidates) == 1:
        return candidates[0]
    from meaning_transform.codec.estimate import total_bytes  # codes a sample with each

    sizes = [total_bytes(con, c) for c in candidates]
    best = int(np.argmin(sizes))
    log.info(
        "model: %s, %s",
        candidates[best].describe(),
        "; ".join(
            f"{c.describe()} ~{s:,.0f} bytes" for c, s in zip(candidates, sizes, strict=True)
        ),
    )
    return candidates[best]


def adaptive_model(con: sqlite3.Connection, snapshot: str, tolerances: Any) -> CodingModel:
    """The adaptive coder (``codec.adaptive``) with the schema fitted to the database and the
    row contexts it has."""
    from meaning_transform.codec.adaptive import anchor_columns, fitted_schema, usable_sources
    from meaning_transform.codec.source import layout_of
    from meaning_transform.codec.state_hints import find_hints

    declared = dict(tolerances or {})
    sources = usable_sources(con, declared)
    schema = fitted_schema(snapshot)
    coded = layout_of(con, snapshot, schema).features
    anchors = anchor_columns(con, schema, coded, declared)
    continuous = [f.name for f in schema.of_kind("continuous") if f.name in coded]
    hints = find_hints(con, MeaningGrid(schema, 1), continuous, set(declared))
    names = [s.name for s in sources] + [f"agents.{a}" for a in anchors]
    for table in sorted({h.table for h in hints}):
        count = sum(h.table == table for h in hints)
        names.append(f"{count} value{'s' * (count > 1)} of {table}")
    return CodingModel(
        None, None, schema, "adaptive", None,
        f"adaptive coder given {', '.join(names) or 'no other table'}", sources, anchors, hints,
    )  # fmt: skip


def _fits(con: sqlite3.Connection, coding: CodingModel) -> bool:
    """Whether the packaged model knows every feature and category of this database."""
    from meaning_transform.codec.source import AGENTS, STATES, layout_of

    try:
        layout = layout_of(con, "database", coding.schema)
    except DataError:
        return False
    for f in coding.schema.of_kind("categorical"):
        table = AGENTS if f.name in layout.agent_features else STATES
        column = quote(f.name)
        seen = con.execute(f"SELECT DISTINCT {column} FROM {table} WHERE {column} IS NOT NULL")
        if not {str(v) for (v,) in seen} <= set(f.categories or ()):
            return False
    return True


def _duration(seconds: float) -> str:
    """Lightning's ``max_time`` as DD:HH:MM:SS."""
    s = max(1, int(seconds))
    return f"{s // 86400:02d}:{s % 86400 // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def fit_checkpoint(snapshot: str, seconds: float, folder: str) -> tuple[str, Any]:
    """Train a lossless model with ``model.context=history`` on the database's agents for at
    most ``seconds`` (outputs in ``folder``); (its best checkpoint's path, epochs run)."""
    from meaning_transform.api import load_config
    from meaning_transform.training import run

    cfg = load_config(
        [
            "compression=lossless",
            "model.context=history",
            "data=sqlite",
            f"data.path={snapshot}",
            "data.drop_invalid=true",
            "data.batch_size=256",
            "trainer.max_epochs=1000",
            f"++trainer.max_time={_duration(seconds)}",
            "logger=none",
            "test=false",
            "callbacks.periodic_checkpoint.every_n_epochs=1000",
            "callbacks.curve_plotter.plot_every_n_epochs=1000",
            "experiment_name=codec_fit",
            f"paths.output_dir={folder}",
        ]
    )
    summary = run(cfg)
    return summary["best_model_path"], summary.get("epochs_run")


def fit_model(snapshot: str, name: str, seconds: float) -> CodingModel:
    """A lossless model with ``model.context=history`` fitted on the database's agents for at
    most ``seconds`` of training (the best epoch on its validation agents), as a coding model
    to embed."""
    with tempfile.TemporaryDirectory(prefix="mt-fit-") as folder:
        best, epochs = fit_checkpoint(snapshot, seconds, folder)
        ckpt, _ = read_model(best)
        module = build_model(ckpt, f"model fitted on {name}")
    return from_module(module, "embedded", f"model fitted on {Path(name).name} ({epochs} epochs)")


# ---------------------------------------------------------------------- decompress
def open_file_model(reader: Any, ckpt_path: str | None, trusted: Any = ()) -> FileModel:
    """The model a file was coded with: embedded, packaged (by hash) or exported again from
    its checkpoint (``ckpt_path``, default the recorded path; hash compared before anything
    is built). Refused unless its SHA-256 is the one the header records."""
    recorded = reader.header["model"]
    where = f"{reader.name}: header"
    source = recorded["source"]
    if source == "adaptive":
        from meaning_transform.codec.adaptive import anchors_of, sources_of
        from meaning_transform.codec.state_hints import hints_of

        schema = FeatureSchema.from_config(checked_schema(reader.header["schema"], where))
        sources = sources_of(recorded.get("contexts"), where)
        anchors = anchors_of(recorded.get("anchors", []), schema, where)
        continuous = {f.name for f in schema.of_kind("continuous")}
        hints = hints_of(recorded.get("hints", []), continuous, where)
        grid = MeaningGrid(schema, 1)
        file_model = FileModel(None, schema, grid, sources, anchors, hints)
        _check_header_fits(reader, file_model)
        return file_model
    if source == "embedded":
        model = IntegerModel.from_bytes(reader.model)
        schema = FeatureSchema.from_config(checked_schema(reader.header["schema"], where))
        file_model = FileModel(model, schema, MeaningGrid(schema, 1))
    elif source == "packaged":
        found = _packaged_by_hash(recorded["integer_sha256"])
        if found is None:
            raise CodecFileError(
                f"{reader.name} was coded with a packaged model this installation does not "
                f"have (SHA-256 {recorded['integer_sha256'][:12]}...): install the release "
                "that wrote it"
            )
        file_model = found
    else:
        file_model = _from_recorded_checkpoint(reader, ckpt_path, trusted)
    assert file_model.model is not None
    if file_model.model.sha256 != recorded["integer_sha256"]:
        raise CheckpointError(
            f"{reader.name} was coded with another integer model (SHA-256 "
            f"{recorded['integer_sha256'][:12]}...) than this one: the file is corrupted, or "
            "the model was exported on another machine (compress with embed_model=true)"
        )
    _check_header_fits(reader, file_model)
    return file_model


def _from_recorded_checkpoint(reader: Any, ckpt_path: str | None, trusted: Any) -> FileModel:
    recorded = reader.header["model"]["checkpoint"]
    path = ckpt_path or recorded["path"]
    if not Path(path).is_file():
        raise CheckpointError(
            f"{reader.name} was coded with model {path!r}, which does not exist: pass "
            "ckpt_path=<that checkpoint> (or compress with embed_model=true)"
        )
    ckpt, sha256 = read_model(path)
    if sha256 != recorded["sha256"]:
        raise CheckpointError(
            f"{reader.name} was coded with another model (SHA-256 {recorded['sha256'][:12]}...); "
            "decompress with the checkpoint it was compressed with"
        )
    module = build_model(ckpt, f"checkpoint {str(path)!r}", trusted)
    coding = from_module(module, "checkpoint", str(path))
    return FileModel(coding.model, coding.schema, coding.grid)


def _check_header_fits(reader: Any, file_model: FileModel) -> None:
    """CodecFileError unless the header's context and features agree with the model."""
    header, states = reader.header, reader.header["states"]
    names = [f.name for f in file_model.schema.features]
    coded = states["features"] + states["agent_features"]
    model = file_model.model
    if (
        header["context"] != (None if model is None else model.context)
        or (model is not None and model.num_features != len(names))
        or sorted(coded) != sorted(names)
    ):
        raise CodecFileError(f"{reader.name}: its header does not match the model's features")
