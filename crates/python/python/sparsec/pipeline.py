"""A question-answering ``Pipeline`` with DeepSparse's interface: ``Pipeline.create(task=...,
model_path=..., ...)`` then ``pipeline(question=..., context=...)``. It runs ``sparsec qa``'s Rust
pipeline in-process: keyword arguments become ``sparsec qa``'s pipeline flags (DeepSparse's names
are mapped onto sparsec's), so names, defaults and checks are the command line's."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Union, overload

from . import _native

#: Task names accepted by :meth:`Pipeline.create` (DeepSparse's and Hugging Face's spellings).
QA_TASKS = frozenset({"question_answering", "question-answering", "qa"})

#: DeepSparse keyword → the ``sparsec qa`` flag it sets.
_DEEPSPARSE_NAMES = {
    "sequence_length": "max_seq_len",
    "max_question_length": "max_question_len",
    "num_cores": "threads",
    "version_2_with_negative": "handle_impossible_answer",
}

#: DeepSparse's ``engine_type`` → the ``sparsec qa`` flags it sets.
_ENGINE_TYPES: Dict[str, List[str]] = {
    # sparsec's engine: ONNX Runtime with sparsec's sparse kernels where they apply.
    "deepsparse": [],
    "sparsec": [],
    # ONNX Runtime's own kernels only.
    "onnxruntime": ["--kernels", "off"],
}


@dataclass(frozen=True)
class QuestionAnsweringOutput:
    """One answer, with the fields of DeepSparse's ``QuestionAnsweringOutput``:
    ``answer == context[start:end]`` (character offsets); the empty answer is ``("", 0, 0)``."""

    score: float
    answer: str
    start: int
    end: int

    def dict(self) -> Dict[str, Any]:
        """The fields as a dict (as DeepSparse's pydantic outputs give with ``.dict()``)."""
        return asdict(self)


Answer = Union[QuestionAnsweringOutput, List[QuestionAnsweringOutput]]


def _flags(kwargs: Dict[str, Any]) -> List[str]:
    """Keyword arguments as ``sparsec qa`` flags: ``name=value`` → ``--name value``, ``True`` →
    ``--name``; ``False`` and ``None`` are left out (the flag's default applies)."""
    out: List[str] = []
    for name, value in kwargs.items():
        if value is None or value is False:
            continue
        flag = "--" + _DEEPSPARSE_NAMES.get(name, name).replace("_", "-")
        if value is True:
            out.append(flag)
        elif isinstance(value, (int, float, str)):
            out.extend([flag, str(value)])
        else:
            raise TypeError(f"{name}: expected a number, string or boolean, got {type(value).__name__}")
    return out


class Pipeline:
    """Entry point with DeepSparse's shape: use :meth:`create`."""

    @staticmethod
    def create(
        task: str,
        model_path: Union[str, "os.PathLike[str]"],
        engine_type: str = "deepsparse",
        batch_size: int = 1,
        sequence_length: int = 128,
        **kwargs: Any,
    ) -> "QuestionAnsweringPipeline":
        """A question-answering pipeline for ``model_path`` (a ``model.onnx`` with
        ``tokenizer.json`` beside it, or a folder holding both, such as a ``sparsec export``
        deployment).

        ``task``: ``"question_answering"``, ``"question-answering"`` or ``"qa"``; any other is a
        ``ValueError``. ``engine_type``: ``"deepsparse"`` (the default: sparsec's kernels where
        they apply, on ONNX Runtime) or ``"onnxruntime"`` (ONNX Runtime's kernels only).
        ``batch_size``: windows per model run. ``sequence_length``: tokens per window (DeepSparse's
        default, 128; a model with a fixed sequence length uses its own).

        Other keywords are ``sparsec qa``'s pipeline flags with ``_`` for ``-`` (``doc_stride``,
        ``max_answer_length``, ``top_k``, ``handle_impossible_answer``, ``decoder``, ``kernels``,
        ``engine``, ``threads``, ``streams``, ``max_question_len``), or DeepSparse's names for them
        (``max_question_length``, ``num_cores``, ``version_2_with_negative``). An unknown keyword
        is a ``TypeError``, a bad value a ``ValueError``, a model that cannot be loaded a
        ``RuntimeError``.
        """
        if task.lower() not in QA_TASKS:
            raise ValueError(f"unknown task {task!r}: sparsec runs question answering ({', '.join(sorted(QA_TASKS))})")
        if engine_type not in _ENGINE_TYPES:
            raise ValueError(f"unknown engine_type {engine_type!r}: expected one of {', '.join(_ENGINE_TYPES)}")
        flags = _ENGINE_TYPES[engine_type] + _flags({"sequence_length": sequence_length, **kwargs})
        return QuestionAnsweringPipeline(_native.QaModel(os.fspath(model_path), batch_size, flags))


class QuestionAnsweringPipeline(Pipeline):
    """A loaded model; call it with ``question=`` and ``context=``."""

    def __init__(self, model: _native.QaModel) -> None:
        self._model = model

    @property
    def model_path(self) -> str:
        """The model file in use."""
        return os.fspath(self._model.model_path)

    @property
    def sequence_length(self) -> int:
        """Tokens per window."""
        return self._model.sequence_length

    @property
    def batch_size(self) -> int:
        """Windows per model run."""
        return self._model.batch_size

    @overload
    def __call__(self, *, question: str, context: str) -> Answer: ...

    @overload
    def __call__(self, *, question: List[str], context: List[str]) -> List[Answer]: ...

    @overload
    def __call__(self, input: Any) -> Union[Answer, List[Answer]]: ...

    def __call__(
        self,
        input: Optional[Any] = None,
        *,
        question: Union[str, Sequence[str], None] = None,
        context: Union[str, Sequence[str], None] = None,
    ) -> Union[Answer, List[Answer]]:
        """Answers one question (``str`` question and context: one output) or many (lists of
        equal length: a list of outputs, in order). With ``top_k`` above 1 each question's output
        is a list of up to ``top_k`` answers, best first. ``input`` may instead be an object with
        ``question`` and ``context`` attributes (DeepSparse's ``QuestionAnsweringInput``) or such
        a dict. The GIL is released while the model runs."""
        if input is not None:
            if question is not None or context is not None:
                raise TypeError("give either an input object or question= and context=, not both")
            if isinstance(input, dict):
                question, context = input.get("question"), input.get("context")
            else:
                question, context = getattr(input, "question", None), getattr(input, "context", None)
        if question is None or context is None:
            raise TypeError("a question-answering pipeline needs question= and context=")
        if isinstance(question, str) and isinstance(context, str):
            return self._outputs(self._model.answer([question], [context]))[0]
        if isinstance(question, str) or isinstance(context, str):
            raise TypeError("question and context must both be strings or both be lists of strings")
        return self._outputs(self._model.answer(list(question), list(context)))

    def _outputs(self, results: List[List["_native.AnswerTuple"]]) -> List[Answer]:
        outs: List[Answer] = []
        for answers in results:
            these = [QuestionAnsweringOutput(score=s, answer=a, start=b, end=e) for (a, s, b, e) in answers]
            if self._model.top_k == 1:
                outs.append(these[0] if these else QuestionAnsweringOutput(score=0.0, answer="", start=0, end=0))
            else:
                outs.append(these)
        return outs
