"""How every ``edgehub`` command explains itself: a description, options with their defaults, and
examples to copy. ``command(sub, ...)`` makes a subcommand's parser that way; a test walks the
whole parser and holds every command and option to it."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

__all__ = ["Help", "command"]


class Help(argparse.HelpFormatter):
    """Descriptions filled to the terminal's width (a blank line starts a paragraph), examples as
    written; each option's default shown where it has one worth showing (not for flags, nor
    where the help text says it already)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return "\n\n".join(textwrap.fill(" ".join(part.split()), width, initial_indent=indent,
                                          subsequent_indent=indent) for part in text.split("\n\n"))

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        # --help and --version have the default SUPPRESS.
        if "default" in text or not action.option_strings or default in (None, False, [], argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def command(sub: Any, name: str, summary: str, description: str, examples: list[str],
            **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand parser: ``summary`` in the parent's list, ``description`` on top of its help,
    ``examples`` at the bottom."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
    parser: argparse.ArgumentParser = sub.add_parser(name, help=summary, description=description, epilog=epilog,
                                                     formatter_class=Help, **kwargs)
    return parser
