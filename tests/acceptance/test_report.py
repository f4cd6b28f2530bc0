"""``ppmech report`` end to end: real outputs of every kind, the CLI, and the page in a real browser.

The inputs are made once per session by the real commands on the embedded SmolLM2-135M
(pretrained and random weights), tiny local llamas of three sizes (the sweep), a quick
``verify``, ``steer``, ``evaluate-steering`` and the monitor. The browser is Debian's
Chromium driven by Playwright (the ``browser`` fixture of ``tests/conftest.py``: without
Chromium these tests skip with one summary line, unless ``PPMECH_REQUIRE_BROWSER=1``, which
``.ci/run`` sets, makes that an error).

``PPMECH_UPDATE_DOCS=1 pytest tests/acceptance/test_report.py -k screenshots`` records
larger runs and writes the README's screenshots into ``docs/``. ``PPMECH_REPORT_INPUTS=DIR``
keeps the inputs in DIR and reuses them in later sessions (while developing the report).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

from ppmech.cli import main
from ppmech.measure import MeasureConfig, measure
from ppmech.models.identity import LoadedModel
from ppmech.report import build_report, figures
from ppmech.runs import load_run

UPDATE_DOCS = os.environ.get("PPMECH_UPDATE_DOCS") == "1"
DOCS = Path(__file__).resolve().parents[2] / "docs"


@dataclass
class Inputs:
    """Paths of one real output of each kind."""

    pretrained: Path
    random: Path
    sweep: Path
    verify: Path
    steer: Path
    steering_eval: Path
    benchmark: Path
    scores: Path


def _measure(model: str, out: Path, weights: str = "pretrained", prompts: int = 4, tokens: int = 16) -> Path:
    config = MeasureConfig(model=model, weights=weights, prompts=prompts, new_tokens=tokens, n_boot=50)
    measure(config, out, progress=False)
    return out


def _tiny_llama(root: Path, layers: int, tokenizer_from: LoadedModel) -> str:
    """A tiny llama of ``layers`` blocks saved to a local directory (SmolLM2's tokenizer)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
        max_position_embeddings=256,
    )
    torch.manual_seed(layers)
    path = root / f"tiny-llama-{layers}"
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer_from.tokenizer.save_pretrained(path)
    return str(path)


def _sweep(root: Path, smollm2: LoadedModel) -> Path:
    """A study directory in the layout of ``ppmech sweep``: study.json, study.parquet, runs/<name>/."""
    study = root / "study"
    rows: list[dict[str, Any]] = []
    for layers in (1, 2, 3):
        model = _tiny_llama(root, layers, smollm2)
        for weights in ("pretrained", "random"):
            name = f"tiny-llama-{layers}-{weights}"
            run = load_run(_measure(model, study / "runs" / name, weights, prompts=3, tokens=8))
            s = run.summary["statistics"]
            rows.append(
                {
                    "run": name,
                    "model": model,
                    "weights": weights,
                    "family": run.model["model_type"],
                    "params": run.model["num_parameters"],
                    "status": "complete",
                    "error": None,
                    "global_cv": s["global_cv"],
                    "global_cv_low": s["global_cv_ci"]["low"],
                    "global_cv_high": s["global_cv_ci"]["high"],
                    "mean_energy": s["mean_energy"],
                    "device": "cpu",
                    "wall_seconds": run.summary["timing"]["total_seconds_this_session"],
                }
            )
    rows.append({"run": "no-such-model-pretrained", "model": "no-such-model", "weights": "pretrained"})
    rows[-1].update(status="failed", error="model 'no-such-model' not found; check the name")
    pd.DataFrame(rows).to_parquet(study / "study.parquet")
    (study / "study.json").write_text(json.dumps({"name": "tiny llama sizes", "runs": len(rows)}))
    return study


