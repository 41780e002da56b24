"""``python -m optadam COMMAND [options]``: optadam's command line.

Each command is a module with its own ``main(argv) -> int`` and ``--help``; this file only picks
the module from the first argument, so adding a command is one entry in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from optadam import demo

COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "demo": (demo.main, "race the optimizers on Rosenbrock, Beale and a Flax MLP; draw it")
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to its command; no or an unknown command prints usage and exits 2."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m optadam",
        usage="%(prog)s COMMAND [options]",
        description="optadam command line. Run '%(prog)s COMMAND --help' for a command's options.",
    )
    listing = "; ".join(f"'{name}': {text}" for name, (_, text) in COMMANDS.items())
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND", help=listing)
    args = parser.parse_args(argv[:1])
    return COMMANDS[args.command][0](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
