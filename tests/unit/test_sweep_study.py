"""The study schema of `ppmech sweep`: parsing, the grid, run names, and every bad input."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest

from ppmech.errors import PPMechError
from ppmech.measure import MeasureConfig
from ppmech.sweep.study import PAPER_TABLE1_MODELS, load_study, parse_study, preset_study, run_name


def test_the_short_form_expands_models_times_weights() -> None:
    text = (
        'models = ["smollm2-135m", "gemma3-270m"]\nweights = ["pretrained", "random"]\n'
        "prompts = 100\nnew_tokens = 100\n[resources]\ngpus = 0.25\n"
    )
    study = parse_study(text, "short.toml")
    assert [r.name for r in study.runs] == [
        "smollm2-135m-pretrained",
        "smollm2-135m-random",
        "gemma3-270m-pretrained",
        "gemma3-270m-random",
    ]
    assert all(r.config.prompts == 100 and r.config.new_tokens == 100 for r in study.runs)
    assert study.name == "short" and study.resources.cpus == 1 and study.resources.max_retries == 3
    # A reserved card is used: runs that set no device record on CUDA; one that sets its own keeps it.
    assert study.resources.gpus == 0.25 and all(r.config.device == "cuda" for r in study.runs)
    own = parse_study(text.replace("prompts = 100", 'prompts = 100\ndevice = "cpu"'), "own.toml")
    assert all(r.config.device == "cpu" for r in own.runs)
    cpu_only = parse_study(text.replace("gpus = 0.25", "gpus = 0"), "cpu.toml")
    assert all(r.config.device == MeasureConfig().device for r in cpu_only.runs)


def test_axes_conditions_and_model_overrides() -> None:
    text = """
