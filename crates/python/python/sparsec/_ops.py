"""The bundled ``libsparsec_ops.so``: sparsec's ONNX Runtime custom operators (domain
``ai.sparsec``: sparse int8/fp32 linears, fused attention, layer normalization), which models
written by ``sparsec export --format sparse`` need in plain ``onnxruntime``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnxruntime  # type: ignore[import-untyped]

_LIBRARY = "libsparsec_ops.so"


def ops_library() -> str:
    """The path of the ``libsparsec_ops.so`` shipped in this package, for
    ``SessionOptions.register_custom_ops_library``."""
    path = Path(__file__).resolve().parent / _LIBRARY
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: this sparsec was built without its operator library "
            "(build the wheel with `pip wheel .`, or run crates/python/backend/sparsec_build_backend.py "
            "before `maturin build`)"
        )
    return str(path)


def session_options() -> "onnxruntime.SessionOptions":
    """A new ``onnxruntime.SessionOptions`` with sparsec's operators registered."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.register_custom_ops_library(ops_library())
    return options
