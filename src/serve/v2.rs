//! The Open Inference Protocol ("KServe v2") shapes of the QA pipeline: model and server
//! metadata, and inference requests as tensors. In: `question` and `context`, BYTES of shape
//! `[n]` (a `[1]` context is shared by every question). Out: `answer` BYTES, `score` FP32,
//! `start` and `end` INT64, each of shape `[n]`, or `[n, top_k]` with top-k above 1 (a question
//! with fewer answers is padded with empty ones, score 0). Inputs come as JSON `data` or, as
//! Triton's binary tensor extension sends them (tritonclient's default), as raw bytes after the
//! JSON header; outputs are always JSON. [`handlers`](super::handlers) routes and batches.

use serde_json::{json, Map, Value};

use crate::qa::{Answer, QaRequest};

/// The only version of every served model.
pub const VERSION: &str = "1";
pub const PLATFORM: &str = "sparsec";
pub const INPUTS: [&str; 2] = ["question", "context"];
pub const OUTPUTS: [(&str, &str); 4] = [("answer", "BYTES"), ("score", "FP32"), ("start", "INT64"), ("end", "INT64")];

/// A tensor request's questions and what its response echoes.
#[derive(Debug)]
pub struct TensorRequest {
    pub items: Vec<QaRequest>,
    pub id: String,
    /// Requested outputs in their order; all four when the request names none.
    pub outputs: Vec<&'static str>,
}

/// Whether `v` is a tensor request: `inputs` a list holding a named tensor, where Hugging Face's
/// `{"inputs": [{"question", "context"}]}` holds none.
pub fn is_tensor_request(v: &Value) -> bool {
    v.get("inputs")
        .and_then(Value::as_array)
        .is_some_and(|ts| ts.iter().any(|t| t.get("name").is_some() || t.get("datatype").is_some()))
}

/// Reads a tensor request; `binary` holds the bytes after the JSON header (empty without the
/// binary extension). Every error is a client's mistake (400).
pub fn parse(v: &Value, mut binary: &[u8]) -> Result<TensorRequest, String> {
    let Value::Object(o) = v else { return Err("the request must be a JSON object".to_string()) };
    let id = match o.get("id") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("'id' must be a string".to_string()),
    };
    let Some(Value::Array(tensors)) = o.get("inputs") else { return Err("'inputs' must be a list".to_string()) };
    let mut got: [Option<Vec<String>>; 2] = [None, None];
    for t in tensors {
        let (name, data) = input(t, &mut binary)?;
        let slot = &mut got[INPUTS.iter().position(|n| *n == name).expect("checked by input")];
        if slot.replace(data).is_some() {
            return Err(format!("input '{name}' is given twice"));
        }
    }
    if !binary.is_empty() {
        return Err(format!("{} bytes of binary data follow the inputs that claim them", binary.len()));
    }
    let [Some(questions), Some(contexts)] = got else {
        let missing = INPUTS.iter().zip(&got).find(|(_, g)| g.is_none()).map(|(n, _)| *n).expect("one is missing");
        return Err(format!("missing input '{missing}': the model takes BYTES inputs 'question' and 'context'"));
    };
    if questions.is_empty() {
        return Err("input 'question' holds no questions".to_string());
    }
    let contexts = match contexts.len() {
        n if n == questions.len() => contexts,
        1 => vec![contexts[0].clone(); questions.len()],
        n => {
            return Err(format!(
                "input 'context' holds {n} strings for {} questions: give one per question, or one for all",
                questions.len()
            ))
        }
    };
    let items =
        questions.into_iter().zip(contexts).map(|(question, context)| QaRequest { question, context }).collect();
    Ok(TensorRequest { items, id, outputs: requested_outputs(o.get("outputs"))? })
}

