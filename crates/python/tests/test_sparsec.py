"""The installed ``sparsec`` wheel, tested from a fresh virtual environment (tests/python_pkg.rs
builds the wheel, makes the venv and runs this file there).

``SPARSEC_BIN`` names the reference ``sparsec`` binary (cargo's build); the fixtures are read from
the repository this file lives in.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import onnxruntime as ort
import pytest

import sparsec

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "fixtures"
SCORE_TOL = 1e-6


def venv_sparsec() -> str:
    """The ``sparsec`` console command this environment installed."""
    path = Path(sys.prefix) / "bin" / "sparsec"
    assert path.is_file(), f"no console script at {path}"
    return str(path)


def reference_bin() -> str:
    return os.environ.get("SPARSEC_BIN") or shutil.which("sparsec") or venv_sparsec()


def run(cmd: List[str], **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


# --- the command -------------------------------------------------------------------------------


def test_version_from_the_venv_command_equals_the_package_and_cargo_versions() -> None:
    out = run([venv_sparsec(), "--version"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"sparsec {sparsec.__version__}"
    assert sparsec.__version__ == importlib.metadata.version("sparsec")
    ref = run([reference_bin(), "--version"])
    assert ref.stdout == out.stdout


def test_the_venv_command_propagates_exit_codes() -> None:
    missing = run([venv_sparsec(), "qa", "--model", "/nonexistent/model.onnx", "--question", "q", "--context", "c"])
    assert missing.returncode == 1
    assert missing.stderr.startswith("error:") and "/nonexistent/" in missing.stderr
    usage = run([venv_sparsec(), "no-such-command"])
    assert usage.returncode == 2
    assert "no-such-command" in usage.stderr
    helped = run([venv_sparsec(), "qa", "--help"])
    assert helped.returncode == 0 and "--max-seq-len" in helped.stdout


def test_the_venv_command_runs_qa_in_process_like_the_binary() -> None:
    model = FIXTURES / "bert" / "model.legacy.onnx"
    args = ["qa", "--model", str(model), "--question", "Who?", "--context", "Ada Lovelace wrote it.", "--json"]
    mine, ref = run([venv_sparsec(), *args]), run([reference_bin(), *args])
    assert mine.returncode == 0 and ref.returncode == 0, (mine.stderr, ref.stderr)
    assert json.loads(mine.stdout) == json.loads(ref.stdout)


def test_importing_sparsec_points_it_at_the_installed_onnxruntime() -> None:
    lib = Path(os.environ["ORT_DYLIB_PATH"])
    assert lib.parent == Path(ort.__file__).resolve().parent / "capi"
    assert lib.name.startswith("libonnxruntime.so") and lib.is_file()


# --- the pipeline ------------------------------------------------------------------------------


def cases() -> List[Tuple[str, str, Dict[str, Any], List[Dict[str, str]]]]:
    """(model label, model path, pipeline settings, questions): every fixture model's
    qa_reference.json cases grouped by settings, and bert's fixed-shape exports."""
    out = []
    for name in ["bert", "distilbert", "roberta"]:
        ref = json.loads((FIXTURES / name / "qa_reference.json").read_text())
        groups: Dict[str, Tuple[Dict[str, Any], List[Dict[str, str]]]] = {}
        for case in ref["cases"]:
            kw = case["kwargs"]
            settings = {
                "sequence_length": kw["max_seq_len"],
                "doc_stride": kw["doc_stride"],
                "max_question_length": kw["max_question_len"],
                "max_answer_length": kw["max_answer_len"],
                "top_k": kw["top_k"],
                "version_2_with_negative": kw["handle_impossible_answer"],
            }
            key = json.dumps(settings, sort_keys=True)
            groups.setdefault(key, (settings, []))[1].append({"question": case["question"], "context": case["context"]})
        for settings, questions in groups.values():
            out.append((name, str(FIXTURES / name / "model.legacy.onnx"), settings, questions))
    bert = json.loads((FIXTURES / "bert" / "qa_reference.json").read_text())
    plain = [{"question": c["question"], "context": c["context"]} for c in bert["cases"]]
    out.append(("bert-static-b128", str(FIXTURES / "bert" / "model.static-b128.onnx"), {"batch_size": 3}, plain))
    out.append(("bert-static-1x384", str(FIXTURES / "bert" / "model.static-1x384.onnx"), {"batch_size": 4}, plain))
    return out


CASES = cases()


