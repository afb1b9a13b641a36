"""The ``mmsy`` command.

Subcommands are the ``mmsy.commands`` entry points of the installed packages,
each a ``main(argv)`` function. Only the chosen subcommand's module is
imported, so ``mmsy build`` never loads torch or the model packages.
"""

import sys
from importlib.metadata import entry_points

from mmsy_tasks.paths import task_folder

GROUP = "mmsy.commands"

SUMMARIES = {
    "build": "build the MM-SY dataset from easy-VQA, TDIUC or VQA-format JSON",
    "tasks-path": "print the lmms-eval task folder for --include_path",
    "eval": "run lmms-eval with the MM-SY tasks included",
    "report": "write tables and plots from lmms-eval output folders",
    "organism": "train or load the cached model organism",
    "demo": "build, train the organism, evaluate and report, end to end",
}


def _commands() -> dict:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def _usage(commands: dict) -> str:
    lines = ["usage: mmsy COMMAND [ARGS...]", "", "commands:"]
    for name in sorted(commands):
        lines.append(f"  {name:<12} {SUMMARIES.get(name, '')}".rstrip())
    lines.append("")
    lines.append("Run `mmsy COMMAND --help` for the options of one command.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``mmsy COMMAND ARGS...`` to the command's entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _commands()
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(commands))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"mmsy: unknown command {name!r}\n\n{_usage(commands)}", file=sys.stderr)
        return 2
    command = commands[name].load()
    return command(rest) or 0


def tasks_path_main(argv: list[str]) -> int:
    """Print the task folder to pass as lmms-eval's ``--include_path``."""
    if argv and argv[0] in ("-h", "--help"):
        print("usage: mmsy tasks-path\n\nPrint the MM-SY task folder for lmms-eval's --include_path.")
        return 0
    print(task_folder())
    return 0


if __name__ == "__main__":
    sys.exit(main())