/// One input tensor: its name and strings, checked against its shape.
fn input(t: &Value, binary: &mut &[u8]) -> Result<(&'static str, Vec<String>), String> {
    let Value::Object(t) = t else { return Err("each input must be an object {name, shape, datatype, data}".into()) };
    let Some(Value::String(given)) = t.get("name") else { return Err("an input lacks its 'name'".to_string()) };
    let Some(&name) = INPUTS.iter().find(|n| **n == given.as_str()) else {
        return Err(format!("unknown input '{given}': the model takes 'question' and 'context'"));
    };
    match t.get("datatype") {
        Some(Value::String(d)) if d == "BYTES" => {}
        Some(Value::String(d)) => return Err(format!("input '{name}' has datatype {d}; it must be BYTES")),
        _ => return Err(format!("input '{name}' lacks its 'datatype' (BYTES)")),
    }
    let shape: Option<Vec<u64>> =
        t.get("shape").and_then(Value::as_array).and_then(|s| s.iter().map(Value::as_u64).collect());
    let Some(shape) = shape else {
        return Err(format!("input '{name}': 'shape' must be a list of non-negative integers"));
    };
    let [n] = shape[..] else {
        return Err(format!("input '{name}' has shape {shape:?}; it must be [n], one string per question"));
    };
    let size = t.get("parameters").and_then(|p| p.get("binary_data_size"));
    let data = match (size, t.get("data")) {
        (Some(size), _) => {
            let size = size.as_u64().ok_or_else(|| format!("input '{name}': 'binary_data_size' must be an integer"))?;
            let size = usize::try_from(size).ok().filter(|s| *s <= binary.len()).ok_or_else(|| {
                format!("input '{name}' claims {size} bytes of binary data; {} are left", binary.len())
            })?;
            let (mine, rest) = binary.split_at(size);
            *binary = rest;
            binary_strings(name, mine)?
        }
        (None, Some(d)) => {
            let mut out = Vec::new();
            flatten(name, d, &mut out)?;
            out
        }
        (None, None) => return Err(format!("input '{name}' has no 'data'")),
    };
    if data.len() as u64 != n {
        return Err(format!("input '{name}' has shape [{n}] but holds {} strings", data.len()));
    }
    Ok((name, data))
}

/// Row-major strings of a (possibly nested) JSON `data` list.
fn flatten(name: &str, v: &Value, out: &mut Vec<String>) -> Result<(), String> {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().try_for_each(|x| flatten(name, x, out))?,
        other => return Err(format!("input '{name}': BYTES data must be strings, got {other}")),
    }
    Ok(())
}

/// A BYTES tensor in the binary extension: each element a little-endian u32 length, then its bytes.
fn binary_strings(name: &str, mut b: &[u8]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let bad = || format!("input '{name}': the binary data is not length-prefixed strings");
        let len: [u8; 4] = b.get(..4).ok_or_else(bad)?.try_into().expect("4 bytes");
        let len = u32::from_le_bytes(len) as usize;
        let s = b.get(4..4 + len).ok_or_else(bad)?;
        out.push(String::from_utf8(s.to_vec()).map_err(|_| format!("input '{name}': a string is not UTF-8"))?);
        b = &b[4 + len..];
    }
    Ok(out)
}

fn requested_outputs(v: Option<&Value>) -> Result<Vec<&'static str>, String> {
    let Some(v) = v else { return Ok(OUTPUTS.iter().map(|(n, _)| *n).collect()) };
    let Value::Array(list) = v else { return Err("'outputs' must be a list of {name}".to_string()) };
    list.iter()
        .map(|o| {
            let given = o.get("name").and_then(Value::as_str).ok_or("each requested output needs a 'name'")?;
            OUTPUTS.iter().map(|(n, _)| *n).find(|n| *n == given).ok_or_else(|| {
                format!("unknown output '{given}': the model gives 'answer', 'score', 'start' and 'end'")
            })
        })
        .collect()
}

/// The inference response: the requested outputs over every question's answers.
pub fn response(model: &str, req: &TensorRequest, answers: &[Vec<Answer>], top_k: usize) -> Value {
    let empty = Answer { answer: String::new(), score: 0.0, start: 0, end: 0 };
    let rows: Vec<&Answer> =
        answers.iter().flat_map(|a| (0..top_k).map(|i| a.get(i).unwrap_or(&empty)).collect::<Vec<_>>()).collect();
    let shape = if top_k == 1 { json!([answers.len()]) } else { json!([answers.len(), top_k]) };
    let outputs: Vec<Value> = req
        .outputs
        .iter()
        .map(|&name| {
            let data: Vec<Value> = match name {
                "answer" => rows.iter().map(|a| json!(a.answer)).collect(),
                "score" => rows.iter().map(|a| json!(a.score as f32)).collect(),
                "start" => rows.iter().map(|a| json!(a.start)).collect(),
                _ => rows.iter().map(|a| json!(a.end)).collect(),
            };
            json!({ "name": name, "datatype": datatype(name), "shape": shape, "data": data })
        })
        .collect();
    json!({ "model_name": model, "model_version": VERSION, "id": req.id, "outputs": outputs })
}

