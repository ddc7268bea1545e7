"""What a newcomer sees: every command's --help shows every default and every flag's name, nothing eaten
by Rich markup, no `<bool>` after switches; the README's timings are ranges, not one machine's figure."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from rich.text import Text
from typer.testing import CliRunner

from gtpcli.cli import app

runner = CliRunner()
COMMANDS = ["complexity", "profiles", "profile", "trace", "check", "plot", "compare", "bench"]
EXPECTED = {
    "complexity": ["Layers [default: 12, or the model's]", "Heads [default: C/64, or the model's]",
                   "Tokens removed per layer, e.g. 8, 4,8 or 0..14 [default: 8]", "--per-layer", "[default: table]", "--plot"],
    "profiles": ["--format", "[default: table]"],
    "profile": ["Images per timed batch, or a list to sweep (1,8,32,128; stock at each) [default: 128 on CUDA as in "
                "the paper, 16 on CPU]", "Input resolution, or a list to sweep (224,384; stock at each) [default: the "
                "model's]", "--amp", "--compile", "--compile-mode", "--config", "--seed", "[default: the profile's, or 0..8]",
                "[default: the profile's, or gtp]", "[default: gtpcli-results/MODEL.json, with what sets the run apart "
                "added: MODEL-w-bfloat16.json for --checkpoint w.pth --dtype bfloat16]", "[default: auto]",
                "[default: 30 on CUDA, 20 on CPU]", "[default: 10, at most one per timed batch]", "--rounds",
                "[default: 10 on CUDA, 1 on CPU]",
                "--prop-attn", "--no-prop-attn", "--strict", "--no-strict", "--no-speed", "--no-flops", "--resume",
                "--fidelity"],
    "trace": ["Images per forward pass [default: 128 on CUDA, 16 on CPU]", "Input resolution [default: the model's]",
              "[default: 8; EViT, Evo-ViT and ATS: their own schedule]", "[default: gtp]", "[default: gtpcli-results/trace]", "[default: 3]",
              "--rounds"],
    "check": ["[default: cpu]", "--update-baseline", "--junit", "--baseline"],
    "plot": ["[default: tradeoff]", "--kind", "--output", "[required]", "speedup"],
    "compare": ["--gmacs", "[required]", "--dry-run", "[default: all]", "[default: table]"],
    "bench": ["--quick", "--tcvit", "--rounds", "--runs", "[default: cpu]", "[default: gtpcli-results/bench.json]"],
}


def help_text(*args) -> str:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "300", "TERMINAL_WIDTH": "300"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_every_default_and_no_bool_type(command):
    text = help_text(command)
    for fragment in EXPECTED[command]:
        assert fragment in text, fragment
    assert "<bool>" not in text
    assert "Show this message and exit." in text


def test_top_level_help_lists_every_command():
    text = help_text()
    assert all(command in text for command in COMMANDS) and "<bool>" not in text


@pytest.mark.parametrize("command", COMMANDS)
def test_no_help_text_is_read_as_markup(command):
    """Rich reads "[default: 12]" as a style tag and drops it: every option's help must survive markup
    (brackets escaped), and none may be empty."""
    click_command = typer.main.get_command(app).commands[command]
    for param in click_command.params:
        assert param.help, f"{command} {param.name}: no help"
        plain = Text.from_markup(param.help).plain
        assert plain == param.help.replace("\\[", "["), f"{command} {param.name}: markup ate {param.help!r}"


def test_readme_timings_are_ranges_and_say_what_they_depend_on():
    """One machine's "about 2 minutes" is wrong on the next: a duration is a range (e.g. "2-4 minutes")."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    durations = re.findall(r"(\S*\d\S*)\s+(?:minutes?|hours?)\b", readme)
    assert len(durations) >= 2  # the sweep's and the test suite's
    for amount in durations:
        assert re.fullmatch(r"\d+(\.\d+)?[-–]\d+(\.\d+)?", amount), amount
    assert "about 2 minutes" not in readme and "about 4 minutes" not in readme
    assert "depends on" in readme or "depend on" in readme