def _cli_stdout(args: list[str]) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(args) == 0
    return buffer.getvalue()


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory, smollm2: LoadedModel) -> Inputs:
    """One real output of every kind the report reads (built once per session)."""
    from ppmech.claims.verify import VerifyConfig, verify
    from ppmech.steering.evaluation import SteeringEvalConfig, evaluate_steering
    from ppmech.steering.run import SteerConfig, run_steer

    keep = os.environ.get("PPMECH_REPORT_INPUTS")
    root = Path(keep) if keep else tmp_path_factory.mktemp("report-inputs")
    if keep and (root / "complete").is_file():
        return _inputs_at(root)
    if keep:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
    _measure("smollm2-135m", root / "smollm2-pretrained", "pretrained")
    _measure("smollm2-135m", root / "smollm2-random", "random")
    _sweep(root, smollm2)
    verify(
        VerifyConfig(out=str(root / "verify"), models=("smollm2-135m",), quick=True, extras=False, n_boot=40),
        progress=False,
    )
    run_steer(
        SteerConfig(prompt="The capital of France is", target_text=" a city of bridges"),
        root / "steer",
        lm=smollm2,
    )
    evaluate_steering(
        SteeringEvalConfig(prompts=5, judge="embedding", baselines=False),
        root / "steering-eval",
        progress=False,
        lm=smollm2,
    )
    bench = root / "benchmark.json"
    sizes = ["--sequences", "10", "--calibration-sequences", "10", "--false-alarm-sequences", "10"]
    sizes += ["--tokens", "16", "--splice-at", "8"]
    _cli_stdout(["monitor", "benchmark", *sizes, "--json", str(bench), "--no-progress"])
    cal = root / "calibration.json"
    _cli_stdout(
        ["monitor", "calibrate", "--sequences", "5", "--tokens", "16", "--out", str(cal), "--no-progress"]
    )
    texts = root / "texts.txt"
    texts.write_text(
        "The river flows through the old town and under seven stone bridges.\n\n"
        "qq zx 7 7 7 vlorp ## qq zx 7 7 7 vlorp ## qq zx 7 7 7 vlorp ## zz\n"
    )
    scores = root / "scores.jsonl"
    scores.write_text(
        _cli_stdout(["monitor", "score", str(texts), "--calibration", str(cal), "--json", "--tokens"])
    )
    (root / "complete").write_text("")
    return _inputs_at(root)


def _inputs_at(root: Path) -> Inputs:
    return Inputs(
        pretrained=root / "smollm2-pretrained",
        random=root / "smollm2-random",
        sweep=root / "study",
        verify=root / "verify",
        steer=root / "steer",
        steering_eval=root / "steering-eval",
        benchmark=root / "benchmark.json",
        scores=root / "scores.jsonl",
    )


@dataclass
class Report:
    path: Path
    figures: dict[str, go.Figure]


@pytest.fixture(scope="session")
def reports(inputs: Inputs, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Report]:
    """One report of each kind, written by the CLI's API."""
    root = tmp_path_factory.mktemp("reports")
    kinds: dict[str, list[Path]] = {
        "run": [inputs.pretrained],
        "compare": [inputs.pretrained, inputs.random],
        "sweep": [inputs.sweep],
        "verify": [inputs.verify],
        "monitor": [inputs.benchmark, inputs.scores],
        "steering": [inputs.steer, inputs.steering_eval],
    }
    out = {}
    for kind, paths in kinds.items():
        result = build_report(paths, root / f"{kind}.html")
        out[kind] = Report(result.out, result.figures)
    return out


# --------------------------------------------------------------------------- CLI, API, bad input


