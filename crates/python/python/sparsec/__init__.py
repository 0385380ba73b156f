"""sparsec from Python: the ``sparsec`` command, a DeepSparse-style question-answering
``Pipeline`` running sparsec's Rust pipeline in-process, and the ONNX Runtime custom-operator
library (``libsparsec_ops.so``, domain ``ai.sparsec``) that runs ``sparsec export --format sparse``
models in plain ``onnxruntime``.

sparsec loads ONNX Runtime's shared library at run time; importing this package points it at the
one inside the installed ``onnxruntime`` package (``ORT_DYLIB_PATH``, unless already set).
"""

from __future__ import annotations

from ._onnxruntime import locate_onnxruntime

locate_onnxruntime()

from ._native import __version__  # noqa: E402
from ._ops import ops_library, session_options  # noqa: E402
from .pipeline import Pipeline, QuestionAnsweringOutput, QuestionAnsweringPipeline  # noqa: E402

__all__ = [
    "Pipeline",
    "QuestionAnsweringOutput",
    "QuestionAnsweringPipeline",
    "__version__",
    "ops_library",
    "session_options",
]
