"""Sweep report: one row per Hydra multirun job, a CSV and the rate-drift plot.

``python -m meaning_transform.report outputs/<experiment>/multirun/<timestamp>``
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter  # noqa: E402

from meaning_transform.io import atomic_write  # noqa: E402

#: one marker and colour per kind on the rate-drift plot
STYLES = {
    "entropy": ("o", "C0"),
    "vq": ("s", "C1"),
    "none": ("^", "C2"),
    "lossless": ("*", "C4"),
}
OTHER_STYLE = ("D", "C3")
#: the override key that separates repeats of one setting
SEED_KEY = "seed"
#: the kind of a job whose model codes the meaning grid losslessly (``compression=lossless``)
LOSSLESS_KIND = "lossless"
LOSSLESS_MODEL = "LosslessCodec"
#: the drifts at which the table gives each (kind, context)'s fewest bits: bits@1%, bits@5%
BITS_AT_DRIFTS = (0.01, 0.05)
#: columns every row has, in CSV order; override keys and per-group columns follow
BASE_COLUMNS = [
    "job",
    "status",
    "overrides",
    "kind",
    "level",
    "context",
    "rate_bits",
    "drift",
    "preservation",
    "best_val_loss",
    "best_epoch",
    "epochs_run",
    "wall_time_s",
    "error",
]
SUMMARY_CSV = "sweep_summary.csv"
RATE_DRIFT_PNG = "rate_drift.png"

Row = dict[str, Any]
Point = tuple[float, float]


class SweepReportError(ValueError):
    """The sweep directory is missing or holds no Hydra job directories."""


# ----------------------------------------------------------------------------- collecting


def job_dirs(sweep_dir: str | Path) -> list[Path]:
    """The job directories of a multirun (``0/``, ``1/``, ...), in job order."""
    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        raise SweepReportError(f"sweep directory not found: {sweep}")
    dirs = [
        p for p in sweep.iterdir() if p.is_dir() and (p.name.isdigit() or (p / ".hydra").is_dir())
    ]
    if not dirs:
        raise SweepReportError(
            f"no job directories (0/, 1/, ...) in {sweep}: expected a Hydra multirun directory "
            "such as outputs/<experiment_name>/multirun/<timestamp>"
        )
    return sorted(
        dirs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name)
    )


def override_key(override: str) -> str:
    """The config key an override sets: ``+model.width=8`` -> ``model.width``."""
    return override.split("=", 1)[0].lstrip("+~")


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(content, None), (None, None) when absent, or (None, reason) when unreadable."""
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return None, f"unreadable {path.name}: {e}"
    return (data, None) if isinstance(data, dict) else (None, f"{path.name} is not a JSON object")


def _read_overrides(job_dir: Path, failed: dict[str, Any] | None) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if path.is_file():
        loaded = yaml.safe_load(path.read_text())
        if isinstance(loaded, list):
            return [str(o) for o in loaded]
    return [str(o) for o in (failed or {}).get("overrides") or []]


def _job_config(job_dir: Path) -> dict[str, Any]:
    """The job's composed config as plain data ({} when absent or unreadable)."""
    path = job_dir / ".hydra" / "config.yaml"
    try:
        cfg = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _model_from_config(cfg: dict[str, Any]) -> tuple[str | None, bool]:
    """(model.context, whether the model is the lossless codec) from a composed config."""
    model = cfg.get("model") or {}
    if not isinstance(model, dict):
        return None, False
    context = model.get("context")
    lossless = str(model.get("_target_") or "").rsplit(".", 1)[-1] == LOSSLESS_MODEL
    return (None if context is None else str(context)), lossless


def _compression_from_config(cfg: dict[str, Any]) -> tuple[str | None, Any]:
    """(kind, level) from the job's composed config, for jobs that wrote no summary."""
    comp = cfg.get("compression") or {}
    if not isinstance(comp, dict):
        return None, None
    target = str(comp.get("_target_") or "")
    level = comp.get("level")
    if isinstance(level, str) and "${" in level:
        level = None
    return (kind_of(target) if target else None), level


