//! Benchmark: builds the span-loss training graph of `../shared/models/minilm-l6-squad/model.onnx`
//! (timed), then times one forward+backward step on ONNX Runtime at batch 8 x seq 384.
//! Prints one JSON line; `benches/autodiff_minilm.sh` runs it next to the PyTorch baseline.

use std::path::PathBuf;
use std::time::Instant;

use ndarray::ArrayD;
use sparsec::autodiff::{self, LossSpec, TrainingGraphSpec};
use sparsec::ir::modules;
use sparsec::onnx;
use sparsec::runtime::{self, EngineKind, EngineOptions, HostTensor};

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models/minilm-l6-squad");
    let (batch, seq) = (8usize, 384usize);
    let reps: usize = std::env::var("REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let m = onnx::load(dir.join("model.onnx")).expect("MiniLM model");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let names = modules::parameter_names(&m.graph);
    let mut spec = TrainingGraphSpec::new(LossSpec::Span);
    spec.zero_grad_rows = autodiff::loss::hf_padding_rows(&config, names.keys().map(String::as_str));
    let mut build_s = f64::INFINITY;
    let mut tg = None;
    for _ in 0..3 {
        let t0 = Instant::now();
        let g = autodiff::build_training_graph(&m, &spec).expect("training graph");
        build_s = build_s.min(t0.elapsed().as_secs_f64());
        tg = Some(g);
    }
    let tg = tg.unwrap();
    let bytes = onnx::encode_model(&tg.model);
    let t0 = Instant::now();
    let mut backend = runtime::load_bytes(&bytes, EngineKind::Ort, &EngineOptions::default()).expect("ORT session");
    let session_s = t0.elapsed().as_secs_f64();
    let n = batch * seq;
    let ints = |v: Vec<i64>, shape: Vec<usize>| HostTensor::I64(ArrayD::from_shape_vec(shape, v).unwrap());
    let ids: Vec<i64> = (0..n).map(|i| 1000 + (i as i64 * 7919) % 29000).collect();
    let feed = vec![
        ("input_ids", ints(ids, vec![batch, seq])),
        ("attention_mask", ints(vec![1; n], vec![batch, seq])),
        ("token_type_ids", ints((0..n).map(|i| ((i % seq) >= seq / 4) as i64).collect(), vec![batch, seq])),
        ("start_positions", ints((0..batch as i64).map(|b| 100 + b).collect(), vec![batch])),
        ("end_positions", ints((0..batch as i64).map(|b| 110 + b).collect(), vec![batch])),
    ];
    backend.run(&feed).expect("warm-up step");
    let mut times = Vec::new();
    let mut loss = 0.0;
    for _ in 0..reps {
        let t0 = Instant::now();
        let out = backend.run(&feed).expect("step");
        times.push(t0.elapsed().as_secs_f64());
        loss = out.iter().find(|(n, _)| n == "loss").unwrap().1.as_f32().unwrap().iter().next().copied().unwrap();
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({
            "engine": "sparsec autodiff on onnxruntime",
            "forward_nodes": m.graph.node_count(),
            "training_graph_nodes": tg.model.graph.node_count(),
            "parameters": tg.grads.entries.len(),
            "build_graph_s": build_s,
            "ort_session_s": session_s,
            "batch": batch, "seq": seq,
            "step_s_median": times[times.len() / 2],
            "step_s_all": times,
            "loss": loss,
        })
    );
}
