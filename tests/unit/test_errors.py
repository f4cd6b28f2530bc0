"""Library errors name config fields; the CLI prints them as flags."""

from __future__ import annotations

import pytest

from ppmech.cli import build_parser, command_flags
from ppmech.engine.sampling import Decoding
from ppmech.errors import PPMechError


def test_config_errors_name_the_field_not_the_flag() -> None:
    with pytest.raises(PPMechError) as info:
        Decoding(strategy="sample", temperature=0.0)
    assert "`temperature` must be > 0" in info.value.problem
    assert "--temperature" not in info.value.one_line()


def test_cli_rewrites_fields_of_the_invoked_command_to_its_flags() -> None:
    parser = build_parser()
    args = parser.parse_args(["measure", "--model", "smollm2-135m"])
    flags = command_flags(parser, args)
    assert flags["context_tokens"] == "--context-tokens" and flags["n_boot"] == "--n-boot"
    err = PPMechError("`context_tokens` must be at least 1 (got 0)", "or `unknown`; see `ppmech measure`")
    assert err.for_cli(flags) == (
        "--context-tokens must be at least 1 (got 0); or `unknown`; see `ppmech measure`"
    )
    # A nested command (monitor calibrate) contributes its own flags.
    args = parser.parse_args(["monitor", "calibrate", "--out", "cal.json"])
    assert command_flags(parser, args)["z_clip"] == "--z-clip"