def kind_of(target: str) -> str:
    """A bottleneck's ``_target_`` (or, in older summaries, its class name) -> the class's own
    ``kind`` (``entropy`` | ``vq`` | ``none``); the class name when the class is not one the
    packaged configs name or declares no kind of its own. A sweep folder is data: a name read
    from it is looked up, never imported."""
    from meaning_transform.models.bottlenecks.base import Bottleneck
    from meaning_transform.registry import packaged_targets

    name = target.rsplit(".", 1)[-1]
    if "." in target and target not in packaged_targets()["compression"]:
        return name  # a dotted path the project does not build: not imported
    cls = _bottleneck_classes(Bottleneck).get(name)
    kind = getattr(cls, "kind", "base")
    return name if kind == "base" else str(kind)


def _bottleneck_classes(base: type) -> dict[str, type]:
    """The project's bottleneck classes (and any imported subclass) by class name."""
    from meaning_transform.models.bottlenecks import entropy, identity, vq  # noqa: F401 - built-ins

    found, todo = {}, [base]
    while todo:
        for sub in todo.pop().__subclasses__():
            found[sub.__name__] = sub
            todo.append(sub)
    return found


def _wall_time(job_dir: Path, summary: dict[str, Any] | None) -> float | None:
    """``wall_time_s`` from the summary, else summary.json mtime minus .hydra/config.yaml mtime."""
    if summary is None:
        return None
    if summary.get("wall_time_s") is not None:
        return float(summary["wall_time_s"])
    start = job_dir / ".hydra" / "config.yaml"
    if not start.is_file():
        return None
    return round((job_dir / "summary.json").stat().st_mtime - start.stat().st_mtime, 3)


def _status(summary: dict[str, Any] | None, failed: dict[str, Any] | None) -> str:
    if failed is not None:
        return "failed"
    return "ok" if summary is not None else "incomplete"


def _metrics(summary: dict[str, Any]) -> Row:
    row: Row = {
        k: summary.get(k)
        for k in ("rate_bits", "drift", "preservation", "best_val_loss", "best_epoch", "epochs_run")
    }
    if summary.get("compression_kind"):
        row["kind"] = summary["compression_kind"]
    elif summary.get("compression"):
        row["kind"] = kind_of(str(summary["compression"]))
    if summary.get("compression_level") is not None:
        row["level"] = summary["compression_level"]
    for group, drift in sorted((summary.get("drift_groups") or {}).items()):
        row[f"drift/{group}"] = drift
        row[f"preservation/{group}"] = None if drift is None else 1.0 - float(drift)
    return row


def collect_job(job_dir: Path) -> Row:
    """One report row for one job directory."""
    summary, summary_err = _read_json(job_dir / "summary.json")
    failed, failed_err = _read_json(job_dir / "failed.json")
    if failed is None and failed_err is not None:
        failed = {"error": failed_err}
    overrides = _read_overrides(job_dir, failed)
    cfg = _job_config(job_dir)
    kind, level = _compression_from_config(cfg)
    context, lossless = _model_from_config(cfg)
    row: Row = dict.fromkeys(BASE_COLUMNS)
    error = (failed or {}).get("error") or summary_err
    row.update(
        job=int(job_dir.name) if job_dir.name.isdigit() else job_dir.name,
        status=_status(summary, failed),
        overrides=" ".join(overrides),
        kind=kind,
        level=level,
        context=context,
        error=None if error is None else str(error),
        wall_time_s=_wall_time(job_dir, summary),
    )
    if summary is not None:
        row.update(_metrics(summary))
    if lossless:  # its bottleneck is an entropy model, but what it codes is the whole grid
        row["kind"] = LOSSLESS_KIND
    for override in overrides:
        key = override_key(override)
        column = key if key not in row else f"override:{key}"  # never shadow a metric column
        row[column] = override.split("=", 1)[1] if "=" in override else None
    return row


