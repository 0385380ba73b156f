//! Training features (`run_qa.py`'s `prepare_train_features`): the target tokens cover exactly the
//! answer's characters in windows that contain it, and point at CLS (0) in windows that do not.

use crate::common;

use serde_json::Value;
use sparsec::qa::{QaTokenizer, WindowOptions};

#[test]
fn train_windows_point_at_the_answer_or_at_cls() {
    for model in common::FIXTURE_MODELS {
        let reference: Value = serde_json::from_str(
            &std::fs::read_to_string(common::fixture_dir(model).join("qa_reference.json")).unwrap(),
        )
        .unwrap();
        let case = reference["cases"].as_array().unwrap().iter().find(|c| c["name"] == "many_windows_64").unwrap();
        let (question, context) = (case["question"].as_str().unwrap(), case["context"].as_str().unwrap());
        let tok = QaTokenizer::from_file(&common::fixture_dir(model).join("tokenizer.json")).unwrap();
        let windower = tok.windower(WindowOptions { max_seq_len: 64, doc_stride: 32, max_question_len: 64 }).unwrap();
        let answer = "meadowlark";
        let start = context.find(answer).map(|b| context[..b].chars().count()).expect("answer in context");
        let end = start + answer.chars().count();
        let windows = windower.train_windows(question, context, start, answer.chars().count()).unwrap();
        assert_eq!(windows.len(), 20, "{model}");
        let (mut inside, mut outside) = (0, 0);
        for (i, tw) in windows.iter().enumerate() {
            let w = &tw.window;
            let (first, stop) = w.context_range().unwrap();
            let contains = w.offsets[first].0 <= start && w.offsets[stop - 1].1 >= end;
            if contains {
                inside += 1;
                let (s, e) = (tw.start_position, tw.end_position);
                assert!(first <= s && s <= e && e < stop, "{model} window {i}: {s}..{e} outside {first}..{stop}");
                assert!(w.offsets[s].0 <= start && w.offsets[e].1 >= end, "{model} window {i}: does not cover");
                assert!(
                    s == first || w.offsets[s + 1].0 > start,
                    "{model} window {i}: start not the last token <= start"
                );
                assert!(e + 1 == stop || e == s || w.offsets[e - 1].1 < end, "{model} window {i}: end not tight");
            } else {
                outside += 1;
                assert_eq!((tw.start_position, tw.end_position), (0, 0), "{model} window {i}: should point at CLS");
            }
        }
        assert!(inside >= 1 && outside >= 1, "{model}: {inside} windows with the answer, {outside} without");
    }
}

/// `Windower::train_windows` on the 20 SQuAD training examples of `fixtures/<m>/train_reference.json`
/// gives exactly the features HF's `prepare_train_features` made for the PyTorch training reference
/// (same windows, token ids, type ids, and answer start/end token positions).
#[test]
fn train_windows_equal_hf_prepare_train_features() {
    use sparsec::runtime::HostTensor;
    for model in common::FIXTURE_MODELS {
        let dir = common::fixture_dir(model);
        let json: Value = serde_json::from_slice(&std::fs::read(dir.join("train_reference.json")).unwrap()).unwrap();
        let tensors: std::collections::HashMap<String, HostTensor> =
            common::read_safetensors(&dir.join("train_reference.safetensors")).into_iter().collect();
        let ints = |name: &str| match &tensors[&format!("features.{name}")] {
            HostTensor::I64(a) => a.clone(),
            _ => panic!("{name} is not int64"),
        };
        let (ids, mask, starts, ends) =
            (ints("input_ids"), ints("attention_mask"), ints("start_positions"), ints("end_positions"));
        let tok = QaTokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
        let windower = tok.windower(WindowOptions { max_seq_len: 64, doc_stride: 32, max_question_len: 64 }).unwrap();
        let mut row = 0;
        for ex in json["examples"].as_array().unwrap() {
            let question = ex["question"].as_str().unwrap().trim_start();
            let context = ex["context"].as_str().unwrap();
            let start = ex["answer_start"].as_u64().unwrap() as usize;
            let len = ex["answer_text"].as_str().unwrap().chars().count();
            for tw in windower.train_windows(question, context, start, len).unwrap() {
                let n = tw.window.input_ids.len();
                let want: Vec<i64> = ids.index_axis(ndarray::Axis(0), row).iter().copied().take(n).collect();
                assert_eq!(tw.window.input_ids, want, "{model} feature {row}: input_ids");
                let real = mask.index_axis(ndarray::Axis(0), row).iter().filter(|&&m| m == 1).count();
                assert_eq!(n, real, "{model} feature {row}: length");
                assert_eq!(tw.start_position as i64, starts[row], "{model} feature {row}: start");
                assert_eq!(tw.end_position as i64, ends[row], "{model} feature {row}: end");
                row += 1;
            }
        }
        assert_eq!(row, ids.shape()[0], "{model}: number of features");
    }
}