models = ["smollm2-135m", { model = "gemma3-270m", weights = "pretrained", name = "gemma" }]
weights = ["pretrained", "random"]
seed = [0, 1]
prompts = 10
[[conditions]]
decoding = "greedy"
[[conditions]]
decoding = "sample"
temperature = 0.7
"""
    study = parse_study(text, "axes.toml")
    names = [r.name for r in study.runs]
    assert len(names) == 2 * 2 * 2 + 1 * 2 * 2
    assert names[:4] == [
        "smollm2-135m-pretrained-n10",
        "smollm2-135m-pretrained-n10-seed1",
        "smollm2-135m-random-n10",
        "smollm2-135m-random-n10-seed1",
    ]
    assert "smollm2-135m-random-n10-sample-t0.7-seed1" in names
    assert {r.config.weights for r in study.runs if r.config.model == "gemma3-270m"} == {"pretrained"}
    assert all(n.startswith("gemma-pretrained") for n in names if "gemma" in n)
    sample = [r.config for r in study.runs if r.config.decoding == "sample"]
    assert sample and all(c.temperature == 0.7 for c in sample)
    assert all(r.config.temperature == 1.0 for r in study.runs if r.config.decoding == "greedy")


def test_adding_an_axis_keeps_the_names_of_the_runs_already_there() -> None:
    one = parse_study('models = ["smollm2-135m"]\nprompts = 5\n', "a.toml")
    two = parse_study(
        'models = ["smollm2-135m"]\nprompts = 5\nseed = [0, 1]\ncorpus = ["wiki-en", "wiki-fr"]\n'
    )
    assert one.runs[0].name in {r.name for r in two.runs}
    assert one.runs[0].config == next(r.config for r in two.runs if r.name == one.runs[0].name)
    assert "smollm2-135m-pretrained-wiki-fr-n5-seed1" in {r.name for r in two.runs}


def test_every_measure_option_is_a_top_level_key() -> None:
    """Keys come from MeasureConfig's fields: each one, at a non-default value, reaches the run's config."""
    changed = {
        "weights": "random",
        "dtype": "bfloat16",
        "corpus": "wiki-es",
        "text_field": "body",
        "prompts": 3,
        "context_tokens": 20,
        "new_tokens": 7,
        "decoding": "sample",
        "temperature": 0.5,
        "top_k": 5,
        "top_p": 0.9,
        "stop_at_eos": True,
        "seed": 4,
        "batch_size": 2,
        "save_hidden": True,
        "n_boot": 10,
        "trust_remote_code": True,
    }
    fields = [f.name for f in dataclasses.fields(MeasureConfig) if f.name != "model"]
    lines = ['models = ["smollm2-135m"]']
    for name in fields:
        value = changed.get(name, getattr(MeasureConfig(), name))
        if isinstance(value, bool):
            lines.append(f"{name} = {str(value).lower()}")
        elif isinstance(value, str):
            lines.append(f'{name} = "{value}"')
        elif value is not None:
            lines.append(f"{name} = {value}")
    config = parse_study("\n".join(lines), "all.toml").runs[0].config
    for name in fields:
        if name in changed:
            assert getattr(config, name) == changed[name], name


def test_hyphenated_keys_and_set_overrides() -> None:
    text = 'models = ["smollm2-135m"]\nnew-tokens = 12\n'
    study = parse_study(
        text, "s.toml", ["prompts=7", "resources.cpus=2", "corpus=wiki-es", 'weights=["pretrained","random"]']
    )
    assert [r.config.prompts for r in study.runs] == [7, 7]
    assert study.runs[0].config.new_tokens == 12 and study.runs[0].config.corpus == "wiki-es"
    assert study.resources.cpus == 2.0 and study.resources.threads() == 2
    assert study.overrides == (
        "prompts=7",
        "resources.cpus=2",
        "corpus=wiki-es",
        'weights=["pretrained","random"]',
    )


def test_the_paper_preset_names_the_ten_models_twice() -> None:
    study = preset_study("paper-table1")
    assert len(PAPER_TABLE1_MODELS) == 10 and len(study.runs) == 20
    assert [r.config.model for r in study.runs[::2]] == list(PAPER_TABLE1_MODELS)
    assert {r.config.weights for r in study.runs} == {"pretrained", "random"}
    first = study.runs[0].config
    assert (first.prompts, first.context_tokens, first.new_tokens, first.decoding) == (100, 50, 100, "greedy")
    assert study.runs[0].name == "Qwen2.5-1.5B-pretrained" and study.runs[1].name == "Qwen2.5-1.5B-random"
    small = preset_study("paper-table1", ["prompts=2"])
    assert all(r.config.prompts == 2 for r in small.runs)


def test_two_models_with_one_readable_name_are_told_apart(tmp_path: Path) -> None:
    for parent in ("a", "b"):
        (tmp_path / parent / "model").mkdir(parents=True)
    text = f'models = ["{tmp_path / "a" / "model"}", "{tmp_path / "b" / "model"}"]\n'
    names = [r.name for r in parse_study(text).runs]
    assert len(set(names)) == 2 and all(n.startswith("model-") for n in names)
    assert names == [r.name for r in parse_study(text).runs]  # deterministic


def test_run_name_leaves_out_settings_that_do_not_change_the_measurement() -> None:
    """Names carry PROTOCOL settings only (their roles in ppmech.settings): no hand-written key list."""
    from ppmech.settings import Role, keys

    config = MeasureConfig(
        model="x",
        batch_size=7,
        n_boot=5,
        dtype="bfloat16",
        device="cpu",
        compile="off",
        trust_remote_code=True,
    )
    assert run_name("x", config) == "x-pretrained-bf16"
    assert {"batch_size", "n_boot", "device", "compile"} <= set(
        keys(MeasureConfig, Role.ANALYSIS, Role.EXECUTION)
    )
    # Every PROTOCOL setting at a non-default value shows in the name.
    assert (
        run_name("x", MeasureConfig(model="x", save_hidden=True, seed=3)) == "x-pretrained-seed3-savehidden"
    )


@pytest.mark.parametrize("entry", ["../escaped", "/abs/path/x", "a/b", "..", ".", ".hidden", "", "a b"])
def test_an_entry_name_must_be_one_safe_path_component(entry: str) -> None:
    with pytest.raises(PPMechError, match="is not one safe path component") as info:
        parse_study(f'models = [{{ model = "smollm2-135m", name = "{entry}" }}]\n', "bad.toml")
    assert info.value.one_line().startswith("bad.toml")


@pytest.mark.parametrize(
    ("spec", "slug"),
    [
        ("../escaped", "escaped"),
        ("/abs/path/x", "x"),
        ("~/models/qwen", "qwen"),
        ("./nowhere/..", "model"),
        ("org/m", "m"),
    ],
)
def test_a_model_path_contributes_only_its_last_component(spec: str, slug: str, tmp_path: Path) -> None:
    from ppmech.sweep.names import SAFE_NAME, run_path

    study = parse_study(f'models = ["{spec}"]\n', "paths.toml")
    name = study.runs[0].name
    assert name == f"{slug}-pretrained" and SAFE_NAME.fullmatch(name)
    assert run_path(tmp_path / "runs", name).resolve().parent == (tmp_path / "runs").resolve()


def test_run_path_refuses_a_link_out_of_the_study(tmp_path: Path) -> None:
    from ppmech.sweep.names import run_path

    (tmp_path / "runs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "runs" / "a-pretrained").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PPMechError, match="outside"):
        run_path(tmp_path / "runs", "a-pretrained")
    with pytest.raises(PPMechError, match="not one safe path component"):
        run_path(tmp_path / "runs", "../x")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('models = ["a"]\nprompts = 4\n[resources\n', r"not valid TOML: .*\(at line 3, column 11\)"),
        ('models = ["a"]\nprompts = ', r"not valid TOML: .*line 2, column 11"),
        (
            'models = ["a"]\npromts = 4\n',
            r"unknown key 'promts' at the top level \(line 2, column 1\); did you mean 'prompts'",
        ),
        (
            'models = ["a"]\n[resources]\ngpu = 1\n',
            r"unknown key 'gpu' in \[resources\].*did you mean 'gpus'",
        ),
        (
            'models = [{ model = "a", wieghts = "random" }]\n',
            r"unknown key 'wieghts' in a model entry.*'weights'",
        ),
        ('models = ["a"]\n[[conditions]]\ntemprature = 0.5\n', r"unknown key 'temprature'.*'temperature'"),
        ('models = ["a"]\nprompts = "ten"\n', r"'prompts' must be an integer \(got 'ten'\) \(line 2"),
        ('models = ["a"]\nstop_at_eos = 1\n', r"'stop_at_eos' must be true or false"),
        ("models = []\n", r"the grid is empty: models = \[\]"),
        ('models = ["a"]\nseed = []\n', r"the grid is empty: 'seed' = \[\]"),
        ('models = ["a"]\nconditions = []\n', r"the grid is empty: conditions = \[\]"),
        ("prompts = 4\n", r"names no models"),
        ('models = ["a"]\nprompts = 0\n', r"a: `?prompts`? must be at least 1"),
        ('models = ["a"]\nweights = "trained"\n', r"unknown weights 'trained'"),
        ('models = ["a"]\ndtype = "int8"\n', r"unknown dtype 'int8'"),
        ('models = ["a", "a"]\n', r"two runs a-pretrained measure the same thing \(they have identical"),
        # Runs that differ only in execution or analysis settings record the same steps.
        (
            'models = ["a"]\nbatch_size = [1, 2]\n',
            r"a-pretrained measure the same thing .*only in batch_size",
        ),
        (
            'models = ["a"]\ndevice = ["cpu", "auto"]\n',
            r"measure the same thing \(they differ only in device\)",
        ),
        ('models = ["a"]\ncompile = ["on", "off"]\n', r"differ only in compile"),
        ('models = ["a"]\nn_boot = [100, 200]\n', r"differ only in n_boot"),
        ('models = ["a", { model = "a", name = "b" }]\n', r"runs a-pretrained and b-pretrained measure the"),
        # What measure refuses, the study refuses at validation (the run's MeasureConfig is built).
        ('models = ["a"]\ndevice = "bogus"\n', r"a: unknown device 'bogus'"),
        ('models = ["a"]\ndevice = ""\n', r"`device` is empty"),
        ('models = ["a"]\ndevice = "cuda:x"\n', r"unknown device 'cuda:x'"),
        ('models = ["a"]\nnew_tokens = 1\n', r"`new_tokens` must be at least 2"),
        ('models = ["a"]\ntop_k = 3\n', r"only applies to .*sample"),
        ('models = ["a"]\nseed = [0, 1]\n[[conditions]]\nseed = 2\n', r"'seed' is both an axis"),
        ('models = ["a"]\n[resources]\ncpus = -1\n', r"resources.cpus must be 0 or more"),
        ('model = "a"\nmodels = ["b"]\n', r"both 'model' and 'models'"),
    ],
)
def test_bad_studies_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(PPMechError, match=message) as info:
        parse_study(text, "bad.toml")
    assert "\n" not in info.value.one_line() and info.value.one_line().startswith("bad.toml")


def test_bad_overrides_presets_and_files(tmp_path: Path) -> None:
    with pytest.raises(PPMechError, match="is not KEY=VALUE"):
        parse_study('models = ["a"]', "s.toml", ["prompts"])
    with pytest.raises(PPMechError, match="did you mean 'paper-table1'"):
        preset_study("paper-table")
    with pytest.raises(PPMechError, match="not found"):
        load_study(tmp_path / "missing.toml")
    (tmp_path / "latin1.toml").write_bytes(b'models = ["caf\xe9"]\n')
    with pytest.raises(PPMechError, match="not UTF-8"):
        load_study(tmp_path / "latin1.toml")


@pytest.mark.parametrize(
    ("ray_output", "cause", "fix"),
    [
        (
            "grpc status UNAUTHENTICATED: Invalid or missing authentication token",
            "requires token authentication",
            "RAY_AUTH_MODE=token",
        ),
        (
            "RuntimeError: Version mismatch: The cluster was started with:\n Ray: 2.49.0",
            "Ray or Python version differs",
            "`ray --version` on the head node",
        ),
        (
            "ConnectionError: Could not find any running Ray instance. Please specify the one to connect to",
            "no Ray cluster is running on this machine",
            "ray start --head",
        ),
    ],
)
def test_a_failed_join_names_its_cause(ray_output: str, cause: str, fix: str) -> None:
    from ppmech.sweep.cluster import _cause

    found = _cause(ray_output)
    assert found is not None and cause in found[0] and fix in found[1]
    assert _cause("rpc_client.h:153: Failed to connect to GCS at address 1.2.3.4:5 within 5 seconds.") is None


def test_resources_no_node_has_are_refused_naming_the_nodes() -> None:
    from ppmech.sweep.cluster import Capacity, check_feasible
    from ppmech.sweep.study import Resources

    nodes = Capacity(({"CPU": 2.0, "GPU": 0.0, "memory": 4 * 2**30}, {"CPU": 1.0, "GPU": 1.0}), "the cluster")
    check_feasible(Resources(cpus=2), nodes)
    check_feasible(Resources(cpus=1, gpus=1), nodes)  # the second node has both
    check_feasible(Resources(cpus=1, memory_gb=4), nodes)
    for resources, asked in (
        (Resources(cpus=2, gpus=1), "cpus = 2, gpus = 1"),
        (Resources(cpus=8), "cpus = 8, gpus = 0"),
        (Resources(cpus=1, memory_gb=5), "memory_gb = 5"),
    ):
        with pytest.raises(PPMechError, match="no node can run one run") as info:
            check_feasible(resources, nodes)
        line = info.value.one_line()
        assert (
            asked in line
            and "the cluster has 2 nodes: 2 CPUs, 0 GPUs, 4.0 GiB memory; 1 CPUs, 1 GPUs" in line
        )


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_runs_done_running_failed_and_the_current_runs_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ppmech.sweep.progress import SweepProgress

    queued, running = tmp_path / "queued", tmp_path / "running"
    queued.mkdir()
    running.mkdir()
    (running / "worker.json").write_text("{}")  # a worker picked it up
    (running / "progress.txt").write_text(
        # The last line measure's bar (ppmech.progress) drew into the worker's stderr.
        "\x1b[Kppmech: recording tiny (pretrained): 120/300 tok (40%), 60.0 tok/s, 3 s left"
    )
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    progress = SweepProgress("s", total=4, done=1, enabled=True, local=True)
    progress.poll({"a-pretrained": str(running), "b-pretrained": str(queued)})
    progress.finished("c-pretrained", "failed")
    progress.close()
    shown = terminal.getvalue()
    assert "2/4" in shown and "running 1" in shown and "failed 1" in shown
    assert "a-pretrained: 120/300 tok" in shown and "b-pretrained" not in shown
    # Not a terminal, or --no-progress: nothing at all (the command prints a one-line summary at the end).
    for enabled, stream in ((True, io.StringIO()), (False, _Terminal())):
        monkeypatch.setattr("sys.stderr", stream)
        quiet = SweepProgress("s", total=4, done=1, enabled=enabled, local=True)
        quiet.poll({"a-pretrained": str(running)})
        quiet.finished("a-pretrained", "complete")
        quiet.close()
        assert stream.getvalue() == ""