def test_cli_writes_one_self_contained_file(
    inputs: Inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r" / "report.html"
    args = [str(p) for p in (inputs.pretrained, inputs.random, inputs.sweep, inputs.steer, inputs.benchmark)]
    assert main(["report", *args, "--out", str(out), "--term", "V"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "self-contained" in printed
    text = out.read_text()
    # plotly.js once, for every figure; no script or stylesheet fetched from anywhere.
    assert text.count("Plotly.newPlot(") >= 9
    assert text.count(get_plotlyjs()[:200]) == 1
    page = text.replace(get_plotlyjs(), "")  # the bundle's own source mentions such tags
    assert "<script src=" not in page and "<link " not in page
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]  # no temporary file left


def test_png_exports_the_pages_own_figures_through_chromium(
    inputs: Inputs, chromium: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from ppmech.report.export import CHROMIUM_ENV, PNG_SCALE, PNG_WIDTH

    monkeypatch.setenv(CHROMIUM_ENV, str(chromium))
    result = build_report(
        [inputs.pretrained, inputs.sweep], tmp_path / "report.html", png_dir=tmp_path / "png", term="V"
    )
    assert [p.name for p in result.pngs] == [f"{fid}.png" for fid in result.figures]
    for fid, fig in result.figures.items():
        image = Image.open(tmp_path / "png" / f"{fid}.png")
        # The page's own figure, drawn by plotly.js at its own height: not a redraw of it.
        assert image.size == (PNG_WIDTH * PNG_SCALE, int(fig.layout.height) * PNG_SCALE), fid
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
        assert pixels.std() > 5, f"{fid}.png is blank"


def test_api_returns_plotly_figures_with_captions(reports: dict[str, Report]) -> None:
    for report in reports.values():
        assert report.figures
        for fid, fig in report.figures.items():
            assert isinstance(fig, go.Figure)
            caption = figures.caption_of(fig)
            assert len(caption) > 60, fid
    compare = reports["compare"].figures
    assert any("nats" in figures.caption_of(f) for f in compare.values())


def test_monitor_report_draws_roc_curves_from_the_benchmarks_own_scores(
    inputs: Inputs, reports: dict[str, Report]
) -> None:
    from ppmech.monitor.detection import auroc

    data = json.loads(inputs.benchmark.read_text())
    roc = next(f for f in reports["monitor"].figures.values() if "ROC curves" in f.layout.title.text)
    scores = data["text_scores"]
    # Each detector's per-text scores reproduce the AUROC the benchmark tabulated.
    measured = [r for r in data["scores"] if r["auroc"] is not None]  # JSON null: no AUROC
    assert len(measured) >= 10
    for row in measured:
        by_set = scores[row["method"]]
        as_float = [[math.nan if x is None else x for x in by_set[k]] for k in ("normal", row["set"])]
        assert auroc(*as_float) == pytest.approx(row["auroc"]), row
    drawn = {(t.name, t.hovertemplate.split("<br>")[1].split(",")[0]) for t in roc.data if t.name}
    assert drawn == {(r["method"], r["set"]) for r in measured}


def test_per_trajectory_breakdown_matches_the_run_summary(inputs: Inputs) -> None:
    run = load_run(inputs.pretrained)
    per = figures.per_trajectory(run.steps)
    stats = run.summary["statistics"]
    assert len(per) == stats["n_trajectories"]
    assert per["cv_H"].dropna().mean() == pytest.approx(stats["mean_trajectory_cv"], rel=1e-12)
    means = per["mean_H"].to_numpy()
    assert means.std() / means.mean() == pytest.approx(stats["trajectory_mean_cv"], rel=1e-12)
    assert per["n_valid"].sum() == stats["n_valid"]


def test_sweep_scaling_figure_reports_the_table5_correlation(inputs: Inputs) -> None:
    from scipy import stats as scipy_stats

    from ppmech.report.sources import load_source

    sweep = load_source(inputs.sweep)
    assert sweep.kind == "sweep" and len(sweep.runs) == 6  # type: ignore[union-attr]
    fig = figures.scaling(sweep.runs)  # type: ignore[union-attr]
    pre = [r for r in sweep.runs.values() if r.config["weights"] == "pretrained"]  # type: ignore[union-attr]
    params = [x.model["num_parameters"] for x in pre]
    for key, short in (("drift", "drift"), ("mean_abs_dH", "⟨|ΔH|⟩")):
        values = [x.summary["statistics"][key] for x in pre]
        r = scipy_stats.pearsonr(params, values)
        (line,) = [t for t in fig.data if t.legendgroup == "llama (pretrained)" and t.showlegend]
        assert f"{short}: r = {r.statistic:.3f}, p = {r.pvalue:.3g}" in line.name
        drawn = next(t for t in fig.data if t.legendgroup == "llama (pretrained)" and list(t.y) == values)
        assert list(drawn.x) == sorted(params)
    assert "fewer" not in figures.caption_of(fig)  # both groups have 3 sizes: no note


def _only_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_bad_input_is_one_line_exit_2_and_leaves_no_html(
    inputs: Inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out" / "report.html"
    not_a_run = tmp_path / "just-a-folder"
    not_a_run.mkdir()
    (not_a_run / "notes.txt").write_text("hello")
    interrupted = tmp_path / "interrupted"
    shutil.copytree(inputs.random, interrupted)
    (interrupted / "summary.json").unlink()
    (interrupted / "parts").mkdir()
    cases = {
        "empty list": ([], "no inputs"),
        "not a run": ([str(not_a_run)], "not a ppmech run"),
        "interrupted run": ([str(inputs.pretrained), str(interrupted)], "interrupted"),
        "missing path": ([str(tmp_path / "nowhere")], "not found"),
        "no such trajectory": ([str(inputs.pretrained), "--trajectory", "999"], "no trajectory 999"),
    }
    for name, (args, words) in cases.items():
        assert main(["report", *args, "--out", str(out)]) == 2, name
        line = _only_line(capsys.readouterr().err)
        assert line.startswith("ppmech: error:") and words in line, (name, line)
        assert not out.parent.exists() or not any(out.parent.iterdir()), name
    # A failing report never replaces a good one.
    out.parent.mkdir()
    out.write_text("previous report")
    assert main(["report", str(not_a_run), "--out", str(out)]) == 2
    assert out.read_text() == "previous report" and len(list(out.parent.iterdir())) == 1
    capsys.readouterr()
    assert main(["report", str(inputs.pretrained), "--out", str(tmp_path)]) == 2
    assert "is a directory" in _only_line(capsys.readouterr().err)


# --------------------------------------------------------------------------- the page in a browser


def test_chromium_draws_a_page(browser: Any) -> None:
    page = browser.new_page()
    page.set_content("<p id='x'>drawn</p>")
    assert page.inner_text("#x") == "drawn"
    page.close()


def _pytest_on_the_probe(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run :func:`test_chromium_draws_a_page` alone in a fresh pytest, with ``env`` added."""
    root = Path(__file__).resolve().parents[2]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-ra",
            "-p",
            "no:cacheprovider",
            f"{Path(__file__).resolve()}::test_chromium_draws_a_page",
        ],
        cwd=root,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_without_chromium_browser_tests_skip_with_one_line_or_fail_under_ci(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-chromium-here")
    skipped = _pytest_on_the_probe({"PPMECH_CHROMIUM": missing, "PPMECH_REQUIRE_BROWSER": "0"})
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    lines = [line for line in skipped.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(lines) == 1 and "apt-get install chromium" in lines[0] and missing in lines[0], skipped.stdout
    assert "1 skipped" in skipped.stdout
    # CI (.ci/run sets PPMECH_REQUIRE_BROWSER=1) can never skip them: the same case is an error.
    required = _pytest_on_the_probe({"PPMECH_CHROMIUM": missing, "PPMECH_REQUIRE_BROWSER": "1"})
    assert required.returncode != 0 and "1 error" in required.stdout, required.stdout
    assert "PPMECH_REQUIRE_BROWSER=1" in required.stdout and "apt-get install chromium" in required.stdout


@dataclass
class Opened:
    page: Any
    errors: list[str]
    failed: list[str]
    requests: list[str]


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[[Path], Opened]]:
    """Open a report file; records console errors, page errors, failed and all requests."""
    contexts = []

    def opener(path: Path) -> Opened:
        context = browser.new_context(viewport={"width": 1300, "height": 1000})
        contexts.append(context)
        page = context.new_page()
        opened = Opened(page, [], [], [])
        page.on("console", lambda m: opened.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: opened.errors.append(str(e)))
        page.on("requestfailed", lambda r: opened.failed.append(r.url))
        page.on("request", lambda r: opened.requests.append(r.url))
        page.goto(path.resolve().as_uri(), wait_until="load")
        page.wait_for_function(
            "() => Array.from(document.querySelectorAll('figure.ppm-figure'))"
            ".every(f => f.querySelector('.js-plotly-plot svg.main-svg'))",
            timeout=30_000,
        )
        return opened

    yield opener
    for context in contexts:
        context.close()


MARKS_JS = """
() => Array.from(document.querySelectorAll('figure.ppm-figure')).map(f => {
  const lines = Array.from(f.querySelectorAll('g.trace path'))
    .filter(p => (p.getAttribute('d') || '').length > 8).length;
  const points = f.querySelectorAll('g.points path, g.trace .point').length;
  const images = f.querySelectorAll('g.hm image').length;
  const box = f.querySelector('.js-plotly-plot').getBoundingClientRect();
  return {id: f.dataset.figure, marks: lines + points + images, width: box.width, height: box.height,
          caption: (f.querySelector('figcaption') || {}).textContent || ''};
})
"""


def _screenshot_variance(png: bytes) -> float:
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    return float(pixels.std())


def _check_page(opened: Opened, report: Report) -> list[dict[str, Any]]:
    assert opened.errors == []
    assert opened.failed == []
    assert opened.requests == [report.path.resolve().as_uri()]  # nothing fetched but the file itself
    found = opened.page.evaluate(MARKS_JS)
    assert [f["id"] for f in found] == list(report.figures)
    for f in found:
        assert f["marks"] > 0, f"{f['id']} drew nothing"
        assert f["width"] > 300 and f["height"] > 150, f
        assert f["caption"], f["id"]
    assert _screenshot_variance(opened.page.screenshot(full_page=True)) > 10
    return list(found)


@pytest.mark.parametrize("kind", ["run", "compare", "sweep", "verify", "monitor", "steering"])
def test_each_report_renders_in_chromium(
    kind: str, reports: dict[str, Report], open_page: Callable[[Path], Opened]
) -> None:
    report = reports[kind]
    _check_page(open_page(report.path), report)


def test_run_report_holds_the_numbers_of_summary_json(
    inputs: Inputs, reports: dict[str, Report], open_page: Callable[[Path], Opened]
) -> None:
    summary = json.loads((inputs.pretrained / "summary.json").read_text())
    s = summary["statistics"]
    page = open_page(reports["run"].path).page
    cells = page.evaluate(
        "() => Object.fromEntries(Array.from(document.querySelectorAll('#table1 tbody tr:first-child td'))"
        ".map(td => [td.dataset.col, td.textContent]))"
    )
    assert cells["model"] == summary["config"]["model"] and cells["weights"] == "pretrained"
    assert cells["N"] == str(s["n_trajectories"])
    cv, lo, hi = s["global_cv"], s["global_cv_ci"]["low"], s["global_cv_ci"]["high"]
    assert cells["global CV [95% CI]"] == f"{cv:.3f} [{lo:.3f}, {hi:.3f}]"
    mh, mlo, mhi = s["mean_energy"], s["mean_energy_ci"]["low"], s["mean_energy_ci"]["high"]
    assert cells["mean H [95% CI]"] == f"{mh:.2f} [{mlo:.2f}, {mhi:.2f}]"
    for col, key in (("mean K", "mean_K"), ("mean V", "mean_V"), ("K/V", "kv_ratio"), ("drift", "drift")):
        assert float(cells[col]) == pytest.approx(s[key], abs=5e-4), col
    # The plotted Table 1 carries the exact floats of summary.json.
    table1_id = next(fid for fid in reports["run"].figures if fid.endswith("-table1"))
    plotted = page.evaluate(
        f"() => document.getElementById('{table1_id}').data.map(t => [t.x[0], t.error_x && t.error_x.array])"
    )
    xs = [x for x, _ in plotted]
    assert s["global_cv"] in xs and s["mean_energy"] in xs and s["mean_trajectory_cv"] in xs
    assert any(err and math.isclose(err[0], hi - cv) for x, err in plotted if x == cv)


def test_claims_filter_hides_rows(reports: dict[str, Report], open_page: Callable[[Path], Opened]) -> None:
    page = open_page(reports["verify"].path).page
    rows = page.locator("table.ppm-table[id^=claims] tbody tr")
    total = rows.count()
    assert total > 10
    verdicts = page.evaluate(
        "() => Array.from(document.querySelectorAll('table[id^=claims] td.verdict')).map(t => t.textContent)"
    )
    colours = page.evaluate(
        "() => Array.from(document.querySelectorAll('table[id^=claims] td.verdict'))"
        ".map(t => getComputedStyle(t).backgroundColor)"
    )
    by_verdict = dict(zip(verdicts, colours, strict=True))
    assert len(set(by_verdict.values())) == len(by_verdict)  # one colour per verdict
    target = "inconclusive"
    page.fill("input.ppm-filter", target)
    visible = page.evaluate(
        "() => Array.from(document.querySelectorAll('table[id^=claims] tbody tr'))"
        ".filter(tr => tr.style.display !== 'none').length"
    )
    expected = sum(
        1 for row in page.locator("table[id^=claims] tbody tr").all_inner_texts() if target in row.lower()
    )
    assert 0 < visible == expected < total


@pytest.fixture(scope="session")
def screenshot_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """SmolLM2 pretrained and random runs: the session's small ones, or 20 × 40 ones for the docs."""
    if not UPDATE_DOCS:
        inputs: Inputs = request.getfixturevalue("inputs")
        return inputs.pretrained, inputs.random
    root = tmp_path_factory.mktemp("docs-runs")
    return (
        _measure("smollm2-135m", root / "smollm2-pretrained", "pretrained", prompts=20, tokens=40),
        _measure("smollm2-135m", root / "smollm2-random", "random", prompts=20, tokens=40),
    )


def test_screenshots_for_the_readme(
    screenshot_runs: tuple[Path, Path], tmp_path: Path, open_page: Callable[[Path], Opened]
) -> None:
    """Two screenshots of real reports; with PPMECH_UPDATE_DOCS=1 they are written to docs/."""
    pretrained, random = screenshot_runs
    one = build_report([pretrained], tmp_path / "run.html", title="ppmech report: SmolLM2-135M")
    two = build_report(
        [pretrained, random],
        tmp_path / "compare.html",
        title="ppmech report: SmolLM2-135M, pretrained vs random",
    )
    page = open_page(one.out).page
    shot_run = page.screenshot(clip={"x": 0, "y": 0, "width": 1300, "height": 1250})
    page = open_page(two.out).page
    energy = next(fid for fid in two.figures if fid.endswith("energy-vs-step"))
    shot_compare = page.locator(f"#{energy}-figure").screenshot()
    for shot in (shot_run, shot_compare):
        assert _screenshot_variance(shot) > 10
    if UPDATE_DOCS:
        DOCS.mkdir(exist_ok=True)
        (DOCS / "report-run.png").write_bytes(shot_run)
        (DOCS / "report-pretrained-vs-random.png").write_bytes(shot_compare)
