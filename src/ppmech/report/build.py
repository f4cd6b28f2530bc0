"""``build_report``: inputs on disk → figures → one self-contained HTML file (and PNGs).

Data flows one way: the inputs are read (never written), the figures are built
in memory, and only then is anything written, atomically through
:mod:`ppmech.artifacts`, so a failed report leaves no partial HTML behind.

The page's sections, in order, each drawn by its module of :mod:`ppmech.report.figures`:
Runs (``runs``, ``nulls``), Sweep (``sweep``), Claims ledger (a table), Monitor
benchmark, Monitor scores, Steering, Steering evaluation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from ppmech import artifacts
from ppmech.errors import PPMechError
from ppmech.report.export import check_png_export, render_pngs
from ppmech.report.figures import monitor_benchmark as FB
from ppmech.report.figures import monitor_scores as FM
from ppmech.report.figures import nulls as FN
from ppmech.report.figures import runs as F
from ppmech.report.figures import steering as FS
from ppmech.report.figures import steering_evaluation as FE
from ppmech.report.figures import sweep as FW
from ppmech.report.html import Section, esc, figure_block, page, paragraph, table_block
from ppmech.report.sources import (
    CLAIM_COLUMNS,
    MonitorBenchmarkSource,
    MonitorScoreSource,
    RunSource,
    Source,
    SteeringEvalSource,
    SteerSource,
    SweepSource,
    VerifySource,
    load_sources,
)
from ppmech.runs import Run
from ppmech.tables import run_row

#: Most runs whose tokens are shown (one figure each), and most monitored texts drawn.
MAX_TOKEN_FIGURES = 6
MAX_MONITOR_TEXTS = 8


@dataclass
class ReportResult:
    """What :func:`build_report` made.

    Attributes:
        out: the HTML file.
        size_bytes: its size.
        figures: every figure by id, in page order (plotly ``Figure`` objects).
        sources: the inputs as read.
        pngs: the PNG files written (empty without ``png_dir``).
    """

    out: Path
    size_bytes: int
    figures: dict[str, go.Figure]
    sources: list[Source]
    pngs: list[Path] = field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


class _Page:
    """Collects sections and figures with unique ids."""

    def __init__(self) -> None:
        self.sections: list[Section] = []
        self.figures: dict[str, go.Figure] = {}

    def section(self, title: str) -> Section:
        base = _slug(title)
        sid = base
        n = 2
        while any(s.id == sid for s in self.sections):
            sid, n = f"{base}-{n}", n + 1
        s = Section(id=sid, title=title)
        self.sections.append(s)
        return s

    def figure(self, section: Section, name: str, fig: go.Figure) -> None:
        fid = f"fig-{len(self.figures) + 1:02d}-{_slug(name)}"
        self.figures[fid] = fig
        section.blocks.append(figure_block(fig, fid))


def _conservation_cells(summary: dict[str, Any]) -> dict[str, Any]:
    """The controls a run's summary.json stores (``conservation``), as cells beside Table 1."""
    c = summary.get("conservation") or {}
    low, high = c.get("shuffle_null_R_low"), c.get("shuffle_null_R_high")
    return {
        "R": c.get("R"),
        "R shuffle band": f"[{low:.3f}, {high:.3f}]" if low is not None and high is not None else None,
        "shuffle-null CV": c.get("shuffle_null_cv"),
        "CV / null CV": c.get("cv_ratio"),
        "corr(K,V)": c.get("corr_KV"),
    }


def table1_rows(runs: dict[str, Run]) -> list[dict[str, Any]]:
    """Table-1 rows (:func:`ppmech.tables.run_row`) with the run's label first.

    Where any run's summary.json stores its conservation controls (issue 21: R with its
    pairing-shuffle band, the shuffle-null CV, corr(K, V)), they follow, read as stored.
    """
    rows = [{"run": name} | run_row(run.summary) for name, run in runs.items()]
    if any(run.summary.get("conservation") for run in runs.values()):
        for row, run in zip(rows, runs.values(), strict=True):
            row.update(_conservation_cells(run.summary))
    return rows


