"""The ``sparsec`` console command: the same command line as the Rust binary, run in-process."""

from __future__ import annotations

import signal
import sys

from . import _native


def main() -> None:
    """Runs ``sparsec`` with this process's arguments and exits with its status."""
    # Python's own SIGINT handler would hold Ctrl-C until the Rust call returns; the binary's
    # behaviour is the default action (`sparsec train` and `serve` install their own handlers).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(_native.run_cli(["sparsec", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