def collect(sweep_dir: str | Path) -> list[Row]:
    """One row per job of a finished (or partly finished) Hydra multirun directory."""
    return [collect_job(d) for d in job_dirs(sweep_dir)]


# ----------------------------------------------------------------------------- CSV


def columns(rows: Sequence[Row]) -> list[str]:
    """CSV columns: the base columns, then override keys, then per-group drift/preservation."""
    seen = {k for r in rows for k in r}
    groups = sorted(k for k in seen if k.startswith(("drift/", "preservation/")))
    overrides = sorted(seen - set(BASE_COLUMNS) - set(groups))
    return BASE_COLUMNS + overrides + groups


def write_summary_csv(rows: Sequence[Row], path: str | Path) -> None:
    """Write the rows as CSV (atomically); empty cells for values a job does not have."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns(rows), restval="")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: "" if v is None else v for k, v in row.items()})

    atomic_write(path, write)


# ----------------------------------------------------------------------------- rate-drift plot


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """The distinct non-dominated (bits, drift) points, both minimized, sorted by bits."""
    front: list[Point] = []
    best_y = math.inf
    for x, y in sorted(set(points)):
        if y < best_y:
            front.append((x, y))
            best_y = y
    return front


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def group_seeds(rows: Sequence[Row]) -> list[Row]:
    """Finished jobs grouped by all overrides but ``seed``: mean and sample std of bits, drift."""
    groups: dict[tuple[str, ...], list[Row]] = {}
    for row in rows:
        if row["status"] != "ok" or not (_finite(row["rate_bits"]) and _finite(row["drift"])):
            continue
        parts = row["overrides"].split() if row["overrides"] else []
        key = tuple(sorted(o for o in parts if override_key(o) != SEED_KEY))
        groups.setdefault(key, []).append(row)
    out = []
    for key, members in groups.items():
        bits = [float(r["rate_bits"]) for r in members]
        drift = [float(r["drift"]) for r in members]
        out.append(
            {
                "overrides": " ".join(key),
                "kind": members[0]["kind"],
                "level": members[0]["level"],
                "jobs": [r["job"] for r in members],
                "n": len(members),
                "rate_bits": statistics.fmean(bits),
                "drift": statistics.fmean(drift),
                "rate_bits_std": _std(bits),
                "drift_std": _std(drift),
            }
        )
    return out


def _label(level: Any) -> str:
    return f"{level:g}" if _finite(level) else ("" if level is None else str(level))


def read_baselines(sweep_dir: str | Path) -> dict[str, Any] | None:
    """The classical baselines of the sweep's data: the first job summary that has them."""
    for job in job_dirs(sweep_dir):
        summary, _ = _read_json(job / "summary.json")
        if summary and summary.get("baselines"):
            return summary["baselines"]
    return None


def _plot_baselines(ax: Any, baselines: dict[str, Any]) -> list[float]:
    """Classical quantizer curve and per-agent delta points over k; their bits per state."""
    bits = []
    for key, label, style in (
        ("quantizer", "classical quantizer", "k-"),
        ("delta", "per-agent delta", "k:"),
    ):
        entries = [e for e in baselines.get(key) or [] if e.get("bits_per_state", 0) > 0]
        if not entries:
            continue
        xs, ys = [e["bits_per_state"] for e in entries], [e["drift"] for e in entries]
        marker = "x" if key == "quantizer" else "+"
        ax.plot(xs, ys, style, marker=marker, linewidth=1, label=f"{label} (k = grid coarseness)")
        for e in entries:
            ax.annotate(
                f"k={e['k']:g}",
                (e["bits_per_state"], e["drift"]),
                xytext=(3, -9),
                textcoords="offset points",
                fontsize=7,
                color="0.3",
            )
        bits += xs
    return bits


