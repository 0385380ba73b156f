"""PEP 517 build backend of the sparsec wheel: maturin's, after one step maturin cannot take.

maturin packs one Rust library per wheel (here the PyO3 module ``sparsec._native``), but the wheel
also ships ``libsparsec_ops.so``, the ONNX Runtime custom-operator library of crates/ops, which
Python's ``onnxruntime`` loads with ``register_custom_ops_library``. It must be a library of its
own: it binds to the ONNX Runtime of the ``onnxruntime`` Python module that loads it, while
``_native`` binds to ``libonnxruntime.so``, and one ``ort`` crate in one library holds one of the
two. So before maturin builds the wheel, this backend builds that library with cargo (same target
folder and profile as maturin's build) and copies it into the package folder, where
``pyproject.toml``'s ``include`` puts it in the wheel as ``sparsec/libsparsec_ops.so``.

``pip install .`` and ``pip wheel .`` go through this backend. With maturin's own command line,
run this file first: ``python3 crates/python/backend/sparsec_build_backend.py [--profile P]``,
then ``maturin build [--profile P]``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "crates" / "python" / "python" / "sparsec"
LIBRARY = "libsparsec_ops.so"


def _cargo() -> str:
    return os.environ.get("CARGO", "cargo")


def profile_of(args: List[str], default: str) -> str:
    """The cargo profile maturin builds with, from its arguments (``--release``, ``-r``,
    ``--profile P``, ``--profile=P``); ``default`` when none is given (maturin's PEP 517 builds,
    editable ones too, default to ``release``)."""
    profile = default
    for i, a in enumerate(args):
        if a in ("--release", "-r"):
            profile = "release"
        elif a == "--profile" and i + 1 < len(args):
            profile = args[i + 1]
        elif a.startswith("--profile="):
            profile = a.split("=", 1)[1]
    return profile


def target_dir() -> Path:
    """The workspace's target folder (``CARGO_TARGET_DIR`` and cargo's config included)."""
    out = subprocess.run(
        [_cargo(), "metadata", "--format-version", "1", "--no-deps", "--manifest-path", str(ROOT / "Cargo.toml")],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(json.loads(out.stdout)["target_directory"])


def stage_ops_library(profile: str) -> Path:
    """Builds ``libsparsec_ops.so`` with ``profile`` and copies it into the package folder;
    returns the copy's path.

    The library is built as what it is in the wheel, a dependency of the native module: cargo
    builds ``sparsec-python`` (crates/ops' ``cdylib`` comes out beside it, in ``deps/``) with the
    same features and profile as maturin's build right after, which then finds it built. Building
    ``-p sparsec-ops`` alone would give the crate other features and a second build writing the
    same file, so each of the two builds would undo the other."""
    subprocess.run(
        [_cargo(), "build", "--manifest-path", str(ROOT / "Cargo.toml"), "-p", "sparsec-python", "--lib"]
        + ["--profile", profile],
        check=True,
        stdout=sys.stderr,
    )
    folder = {"dev": "debug", "test": "debug", "bench": "release"}.get(profile, profile)
    built = target_dir() / folder / "deps" / LIBRARY
    dest = PACKAGE / LIBRARY
    shutil.copyfile(built, dest)
    return dest


def _maturin_args(config_settings: Optional[Dict[str, Any]]) -> List[str]:
    """The extra maturin arguments a PEP 517 build was given (``MATURIN_PEP517_ARGS``, or the
    ``build-args`` config setting), as maturin's own backend reads them."""
    settings = config_settings or {}
    text = settings.get("maturin.build-args", settings.get("build-args")) or os.environ.get("MATURIN_PEP517_ARGS", "")
    return shlex.split(text) if isinstance(text, str) else list(text)


def build_wheel(
    wheel_directory: str,
    config_settings: Optional[Dict[str, Any]] = None,
    metadata_directory: Optional[str] = None,
) -> str:
    import maturin

    stage_ops_library(profile_of(_maturin_args(config_settings), "release"))
    return maturin.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(
    wheel_directory: str,
    config_settings: Optional[Dict[str, Any]] = None,
    metadata_directory: Optional[str] = None,
) -> str:
    import maturin

    stage_ops_library(profile_of(_maturin_args(config_settings), "release"))
    return maturin.build_editable(wheel_directory, config_settings, metadata_directory)


def __getattr__(name: str) -> Any:
    """Every other hook (metadata, requirements, sdist) is maturin's own."""
    import maturin

    return getattr(maturin, name)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Builds libsparsec_ops.so into the package before `maturin build`.")
    parser.add_argument("--profile", default="dev", help="cargo profile, as given to maturin (default: dev)")
    parser.add_argument("--release", action="store_true", help="the release profile")
    a = parser.parse_args()
    print(stage_ops_library("release" if a.release else a.profile))