def qa_flags(settings: Dict[str, Any]) -> List[str]:
    """The `sparsec qa` flags for the same settings (the DeepSparse names spelled sparsec's way)."""
    names = {
        "sequence_length": "--max-seq-len",
        "doc_stride": "--doc-stride",
        "max_question_length": "--max-question-len",
        "max_answer_length": "--max-answer-length",
        "top_k": "--top-k",
        "batch_size": "--batch-size",
    }
    flags = ["--max-seq-len", "128"] if "sequence_length" not in settings else []
    flags += ["--batch-size", "1"] if "batch_size" not in settings else []
    for k, v in settings.items():
        if k == "version_2_with_negative":
            flags += ["--handle-impossible-answer"] if v else []
        else:
            flags += [names[k], str(v)]
    return flags


def sparsec_qa(model: str, settings: Dict[str, Any], questions: List[Dict[str, str]], tmp: Path) -> List[Any]:
    """`sparsec qa --file` on the reference binary: per question, its answer (top_k 1) or answers."""
    file = tmp / "questions.jsonl"
    file.write_text("".join(json.dumps({"id": str(i), **q}) + "\n" for i, q in enumerate(questions)))
    out = run([reference_bin(), "qa", "--model", model, "--file", str(file), *qa_flags(settings)])
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["id"] for line in lines] == [str(i) for i in range(len(questions))]
    return [line["answer"] if "answer" in line else line["answers"] for line in lines]


def assert_same(got: sparsec.QuestionAnsweringOutput, want: Dict[str, Any], what: str) -> None:
    assert (got.answer, got.start, got.end) == (want["answer"], want["start"], want["end"]), (what, got, want)
    assert abs(got.score - want["score"]) <= SCORE_TOL, (what, got.score, want["score"])


