"""Type stubs of the ``sparsec`` package's public interface."""

from typing import TYPE_CHECKING

from .pipeline import Pipeline as Pipeline
from .pipeline import QuestionAnsweringOutput as QuestionAnsweringOutput
from .pipeline import QuestionAnsweringPipeline as QuestionAnsweringPipeline

if TYPE_CHECKING:
    import onnxruntime  # type: ignore[import-untyped]

__version__: str

def ops_library() -> str:
    """The path of the bundled ``libsparsec_ops.so`` (ONNX Runtime custom operators, domain
    ``ai.sparsec``)."""

def session_options() -> "onnxruntime.SessionOptions":
    """A new ``onnxruntime.SessionOptions`` with ``libsparsec_ops.so`` registered."""

__all__ = [
    "Pipeline",
    "QuestionAnsweringOutput",
    "QuestionAnsweringPipeline",
    "__version__",
    "ops_library",
    "session_options",
]