def plot_rate_drift(
    rows: Sequence[Row], path: str | Path, baselines: dict[str, Any] | None = None
) -> None:
    """Bits per state (log x) vs drift: a marker per kind, seed error bars, the Pareto front,
    and the classical baselines (quantizer curve, per-agent delta) when given."""
    points = group_seeds(rows)
    fig, ax = plt.subplots(figsize=(8.4, 4.6))
    baseline_bits = _plot_baselines(ax, baselines) if baselines else []
    for kind in sorted({str(p["kind"]) for p in points}):
        mine = [p for p in points if str(p["kind"]) == kind]
        marker, colour = STYLES.get(kind, OTHER_STYLE)
        ax.errorbar(
            [p["rate_bits"] for p in mine],
            [p["drift"] for p in mine],
            xerr=[p["rate_bits_std"] for p in mine],
            yerr=[p["drift_std"] for p in mine],
            fmt=marker,
            color=colour,
            capsize=3,
            label=kind,
        )
        for p in mine:
            ax.annotate(
                _label(p["level"]) + (f" (n={p['n']})" if p["n"] > 1 else ""),
                (p["rate_bits"], p["drift"]),
                xytext=(4, 4),
                textcoords="offset points",
                fontsize=8,
            )
    front = pareto_front([(p["rate_bits"], p["drift"]) for p in points])
    if len(front) > 1:
        ax.step(
            [x for x, _ in front],
            [y for _, y in front],
            where="post",
            color="0.4",
            linestyle="--",
            linewidth=1,
            label="Pareto front",
        )
    if not points:
        ax.text(
            0.5, 0.5, "no finished jobs to plot", ha="center", va="center", transform=ax.transAxes
        )
    elif all(p["rate_bits"] > 0 for p in points) and all(b > 0 for b in baseline_bits):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 1, 2, 5, 10, 20, 50
        ax.xaxis.set_major_formatter(ScalarFormatter())  # 20, not 2 x 10^1
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on a short axis
    else:  # a zero-rate code (e.g. collapsed VQ) has no place on a log axis
        ax.set_xscale("symlog", linthresh=1e-2)
    ax.set_xlabel("rate (bits per state)")
    ax.set_ylabel("semantic drift (0 = nothing lost)")
    ax.set_title("Rate-drift trade-off (labels: compression level, n seeds)")
    ax.grid(alpha=0.3, which="both")
    if points or baseline_bits:  # beside the axes: inside, it covers some sweep's points
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


# ----------------------------------------------------------------------------- table + CLI


def _fmt(v: Any, spec: str) -> str:
    return format(v, spec) if _finite(v) else "-"


def shared_overrides(rows: Sequence[Row]) -> list[str]:
    """Overrides every job has with the same value (the table shows them once, above it)."""
    if len(rows) < 2:
        return []
    sets = [set(r["overrides"].split()) for r in rows]
    return sorted(set.intersection(*sets), key=rows[0]["overrides"].split().index)


def _percent(drift: float) -> str:
    return f"{drift:.0%}"


def _kind_context(row: Row) -> tuple[str, str]:
    """(kind, model.context as the config spells it: ``null`` for none)."""
    context = row.get("context")
    return str(row["kind"]), "null" if context is None else str(context)


def bits_at_drift(rows: Sequence[Row]) -> list[Row]:
    """Per (kind, model.context) of the finished lossy jobs: the fewest bits per state among
    jobs with drift <= each of BITS_AT_DRIFTS (None if none), and each over the lossless jobs'
    fewest bits at drift 0 (``lossless_bits``; None without such a job in the sweep)."""
    done = [r for r in rows if r["status"] == "ok" and _finite(r["rate_bits"])]
    done = [r for r in done if _finite(r["drift"])]
    exact = [float(r["rate_bits"]) for r in done if r["kind"] == LOSSLESS_KIND and r["drift"] == 0]
    lossless = min(exact) if exact else None
    out = []
    keys = {_kind_context(r) for r in done if r["kind"] != LOSSLESS_KIND}
    for kind, context in sorted(keys):
        mine = [r for r in done if _kind_context(r) == (kind, context)]
        entry: Row = {"kind": kind, "context": context, "lossless_bits": lossless}
        for drift in BITS_AT_DRIFTS:
            good = [float(r["rate_bits"]) for r in mine if float(r["drift"]) <= drift]
            bits = min(good) if good else None
            entry[f"bits@{_percent(drift)}"] = bits
            ratio = bits / lossless if bits is not None and lossless else None
            entry[f"/lossless@{_percent(drift)}"] = ratio
        out.append(entry)
    return out