fn datatype(output: &str) -> &'static str {
    OUTPUTS.iter().find(|(n, _)| *n == output).map(|(_, d)| *d).expect("a listed output")
}

/// Model metadata: the protocol's fields, then `extra` (sparsec's own) beside them.
pub fn model_metadata(name: &str, top_k: usize, extra: Map<String, Value>) -> Value {
    let inputs: Vec<Value> = INPUTS.iter().map(|n| json!({ "name": n, "datatype": "BYTES", "shape": [-1] })).collect();
    let shape = if top_k == 1 { json!([-1]) } else { json!([-1, top_k]) };
    let outputs: Vec<Value> =
        OUTPUTS.iter().map(|(n, d)| json!({ "name": n, "datatype": d, "shape": shape })).collect();
    let mut m = Map::new();
    m.insert("name".into(), json!(name));
    m.insert("versions".into(), json!([VERSION]));
    m.insert("platform".into(), json!(PLATFORM));
    m.insert("inputs".into(), json!(inputs));
    m.insert("outputs".into(), json!(outputs));
    for (k, v) in extra {
        m.entry(k).or_insert(v);
    }
    Value::Object(m)
}

pub fn server_metadata() -> Value {
    json!({ "name": "sparsec", "version": env!("CARGO_PKG_VERSION"), "extensions": [] })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, shape: Value, data: Value) -> Value {
        json!({ "name": name, "shape": shape, "datatype": "BYTES", "data": data })
    }

    #[test]
    fn a_single_context_is_shared_by_every_question() {
        let v = json!({ "inputs": [tensor("question", json!([2]), json!(["a", "b"])), tensor("context", json!([1]), json!(["c"]))] });
        assert!(is_tensor_request(&v));
        let r = parse(&v, &[]).unwrap();
        assert_eq!(r.items.len(), 2);
        assert_eq!(r.items[1].context, "c");
        assert_eq!(r.outputs, ["answer", "score", "start", "end"]);
    }

    #[test]
    fn binary_inputs_are_length_prefixed_strings_in_input_order() {
        let mut bin = Vec::new();
        for s in ["why?", "because."] {
            bin.extend((s.len() as u32).to_le_bytes());
            bin.extend(s.as_bytes());
        }
        let t = |name: &str, size: usize| json!({ "name": name, "shape": [1], "datatype": "BYTES", "parameters": { "binary_data_size": size } });
        let v = json!({ "inputs": [t("question", 8), t("context", 12)] });
        let r = parse(&v, &bin).unwrap();
        assert_eq!((r.items[0].question.as_str(), r.items[0].context.as_str()), ("why?", "because."));
        assert!(parse(&v, &bin[..15]).unwrap_err().contains("claims 12 bytes"));
    }

    #[test]
    fn hugging_face_inputs_are_not_tensors() {
        assert!(!is_tensor_request(&json!({ "inputs": [{ "question": "q", "context": "c" }] })));
        assert!(!is_tensor_request(&json!({ "inputs": { "question": "q", "context": "c" } })));
    }

    #[test]
    fn padded_rows_fill_top_k() {
        let req = TensorRequest { items: vec![], id: "7".into(), outputs: vec!["answer", "score"] };
        let a = |s: &str| Answer { answer: s.into(), score: 0.5, start: 1, end: 2 };
        let r = response("m", &req, &[vec![a("x"), a("y")], vec![a("z")]], 2);
        assert_eq!(r["outputs"][0]["shape"], json!([2, 2]));
        assert_eq!(r["outputs"][0]["data"], json!(["x", "y", "z", ""]));
        assert_eq!(r["outputs"][1]["data"], json!([0.5, 0.5, 0.5, 0.0]));
        assert_eq!(r["id"], "7");
    }
}
