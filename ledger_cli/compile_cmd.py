"""``ledger compile [--check]``: rebuild the committed contract artifacts, or check them."""

from __future__ import annotations

import sys

from .common import add_command


def register(sub) -> None:
    p = add_command(
        sub,
        "compile",
        help="compile contracts/*.sol into contracts/build/*.json (--check: verify the committed artifacts)",
        handler=_compile,
        example="ledger compile --check      # exits 1 if contracts/build/ is stale",
        description=(
            "Compile the Solidity contracts with solc 0.8.28 (a native solc of that version on PATH or "
            "$LEDGER_SOLC, else the npm compiler in hardhat-config/node_modules via tools/solc-npm) and "
            "write contracts/build/<Name>.json: ABI, creation and runtime bytecode, compiler version and "
            "settings, sha256 of every source. Deploying uses these committed artifacts and needs no "
            "compiler. With --check nothing is written: the sources are recompiled and compared with the "
            "committed artifacts (ABI, code, metadata trailer, source hashes)."
        ),
    )
    p.add_argument("--check", action="store_true", help="compare a fresh compile with the committed artifacts; write nothing")
    p.add_argument(
        "--root", metavar="DIR",
        help="project directory holding contracts/ and contracts/build/ (default: this checkout)",
    )


def _compile(args, settings) -> int:
    from pathlib import Path

    from ledger.ethereum import compile as comp
    from ledger.errors import ConfigError
    from ledger.services.procs import PROJECT_ROOT

    root = Path(args.root).resolve() if args.root else PROJECT_ROOT
    if not (root / comp.CONTRACTS_SUBDIR).is_dir():
        raise ConfigError(f"{root} has no {comp.CONTRACTS_SUBDIR}/ directory (--root must be the project directory)")
    solc = comp.find_solc()
    if args.check:
        problems = comp.check(root, solc=solc)
        if problems:
            print("error: the committed contract artifacts do not match the sources:", file=sys.stderr)
            for p in problems:
                print(f"  - {p}", file=sys.stderr)
            print("run `ledger compile` and commit contracts/build/", file=sys.stderr)
            return 1
        print(f"{root / comp.BUILD_SUBDIR} is up to date ({solc.describe()})")
        return 0
    for path in comp.build(root, solc=solc):
        try:
            shown = path.relative_to(root)
        except ValueError:
            shown = path
        print(f"wrote {shown} ({solc.describe()})")
    return 0