def format_bits_at_drift(entries: Sequence[Row]) -> list[str]:
    """Lines of a table: kind, context, bits@1%, bits@5%, lossless bits, the ratios."""
    if not entries:
        return []
    names = [f"bits@{_percent(d)}" for d in BITS_AT_DRIFTS]
    ratios = [f"/lossless@{_percent(d)}" for d in BITS_AT_DRIFTS]
    head = f"{'kind':<10} {'context':<9}" + "".join(f" {n:>13}" for n in names)
    head += f" {'lossless@0':>10}" + "".join(f" {n:>13}" for n in ratios)
    lines = ["", "fewest bits/state at drift <= 1% and <= 5%, beside the lossless code at drift 0:"]
    lines += [head, "-" * len(head)]
    for e in entries:
        line = f"{e['kind']:<10} {e['context']:<9}"
        line += "".join(f" {_fmt(e[n], '.2f'):>13}" for n in names)
        line += f" {_fmt(e['lossless_bits'], '.2f'):>10}"
        line += "".join(f" {_fmt(e[n], '.3f'):>13}" for n in ratios)
        lines.append(line)
    return lines


def format_table(rows: Sequence[Row]) -> str:
    """A compact text table: job, overrides, status, bits/state, drift, best val loss."""
    shared = shared_overrides(rows)
    varying = [" ".join(o for o in r["overrides"].split() if o not in shared) for r in rows]
    width = min(max([len("overrides")] + [len(v) for v in varying]), 60)
    head = (
        f"{'job':>4}  {'overrides':<{width}}  {'status':<10} "
        f"{'bits/state':>10} {'drift':>7} {'best val loss':>13}"
    )
    lines = [f"all jobs: {' '.join(shared)}"] if shared else []
    lines += [head, "-" * len(head)]
    for r, ov in zip(rows, varying, strict=True):
        ov = ov if len(ov) <= width else ov[: width - 3] + "..."
        lines.append(
            f"{r['job']!s:>4}  {ov:<{width}}  {r['status']:<10} {_fmt(r['rate_bits'], '.2f'):>10} "
            f"{_fmt(r['drift'], '.4f'):>7} {_fmt(r['best_val_loss'], '.4f'):>13}"
        )
    for r in rows:
        if r["status"] == "failed":
            first = (r["error"] or "no error message").strip().splitlines() or [""]
            lines.append(f"job {r['job']} failed: {first[0]}")
    return "\n".join(lines + format_bits_at_drift(bits_at_drift(rows)))


def write_report(sweep_dir: str | Path) -> list[Row]:
    """Collect the sweep and write ``sweep_summary.csv`` and ``rate_drift.png`` into it."""
    sweep = Path(sweep_dir)
    rows = collect(sweep)
    write_summary_csv(rows, sweep / SUMMARY_CSV)
    plot_rate_drift(rows, sweep / RATE_DRIFT_PNG, read_baselines(sweep))
    return rows


def build_report(sweep_dir: str | Path) -> list[Row]:
    """``write_report`` and print a compact table of the jobs."""
    sweep = Path(sweep_dir)
    rows = write_report(sweep)
    print(format_table(rows))
    print(f"wrote {sweep / SUMMARY_CSV} and {sweep / RATE_DRIFT_PNG}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: report on one multirun directory; a bad directory is one line on stderr, exit 2."""
    parser = argparse.ArgumentParser(
        prog="python -m meaning_transform.report",
        description="Summarize a Hydra multirun: sweep_summary.csv, rate_drift.png and a table.",
    )
    parser.add_argument(
        "sweep_dir", type=Path, help="outputs/<experiment_name>/multirun/<timestamp>"
    )
    args = parser.parse_args(argv)
    try:
        build_report(args.sweep_dir)
    except SweepReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
