"""Write docs/cli.md from the click commands themselves (their --help text, fixed width).

``python scripts/gen_cli_docs.py`` rewrites the file; ``--check`` exits 1 when it is out of
date. tests/test_docs.py runs the check, so the reference cannot drift from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from facenet_convert.converter.cli import main as cli_group

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
WIDTH = 100
HEADER = """# Command-line reference

Generated from the commands' own `--help` by `scripts/gen_cli_docs.py` (do not edit by hand;
`tests/test_docs.py` fails when this file is out of date). Guides: [conversion](conversion.md),
[parity](parity.md), [use](use.md), [export](export.md), [scale-out](scale-out.md).
"""


def _context(command: click.Command, name: str, parent: click.Context | None) -> click.Context:
    """The context click itself makes (the group's context_settings apply: ``-h``), at a
    fixed width whatever the terminal."""
    return command.make_context(name, [], parent=parent, resilient_parsing=True,
                                terminal_width=WIDTH, max_content_width=WIDTH)


def render() -> str:
    root = _context(cli_group, "facenet-convert", None)
    parts = [HEADER, "## facenet-convert\n", "```text", cli_group.get_help(root), "```\n"]
    for name in sorted(cli_group.list_commands(root)):
        command = cli_group.get_command(root, name)
        if command is None or command.hidden:
            continue
        parts += [f"## {name}\n", "```text", command.get_help(_context(command, name, root)),
                  "```\n"]
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not DOC.is_file() or DOC.read_text(encoding="utf-8") != text:
            print(f"{DOC} is out of date: run python scripts/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