def _runs_section(pg: _Page, runs: dict[str, Run], trajectory: int, term: str) -> None:
    s = pg.section("Runs")
    s.blocks.append(
        table_block(
            table1_rows(runs),
            "table1",
            "Table 1 style, from each run's summary.json: CV = std/mean of H (ddof 0); CIs are 95% "
            "percentile bootstrap over trajectories; mean H, K, V in nats (K = ln(½‖Δh‖²) of a squared "
            "distance in hidden-state units); <dH>, <|dH|> the mean step change of H and of its size "
            "(nats); drift = ΣΔH/Σ|ΔH| (dimensionless); v=0 steps = zero-velocity steps left out. Where the "
            "run stored them: R = Var(H)/(Var(K)+Var(V)) with the 95% band of its pairing-shuffle null, the "
            "shuffle-null CV (the CV of H with V permuted against K within trajectories), CV / null CV and "
            "corr(K, V), all dimensionless.",
        )
    )
    pg.figure(s, "table1", F.comparison(runs))
    pg.figure(s, "energy-vs-step", F.energy_vs_step(runs))
    pg.figure(s, "phase-portrait", F.phase_portrait(runs))
    pg.figure(s, "distributions", F.distributions(runs))
    estimates = {name: FN.null_estimates(run) for name, run in runs.items()}
    pg.figure(s, "null-models", FN.null_models(runs, computed=estimates))
    s.blocks.append(
        table_block(
            FN.controls_rows(estimates),
            "controls",
            "Beyond the paper: every registered null model's numbers per run (ppmech.nulls; 95% CIs in "
            "brackets). R = Var(H)/(Var(K)+Var(V)) and 1 − R (scale-free; R < 1: K and V compensate); "
            "corr(K, V) over valid steps; 'null R' and 'null CV': R and the global CV of H with V permuted "
            "against K within each trajectory (the shuffle-null CV), with p and the effect in null sd; "
            "CV / null CV (scale-free; < 1: the pairing flattens H); the CV of H with h rescaled by c and "
            "the smallest c at which it stays under 13%; R² of K on token, input token and step, and R and p "
            "with those effects removed. 'from' says whether the run's summary.json stored them or they "
            "were computed here from its steps.",
        )
    )
    shown = list(runs.items())[:MAX_TOKEN_FIGURES]
    for name, run in shown:
        fig = F.trajectory_tokens(run, trajectory, term)
        fig.update_layout(title=dict(text=f"{name}: trajectory {trajectory}, tokens shaded by {term}"))
        pg.figure(s, f"tokens-{name}", fig)
    if len(runs) > len(shown):
        s.blocks.append(paragraph(f"Tokens are shown for the first {len(shown)} of {len(runs)} runs."))


STUDY_COLUMNS = (
    "run",
    "name",
    "run_name",
    "model",
    "weights",
    "family",
    "model_type",
    "params",
    "parameters",
    "num_parameters",
    "status",
    "error",
    "global_cv",
    "mean_trajectory_cv",
    "mean_energy",
    "kv_ratio",
    "device_used",
    "wall_seconds",
)