@pytest.mark.parametrize("label,model,settings,questions", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_pipeline_answers_equal_sparsec_qa(
    label: str, model: str, settings: Dict[str, Any], questions: List[Dict[str, str]], tmp_path: Path
) -> None:
    want = sparsec_qa(model, settings, questions, tmp_path)
    pipe = sparsec.Pipeline.create(task="question-answering", model_path=model, **settings)
    # Lists in, a list out, in order.
    many = pipe(question=[q["question"] for q in questions], context=[q["context"] for q in questions])
    assert isinstance(many, list) and len(many) == len(questions)
    for i, (q, got, ref) in enumerate(zip(questions, many, want)):
        one = pipe(question=q["question"], context=q["context"])
        if settings.get("top_k", 1) == 1:
            assert isinstance(got, sparsec.QuestionAnsweringOutput)
            assert_same(got, ref, f"{label} #{i} (list)")
            assert_same(one, ref, f"{label} #{i}")
            assert q["context"][got.start : got.end] == got.answer
        else:
            assert isinstance(got, list) and len(got) == len(ref) and 1 < len(ref) <= settings["top_k"]
            for g, o, r in zip(got, one, ref):
                assert_same(g, r, f"{label} #{i} (list)")
                assert_same(o, r, f"{label} #{i}")


def test_pipeline_takes_deepsparse_spellings_and_input_objects() -> None:
    model = FIXTURES / "bert" / "model.legacy.onnx"
    ctx = "The company was founded by Ada Lovelace in London in 1843."
    a = sparsec.Pipeline.create(task="qa", model_path=model)
    b = sparsec.Pipeline.create("question_answering", str(model), engine_type="onnxruntime")
    assert a.sequence_length == 128 and a.batch_size == 1
    assert a.model_path == str(model)

    class Input:
        question = "Who founded the company?"
        context = ctx

    first = a(question=Input.question, context=ctx)
    assert a(Input()) == first
    assert a({"question": Input.question, "context": ctx}) == first
    assert first.dict() == {"score": first.score, "answer": first.answer, "start": first.start, "end": first.end}
    # ONNX Runtime's own kernels give the same span on this dense model.
    other = b(question=Input.question, context=ctx)
    assert (other.answer, other.start, other.end) == (first.answer, first.start, first.end)
    assert abs(other.score - first.score) < 1e-4


def test_pipeline_rejects_bad_tasks_keywords_values_and_models(tmp_path: Path) -> None:
    model = FIXTURES / "bert" / "model.legacy.onnx"
    with pytest.raises(ValueError, match="unknown task 'text_classification'"):
        sparsec.Pipeline.create(task="text_classification", model_path=model)
    with pytest.raises(TypeError, match="no_such_option|no-such-option"):
        sparsec.Pipeline.create(task="qa", model_path=model, no_such_option=3)
    with pytest.raises(ValueError, match="top-k"):
        sparsec.Pipeline.create(task="qa", model_path=model, top_k=0)
    with pytest.raises(ValueError):
        sparsec.Pipeline.create(task="qa", model_path=model, engine_type="tensorrt")
    with pytest.raises(RuntimeError, match="not found"):
        sparsec.Pipeline.create(task="qa", model_path=tmp_path / "missing.onnx")
    pipe = sparsec.Pipeline.create(task="qa", model_path=model)
    with pytest.raises(ValueError, match="question 1"):
        pipe(question=["Who?", ""], context=["Ada wrote it.", "Ada wrote it."])
    with pytest.raises(ValueError, match="2 questions but 1 contexts"):
        pipe(question=["Who?", "What?"], context=["Ada wrote it."])
    with pytest.raises(TypeError):
        pipe(question="Who?", context=["Ada wrote it."])


def test_pipeline_releases_the_gil_while_it_runs() -> None:
    model = FIXTURES / "bert" / "model.legacy.onnx"
    pipe = sparsec.Pipeline.create(task="qa", model_path=model, sequence_length=64, doc_stride=32)
    ref = json.loads((FIXTURES / "bert" / "qa_reference.json").read_text())
    long = next(c for c in ref["cases"] if c["name"] == "long_384")
    questions, contexts = [long["question"]] * 8, [long["context"]] * 8
    window: Dict[str, float] = {}

    def work() -> None:
        window["start"] = time.perf_counter()
        pipe(question=questions, context=contexts)
        window["end"] = time.perf_counter()

    t = threading.Thread(target=work)
    ticks: List[float] = []
    t.start()
    while t.is_alive():
        ticks.append(time.perf_counter())
    t.join()
    took = window["end"] - window["start"]
    inside = [x for x in ticks if window["start"] + 0.1 * took < x < window["end"] - 0.1 * took]
    # Holding the GIL for the whole call would leave no ticks inside its middle 80%.
    assert took > 0.05, f"the call took only {took:.3f} s: too short to tell"
    assert len(inside) > 100, f"{len(inside)} ticks of the main thread during a {took:.3f} s call"


# --- the operator library ----------------------------------------------------------------------


def test_plain_onnxruntime_runs_a_sparse_export_with_session_options(tmp_path: Path) -> None:
    lib = Path(sparsec.ops_library())
    assert lib.is_file() and lib.parent == Path(sparsec.__file__).resolve().parent
    compiled, qdq, sparse = tmp_path / "compiled", tmp_path / "qdq", tmp_path / "sparse"
    recipe = ROOT / "recipes" / "gmp80-block4x1-qat-distill.yaml"
    cmd = venv_sparsec()
    model = FIXTURES / "bert" / "model.legacy.onnx"
    out = run([cmd, "compile", str(model), "--recipe", str(recipe), "-o", str(compiled)])
    assert out.returncode == 0, out.stderr
    for folder, fmt in [(qdq, "qdq"), (sparse, "sparse")]:
        out = run(
            [cmd, "export", "--model", str(compiled), "-o", str(folder), "--one-shot", "16"]
            + ["--calibration-file", str(FIXTURES / "squad-tiny.json"), "--format", fmt]
        )
        assert out.returncode == 0, out.stderr
    exported = str(sparse / "model.onnx")
    # Without sparsec's operators ONNX Runtime cannot load it: the file needs the ai.sparsec domain.
    with pytest.raises(Exception, match="ai.sparsec|SparseLinear"):
        ort.InferenceSession(exported, providers=["CPUExecutionProvider"])
    s = ort.InferenceSession(exported, sparsec.session_options(), providers=["CPUExecutionProvider"])
    base = ort.SessionOptions()
    base.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    r = ort.InferenceSession(str(qdq / "model.onnx"), base, providers=["CPUExecutionProvider"])
    b, t = 2, 23
    i, j = np.meshgrid(np.arange(b), np.arange(t), indexing="ij")
    feeds = {
        "input_ids": (5 + (i * 131 + j * 37) % 900).astype(np.int64),
        "attention_mask": ((i == 0) | (j < 15)).astype(np.int64),
        "token_type_ids": (j >= 9).astype(np.int64),
    }
    got = s.run(None, {k: v for k, v in feeds.items() if k in {x.name for x in s.get_inputs()}})
    ref = r.run(None, {k: v for k, v in feeds.items() if k in {x.name for x in r.get_inputs()}})
    assert [g.shape for g in got] == [(b, t), (b, t)]
    diff = max(float(np.abs(g - w).max()) for g, w in zip(got, ref))
    assert diff <= 1e-3, diff
    # And the deployment answers through the Pipeline as through `sparsec qa`.
    question = {"question": "Who founded the company?", "context": "The company was founded by Ada Lovelace."}
    want = sparsec_qa(str(sparse), {"sequence_length": 64}, [question], tmp_path)[0]
    got_answer = sparsec.Pipeline.create(task="qa", model_path=sparse, sequence_length=64)(**question)
    assert_same(got_answer, want, "sparse deployment")
