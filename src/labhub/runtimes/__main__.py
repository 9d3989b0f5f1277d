"""``python -m labhub.runtimes``: list the built-in runtimes, or build one and print where it is."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from labhub.runtimes.build import RuntimeBuildError, build_sync
from labhub.runtimes.runtime import BUILTIN, is_built, location


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labhub.runtimes", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="the built-in runtimes and whether each is built under ROOT")
    listing.add_argument("--root", type=Path, required=True)
    building = commands.add_parser("build", help="build a built-in runtime under ROOT (a no-op when built)")
    building.add_argument("name", choices=sorted(BUILTIN))
    building.add_argument("--root", type=Path, required=True)
    building.add_argument("--python", help="the interpreter to make it from (default: the system's)")
    args = parser.parse_args(argv)
    if args.command == "list":
        for runtime in BUILTIN.values():
            state = "built" if is_built(args.root, runtime) else "not built"
            print(f"{runtime.name}\t{location(args.root, runtime)}\t{state}")
        return 0
    try:
        path = build_sync(args.root, BUILTIN[args.name], python=args.python,
                          progress=lambda line: print(line, file=sys.stderr, flush=True))
    except RuntimeBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
