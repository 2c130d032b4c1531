"""One command table: ``oblix`` and ``%oblix``/``%%oblix`` offer one action with the same flags and help.

The checks read the parsers the two front ends actually build, and take from the
table only which arguments it declares for one front end alone, so an option added by
hand to one parser, or a help line that drifts, fails here.
"""

from __future__ import annotations

import argparse

import pytest
from test_cli import oblix

from oblix_jupyter.errors import BadArguments
from oblix_jupyter.frontends import cli, magics
from oblix_jupyter.frontends.commands import ASK_OPTIONS, BOTH, COMMANDS, AskOptions, Arg


def subcommands(parser: argparse.ArgumentParser) -> tuple[dict[str, argparse.ArgumentParser], dict[str, str | None]]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices, {choice.dest: choice.help for choice in action._choices_actions}


def described(parser: argparse.ArgumentParser) -> dict[object, tuple[object, ...]]:
    """Each argument as a user meets it, keyed by its spellings (options) or its name (positionals)."""
    return {
        tuple(action.option_strings) or action.dest: (action.metavar, action.help, action.choices, action.default, type(action).__name__)
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction)
    }


def one_sided(args: tuple[Arg, ...]) -> set[object]:
    """The arguments the table declares for one front end only, keyed as ``described`` keys them."""
    return {(arg.names if arg.names[0].startswith("-") else arg.dest) for arg in args if arg.where != BOTH}


CLI_COMMANDS, CLI_HELP = subcommands(cli.build_parser())
MAGIC_COMMANDS, MAGIC_HELP = subcommands(magics.line_parser())
SHARED = sorted({command.name for command in COMMANDS if command.where == BOTH})


@pytest.mark.parametrize("name", SHARED)
def test_a_command_both_front_ends_offer_has_one_help_and_the_same_arguments(name):
    assert CLI_HELP[name] == MAGIC_HELP[name]
    on_the_command_line, in_a_notebook = described(CLI_COMMANDS[name]), described(MAGIC_COMMANDS[name])
    for key in on_the_command_line.keys() & in_a_notebook.keys():
        assert on_the_command_line[key] == in_a_notebook[key], key
    (command,) = [command for command in COMMANDS if command.name == name]
    assert on_the_command_line.keys() ^ in_a_notebook.keys() == one_sided(command.args)


def test_oblix_ask_and_a_cell_share_their_options():
    on_the_command_line, in_a_cell = described(CLI_COMMANDS["ask"]), described(magics.Oblix.oblix_cell.parser)
    shared = on_the_command_line.keys() & in_a_cell.keys()
    assert {"--session", "--new", "--title", "--model", "--no-history", "--temperature", "--max-tokens"} <= {key[0] for key in shared}
    for key in shared:
        assert on_the_command_line[key] == in_a_cell[key], key
    assert on_the_command_line.keys() ^ in_a_cell.keys() == one_sided(ASK_OPTIONS)
    for option in in_a_cell.values():  # %%oblix? shows the same help
        assert option[1] in " ".join(magics.Oblix.oblix_cell.__doc__.split())


def test_a_name_both_front_ends_use_is_one_command_unless_the_table_declares_two_actions():
    for name in CLI_COMMANDS.keys() & MAGIC_COMMANDS.keys():
        declared = [command.where for command in COMMANDS if command.name == name]
        assert declared == [BOTH] or sorted(map(sorted, declared)) == [["cli"], ["magic"]], name


@pytest.mark.parametrize("spelling", ["--yes", "--force"])
def test_delete_takes_the_canonical_flag_and_its_old_spelling_in_both_front_ends(spelling):
    assert cli.build_parser().parse_args(["delete", "abc", spelling]).yes
    assert magics.parse_line_command(f"delete abc {spelling}").yes
    assert "[--yes]" in CLI_COMMANDS["delete"].format_usage() and "[--yes]" in magics.usage(MAGIC_COMMANDS["delete"])


def test_the_same_mistake_gets_the_same_message_in_both_front_ends():
    for cell_line, words, message in [
        ("--new --session abc", ["--new", "--session", "abc"], "--new and --session cannot be used together."),
        ("--session abc --title T", ["--session", "abc", "--title", "T"], "--title only goes with a new session (--new)."),
    ]:
        with pytest.raises(BadArguments, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
            magics.parse_cell_options(cell_line)
        with pytest.raises(BadArguments, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
            AskOptions.parsed(cli.build_parser().parse_args(["ask", *words, "hi"]), new_by_default=True)
    with pytest.raises(BadArguments, match="--max-tokens: expected a whole number of 1 or more, not '0'"):
        magics.parse_cell_options("--max-tokens 0")
    result = oblix("ask", "--max-tokens", "0", "hi")  # its usage lines first: ask's is long enough to wrap
    assert (result.returncode, result.stderr.splitlines()[-1]) == (1, "oblix: argument --max-tokens: expected a whole number of 1 or more, not '0'")


def test_on_the_command_line_a_question_starts_a_new_session_so_title_needs_no_new():
    options = AskOptions.parsed(cli.build_parser().parse_args(["ask", "--title", "T", "hi"]), new_by_default=True)
    assert (options.new, options.title, options.prompt) == (True, "T", ["hi"])
    with pytest.raises(BadArguments, match="--title only goes with a new session"):
        magics.parse_cell_options("--title T")  # a notebook continues its own session unless told --new