def _sweep_section(pg: _Page, sweep: SweepSource) -> None:
    s = pg.section(f"Sweep: {sweep.name}")
    table = sweep.table
    if len(table):
        cols = [c for c in STUDY_COLUMNS if c in table.columns] or list(table.columns)
        rows = [{c: _plain(v) for c, v in r.items()} for r in table[cols].to_dict(orient="records")]
        status = [f"status-{_slug(str(r.get('status', '')))}" for r in rows]
        s.blocks.append(
            table_block(rows, f"study-{_slug(sweep.name)}", "study.parquet, one row per run.", status)
        )
    if sweep.skipped:
        s.blocks.append(
            paragraph(
                "Runs under runs/ left out (not complete): "
                + "; ".join(f"{k}: {v}" for k, v in sweep.skipped.items())
            )
        )
    pg.figure(s, f"table1-{sweep.name}", F.comparison(sweep.runs))
    trajectories = F.energy_vs_step(sweep.runs)
    title = f"Energy terms along the trajectory: the sweep's {len(sweep.runs)} runs"
    trajectories.update_layout(title=dict(text=title))
    pg.figure(s, f"energy-vs-step-{sweep.name}", trajectories)
    groups = FW.scaling_groups(sweep.runs)
    pg.figure(s, f"scaling-{sweep.name}", FW.scaling(sweep.runs, groups))
    s.blocks.append(
        table_block(
            FW.scaling_rows(groups),
            f"table5-{_slug(sweep.name)}",
            "Table 5: per group of runs that differ only in the model, its runs (by size), the number of "
            "sizes, and Pearson r and two-sided p of drift and of ⟨|ΔH|⟩ (mean_abs_dH) with parameter count.",
        )
    )


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones, lists/dicts as short text, for table cells."""
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            return str(value)
    # Counts read back as floats (a parquet column with nulls): 6328512, not 6328512.000.
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1000:
        return int(value)
    return value


#: Background of each verdict (the table's cells use the same, html.STYLE); any other verdict is grey.
VERDICT_COLOURS = {
    "supported": "#d4f4dd",
    "not supported": "#f9d2d2",
    "inconclusive": "#fcefc7",
    "holds only in these units": "#fde0c2",
    "low variance without compensation": "#e6dcf5",
}
OTHER_VERDICT = "#e4e4e4"

#: Ledger fields the page leaves out: the parts of 'measured' and the metric's internal name.
LEDGER_COPIES = ("value", "low", "high", "n", "metric")


def _verify_section(pg: _Page, source: VerifySource) -> None:
    s = pg.section(f"Claims ledger: {source.name}")
    claims = source.claims
    meta = claims.get("meta", {})
    counts = claims.get("verdicts", {})
    # Every verdict the ledger counts, the paper's three first (a control's own verdicts follow).
    names = list(dict.fromkeys(["supported", "not supported", "inconclusive", *counts]))
    s.blocks.append(
        '<p class="counts">'
        + "".join(
            f'<span class="verdict-{_slug(k)}" style="background:{VERDICT_COLOURS.get(k, OTHER_VERDICT)}">'
            f"{counts.get(k, 0)} {esc(k)}</span>"
            for k in names
        )
        + "</p>"
    )
    if meta.get("quick"):
        s.blocks.append(paragraph("QUICK MODE: tiny runs, the verdicts are not meaningful."))
    cols = list(CLAIM_COLUMNS)
    # Text columns a newer ledger adds (e.g. each row's controls) follow, in their order; the
    # measured value's own parts and machine-readable copies are already in 'measured' / 'controls'.
    rows_in = claims.get("claims", [])
    seen = dict.fromkeys(k for r in rows_in for k in r)
    extra = [c for c in seen if c not in cols and c not in LEDGER_COPIES]
    cols += [c for c in extra if all(isinstance(r.get(c), str | int | float | bool | None) for r in rows_in)]
    rows = [{c: r.get(c, "") for c in cols} for r in rows_in]
    s.blocks.append(
        table_block(
            rows,
            f"claims-{_slug(source.name)}",
            f"Every claim of the paper with its measured value and 95% CI, from {source.path}/claims.json "
            f"(models: {', '.join(meta.get('models', []))}). Verdict colours: green supported, red not "
            "supported, amber inconclusive. Type in the box to filter rows.",
            [f"verdict-{_slug(str(r['verdict']))}" for r in rows],
            filter_box=True,
        )
    )


def _monitor_benchmark_section(pg: _Page, source: MonitorBenchmarkSource) -> None:
    s = pg.section(f"Monitor benchmark: {source.name}")
    pg.figure(s, f"monitor-{source.name}", FB.monitor_detection(source.data))
    if source.data.get("text_scores"):
        pg.figure(s, f"monitor-roc-{source.name}", FB.monitor_roc(source.data))
    false_alarms = source.data.get("false_alarms", [])
    if false_alarms:
        s.blocks.append(
            table_block(
                false_alarms,
                f"false-alarms-{_slug(source.name)}",
                "False alarms on held-out normal text of each kind, per alarm (anomaly flag, CUSUM, and "
                "either: the combined alarm the console shows), with 95% CIs, as the benchmark wrote them.",
            )
        )
    delays = source.data.get("delays", [])
    if delays:
        s.blocks.append(
            table_block(
                delays,
                f"delays-{_slug(source.name)}",
                "Spliced texts (English, then a foreign passage): per-token CUSUM alarms on the "
                "z-score of each "
                "signal; the share of normal texts with an alarm, of spliced texts alarmed before / "
                "after the "
                "splice, and the delay in tokens from the splice to the alarm.",
            )
        )


def _monitor_score_section(pg: _Page, source: MonitorScoreSource) -> None:
    s = pg.section(f"Monitor scores: {source.name}")
    for record in source.records[:MAX_MONITOR_TEXTS]:
        pg.figure(s, f"monitor-trace-{record.get('source', '')}", FM.monitor_trace(record))
    if len(source.records) > MAX_MONITOR_TEXTS:
        s.blocks.append(paragraph(f"The first {MAX_MONITOR_TEXTS} of {len(source.records)} texts are drawn."))


def _steer_section(pg: _Page, source: SteerSource) -> None:
    s = pg.section(f"Steering: {source.name}")
    pg.figure(s, f"steer-{source.name}", FS.steering_traces(source.summary, source.steps))
    comparison = source.summary.get("comparison", [])
    if comparison:
        s.blocks.append(
            table_block(
                comparison,
                f"steer-comparison-{_slug(source.name)}",
                "Per trace, over steps with a velocity: mean K, V (nats), H; CV of E = exp(H); mean "
                "|ΔH|; and "
                "the steering totals (ppmech steer's summary.json).",
            )
        )


def _steering_eval_section(pg: _Page, source: SteeringEvalSource) -> None:
    s = pg.section(f"Steering evaluation: {source.name}")
    pg.figure(s, f"table3-{source.name}", FE.table3_pairs(source.summary, source.items))
    rows = source.summary.get("table3", [])
    if rows:
        s.blocks.append(
            table_block(
                rows,
                f"table3-{_slug(source.name)}",
                "Table 3 as ppmech evaluate-steering wrote it.",
                digits=3,
            )
        )


def _unique(names: Sequence[str], taken: set[str]) -> list[str]:
    out = []
    for name in names:
        label, n = name, 2
        while label in taken:
            label, n = f"{name} ({n})", n + 1
        taken.add(label)
        out.append(label)
    return out


def build_figures(
    sources: Sequence[Source], trajectory: int = 0, term: str = "H"
) -> tuple[list[Section], dict[str, go.Figure]]:
    """Every section and figure of the report of ``sources`` (nothing is written)."""
    pg = _Page()
    runs: dict[str, Run] = {}
    taken: set[str] = set()
    for source in sources:
        if isinstance(source, RunSource):
            (label,) = _unique([source.name], taken)
            runs[label] = source.run
        elif isinstance(source, VerifySource):
            labels = _unique(list(source.runs), taken)
            runs.update(zip(labels, source.runs.values(), strict=True))
    if runs:
        _runs_section(pg, runs, trajectory, term)
    for source in sources:
        if isinstance(source, SweepSource):
            _sweep_section(pg, source)
        elif isinstance(source, VerifySource):
            _verify_section(pg, source)
        elif isinstance(source, MonitorBenchmarkSource):
            _monitor_benchmark_section(pg, source)
        elif isinstance(source, MonitorScoreSource):
            _monitor_score_section(pg, source)
        elif isinstance(source, SteerSource):
            _steer_section(pg, source)
        elif isinstance(source, SteeringEvalSource):
            _steering_eval_section(pg, source)
    return pg.sections, pg.figures


def _check_out(out: Path, overwrite: bool) -> None:
    """The output rule (:func:`ppmech.artifacts.check_output_file`), before any input is read."""
    artifacts.check_output_file(out, kind="html", replace=overwrite)
    if out.suffix.lower() not in (".html", ".htm"):
        raise PPMechError(f"--out {out} does not end in .html", "name the HTML file, e.g. report.html")


def build_report(
    paths: Sequence[str | Path],
    out: str | Path,
    png_dir: str | Path | None = None,
    trajectory: int = 0,
    term: str = "H",
    title: str = "ppmech report",
    overwrite: bool = False,
) -> ReportResult:
    """Read ``paths``, build every figure, write ``out`` (and one PNG per figure in ``png_dir``).

    Args:
        paths: run, sweep, verify, steer or steering-evaluation directories, and
            monitor benchmark / score files (see :mod:`ppmech.report.sources`).
        out: the HTML file to write. An existing file (or PNG) is replaced only when ppmech
            wrote it and ``overwrite`` is given (the output rule, :mod:`ppmech.artifacts`).
        png_dir: also write each figure as ``<figure id>.png`` here, drawn by kaleido in a
            local Chromium (:mod:`ppmech.report.export`).
        trajectory: the trajectory whose tokens are shown, per run.
        term: what shades the tokens: ``H``, ``K`` or ``V``.
        title: the page title.

    Raises:
        PPMechError: no inputs, an unreadable, malformed or interrupted input, a bad ``out``;
            with ``png_dir``, no kaleido or no Chromium (checked before any work).
    """
    out_path = Path(out)
    _check_out(out_path, overwrite)
    if png_dir is not None:
        artifacts.check_location(Path(png_dir).absolute() / "x.png", Path(png_dir), "--png")
    # Checked before any work: a missing kaleido or browser is found now, not after the figures.
    chromium = check_png_export() if png_dir is not None else None
    sources = load_sources(paths)
    sections, figures = build_figures(sources, trajectory, term)
    text = page(title, sections, [str(p) for p in paths])
    pngs: list[Path] = []
    if png_dir is not None and chromium is not None:
        targets = [Path(png_dir) / f"{fid}.png" for fid in figures]
        for target in targets:  # all refusals before drawing, and before the first PNG is written
            artifacts.check_output_file(target, kind="png", replace=overwrite, flag="--png")
        images = render_pngs(figures, chromium)
        for target, data in zip(targets, images.values(), strict=True):
            artifacts.write_output_file(target, data, kind="png", replace=overwrite, flag="--png")
            pngs.append(target)
    artifacts.write_output_file(out_path, text, kind="html", replace=overwrite)
    return ReportResult(
        out=out_path, size_bytes=out_path.stat().st_size, figures=figures, sources=sources, pngs=pngs
    )
