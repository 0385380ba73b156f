"""Finds ONNX Runtime's shared library inside the installed ``onnxruntime`` package, for the
native module (the Rust ``ort`` crate loads it at run time from ``ORT_DYLIB_PATH``)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional


def onnxruntime_library() -> Optional[Path]:
    """``onnxruntime/capi/libonnxruntime.so.*`` of the installed ``onnxruntime`` package (found
    without importing it), or ``None`` when the package or the library is absent."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        libs = sorted((Path(folder) / "capi").glob("libonnxruntime.so*"))
        if libs:
            return libs[-1]
    return None


def locate_onnxruntime() -> None:
    """Sets ``ORT_DYLIB_PATH`` to :func:`onnxruntime_library` unless it is set already. Without
    ``onnxruntime`` nothing is set, and a command that needs ONNX Runtime says how to install it."""
    if os.environ.get("ORT_DYLIB_PATH"):
        return
    lib = onnxruntime_library()
    if lib is not None:
        os.environ["ORT_DYLIB_PATH"] = str(lib)
