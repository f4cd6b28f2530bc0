"""Help that teaches (issue 9): every flag described with its default, an example per subcommand."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ppmech.cli import OneLineParser, build_parser, config_defaults, main, show_default


def _commands() -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command parser by its full name, e.g. ``monitor calibrate``."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    # Flags built from a config dataclass are added when a command is first used.
                    found[f"{prefix}{name}"] = child.ready() if isinstance(child, OneLineParser) else child
                    walk(child, f"{prefix}{name} ")

    walk(build_parser(), "")
    return found


COMMANDS = _commands()


def test_help_shows_the_config_dataclass_defaults_without_the_cli_writing_them() -> None:
    from ppmech.measure import MeasureConfig

    parser = COMMANDS["measure"]
    args = parser.parse_args([])
    assert "prompts" not in vars(args)  # the CLI writes no default of its own
    text = " ".join(parser.format_help().split())
    assert f"number of trajectories (prompts) (default: {MeasureConfig().prompts})" in text


def test_every_subcommand_is_covered() -> None:
    assert set(COMMANDS) >= {
        "measure",
        "models",
        "compare",
        "verify",
        "analyze",
        "steer",
        "evaluate-steering",
        "monitor",
        "monitor calibrate",
        "monitor score",
        "monitor benchmark",
    }


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_flag_has_a_description_and_shows_its_default(name: str) -> None:
    parser = COMMANDS[name]
    text = " ".join(parser.format_help().split())
    # A flag that sets a config field leaves its default to the config dataclass.
    config = config_defaults(parser.config) if isinstance(parser, OneLineParser) and parser.config else {}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        flag = action.option_strings[0] if action.option_strings else action.dest
        assert action.help and len(action.help.split()) >= 2, f"{name} {flag} has no description"
        default = config.get(action.dest) if action.default is argparse.SUPPRESS else action.default
        assert default is not argparse.SUPPRESS, f"{name} {flag}: no default anywhere"
        if action.option_strings and not isinstance(default, bool) and default not in (None, ""):
            shown = show_default(default)
            said = f"(default: {shown})" in text or f"(default {shown})" in text
            assert said, f"{name} {flag} does not show its default {default!r}"
        takes_value = action.nargs != 0
        if action.option_strings and default in (None, "") and takes_value and not action.required:
            # No value to show: the description says what happens without the flag.
            described = "default" in action.help or action.help.startswith("also ")
            assert described or _in_required_group(parser, action), f"{name} {flag}: what is its default?"


def _in_required_group(parser: argparse.ArgumentParser, action: argparse.Action) -> bool:
    return any(g.required and action in g._group_actions for g in parser._mutually_exclusive_groups)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_ends_with_an_example(name: str) -> None:
    parser = COMMANDS[name]
    assert parser.epilog and parser.epilog.startswith("example:"), name
    example = parser.epilog.splitlines()[1].strip()
    assert example.startswith(f"ppmech {name}"), example


def test_measure_help_explains_the_three_decodings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["measure", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "greedy takes the most probable token" in text
    assert "sample draws it from the model's distribution" in text
    assert "teacher feeds the document's own next --new-tokens tokens" in text
    assert "--context-tokens + --new-tokens tokens" in text
    assert "(default: 0)" in text  # --seed: a default of 0 is shown too


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (
            ["measure", "--eta", "0.5"],
            ["unrecognized --eta", "this command takes --model", "--new-tokens", "--config"],
        ),
        (["measure", "--new-tokenz", "5"], ["did you mean --new-tokens?"]),
        (["steer", "--prompt", "a", "--target-text", "b", "--prompts", "3"], ["did you mean --prompt?"]),
        (["monitor", "score", "x", "--calibration", "c", "--out", "o"], ["ppmech monitor score --help"]),
        (["models", "--all"], ["this command takes no flags"]),
    ],
)
def test_unknown_flags_name_the_subcommands_own(
    argv: list[str],
    needles: list[str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # were a case ever accepted, its default --out lands here
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1, err
    # The error is the subcommand's, not the top-level parser's.
    assert err.startswith(f"ppmech {argv[0]}"), err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_default_is_printed_once(name: str) -> None:
    """Issue 20: `report --help` printed "(default 0) (default: 0)"."""
    formatter = COMMANDS[name]._get_formatter()
    for action in COMMANDS[name]._actions:
        if action.option_strings and action.help:
            shown = formatter._get_help_string(action)  # type: ignore[attr-defined]
            assert shown.count("(default") <= 1, f"{name} {action.option_strings[0]}: {shown}"


def test_prefixes_of_flags_are_refused_with_the_closest_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20: argparse's prefix matching ran `--prompt 3` as `--prompts 3`."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["measure", "--prompt", "3"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "did you mean --prompts?" in err, err
    assert not any(tmp_path.iterdir())  # nothing was run
    for name, parser in COMMANDS.items():
        assert parser.allow_abbrev is False, name


def test_sampling_flags_are_defined_once_from_the_config() -> None:
    """Issue 19: measure's and steer's --top-k/--top-p/--temperature come from their config fields."""
    from ppmech.measure import MeasureConfig
    from ppmech.settings import help_of
    from ppmech.steering.run import SteerConfig

    for name, cls in (("measure", MeasureConfig), ("steer", SteerConfig)):
        helps = {a.dest: a.help for a in COMMANDS[name]._actions}
        for field in ("temperature", "top_k", "top_p", "model", "revision", "device"):
            assert helps[field] == help_of(cls, field), (name, field)
