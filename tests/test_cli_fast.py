"""``refconv --help``, ``--version`` and argument errors answer without importing torch (well under a second)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from refconv import cli


def _imports_torch(code: str) -> bool:
    probe = code + "\nimport sys\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["no-such-command"], ["train", "--help"],
                                  ["train", "--epochs", "x"], ["pretrained"], ["pretrained", "list"]])
def test_help_version_and_argument_errors_do_not_import_torch(argv):
    code = (f"import refconv.cli\ntry:\n    refconv.cli.main({argv!r})\nexcept SystemExit:\n    pass")
    assert not _imports_torch(code)


def test_import_refconv_is_lazy_but_complete():
    assert not _imports_torch("import refconv, refconv.engine")
    assert _imports_torch("import refconv\nrefconv.convert")
    import refconv

    for name in refconv.__all__:
        assert getattr(refconv, name) is not None, name
    assert "convert" in dir(refconv)
    with pytest.raises(AttributeError):
        refconv.no_such_name  # noqa: B018


def test_command_table_matches_every_registered_parser():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    registered = {a.dest: a.help for a in sub._choices_actions}
    assert registered == {name: summary for name, (_, summary) in cli.COMMANDS.items()}


def _subparser(parser, command):
    return next(a for a in parser._actions if a.dest == "command").choices[command]


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_one_command_parser_equals_the_full_one(command):
    def flags(parser):
        return [(a.dest, tuple(a.option_strings)) for a in _subparser(parser, command)._actions]

    assert flags(cli.build_parser(command)) == flags(cli.build_parser())
    assert len(flags(cli.build_parser(command))) > 1


def test_exports_survive_importing_a_submodule_of_the_same_name():
    code = "import refconv.convert, refconv\nprint(callable(refconv.convert), refconv.convert.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "convert"]


@pytest.mark.parametrize("first", ["refconv.layers", "refconv.engine.runner", "refconv.transform"])
def test_exports_resolve_to_the_function_whatever_was_imported_first(first):
    code = f"import {first}, refconv\nprint(callable(refconv.convert), refconv.pretrained.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "refconv.models.pretrained"]
