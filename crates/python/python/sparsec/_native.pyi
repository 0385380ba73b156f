"""Type stubs of ``sparsec._native``, the Rust extension module (crates/python/src/lib.rs)."""

from os import PathLike
from pathlib import Path
from typing import List, Tuple, Union

__version__: str

#: One answer: ``(answer, score, start, end)``.
AnswerTuple = Tuple[str, float, int, int]

def run_cli(argv: List[str]) -> int:
    """Runs one ``sparsec`` command line (``argv[0]`` is the program name) in this process, with
    the GIL released; returns its exit status."""

class QaModel:
    """A loaded question-answering model: ``sparsec qa --model MODEL --batch-size N FLAGS...``."""

    batch_size: int
    top_k: int
    model_path: Path
    sequence_length: int

    def __init__(self, model: Union[str, PathLike[str]], batch_size: int, flags: List[str]) -> None: ...
    def answer(self, questions: List[str], contexts: List[str]) -> List[List[AnswerTuple]]:
        """Per question, up to ``top_k`` answers, best first, with the GIL released."""
