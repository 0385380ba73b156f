//! Pruning algorithms against explicit references (fixtures/prune/*.py, committed outputs):
//! OBS's scores, masks and weight update equal a Fisher built densely and inverted in float64,
//! and SparseGPT's masks and weights equal a numpy transcription of SparseML's `fasterprune`.

use serde_json::Value;
use sparsec::train::prune::obs::{self, Obs, ObsConfig};
use sparsec::train::prune::sparsegpt::{fasterprune, Hessian, SgptMask, SparseGptConfig};
use sparsec::train::prune::{Evidence, GradientSource, Layer, Pruner};

fn load(name: &str) -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/prune").join(name);
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap_or(f64::NEG_INFINITY)).collect()
}

/// `[out, in]` torch data into a Layer stored as MatMul `[in, out]` (input_axis 0) or Gemm
/// `[out, in]` (input_axis 1).
fn layer(name: &str, shape: (usize, usize), torch: &[f64], mask: &[f64], input_axis: usize, sparsity: f64) -> Layer {
    let (out, inp) = shape;
    let (rows, cols) = if input_axis == 0 { (inp, out) } else { (out, inp) };
    let mut l = Layer {
        param: name.into(),
        initializer: name.into(),
        rows,
        cols,
        input_axis,
        weight: vec![0.0; out * inp],
        mask: vec![0.0; out * inp],
        sparsity,
    };
    let w: Vec<f32> = torch.iter().map(|&x| x as f32).collect();
    let m: Vec<f32> = mask.iter().map(|&x| x as f32).collect();
    let mut weight = l.weight.clone();
    l.set_torch(&mut weight, &w);
    let mut mk = l.mask.clone();
    l.set_torch(&mut mk, &m);
    l.weight = weight;
    l.mask = mk;
    l
}

/// Replays the fixture's gradients (torch layout) in the layers' stored layout.
struct Fixed {
    grads: Vec<Vec<Vec<f32>>>,
}

impl GradientSource for Fixed {
    fn gradients(
        &mut self,
        layers: &[Layer],
        count: usize,
        each: &mut dyn FnMut(&[Vec<f32>]) -> anyhow::Result<()>,
    ) -> anyhow::Result<usize> {
        for j in 0..count {
            let per: Vec<Vec<f32>> = layers
                .iter()
                .zip(&self.grads)
                .map(|(l, g)| {
                    let mut s = vec![0.0; l.weight.len()];
                    l.set_torch(&mut s, &g[j]);
                    s
                })
                .collect();
            each(&per)?;
        }
        Ok(count)
    }
}

/// max |a - b| / max(|b|) over finite entries.
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().filter(|x| x.is_finite()).fold(0.0f64, |m, x| m.max(x.abs())).max(1e-30);
    a.iter().zip(b).filter(|(_, y)| y.is_finite()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max) / scale
}

#[test]
fn obs_scores_masks_and_update_equal_the_dense_float64_fisher_reference() {
    let refs = load("obs_reference.json");
    for case in refs["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let group: Vec<usize> =
            case["group"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        let cfg = ObsConfig {
            num_grads: case["num_grads"].as_u64().unwrap() as usize,
            damp: case["damp"].as_f64().unwrap(),
            fisher_block_size: case["fisher_block_size"].as_u64().unwrap() as usize,
            num_recomputations: 1,
            group: (group[0], group[1]),
            global: true,
            max_state_bytes: 1 << 30,
        };
        let sparsity = case["sparsity"].as_f64().unwrap();
        let mut layers = Vec::new();
        let mut grads = Vec::new();
        let cases = case["layers"].as_array().unwrap();
        for (li, lc) in cases.iter().enumerate() {
            let shape: Vec<usize> =
                lc["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
            // One layer stored transposed (MatMul), the other not (Gemm), to cover both layouts.
            layers.push(layer(
                &format!("l{li}"),
                (shape[0], shape[1]),
                &floats(&lc["weight"]),
                &floats(&lc["mask"]),
                li % 2,
                sparsity,
            ));
            grads.push(
                lc["grads"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|g| floats(g).into_iter().map(|x| x as f32).collect())
                    .collect(),
            );
        }
        let mut src = Fixed { grads };
        let (fishers, used) = obs::fisher_inverses(&cfg, &layers, &mut src).unwrap();
        assert_eq!(used, cfg.num_grads);
        let sc = obs::scores(&cfg, &layers, &fishers);
        for (li, lc) in cases.iter().enumerate() {
            let got: Vec<f64> = layers[li].torch(&sc[li].0).into_iter().map(f64::from).collect();
            let want = floats(&lc["scores"]);
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.is_finite(), w.is_finite(), "{name} layer {li}: pruned weights score -inf");
            }
            let e = rel_err(&got, &want);
            eprintln!("{name} layer {li}: score error {e:.2e}");
            assert!(e <= 1e-5, "{name} layer {li}: scores differ from the float64 reference by {e:e} (relative)");
        }
        let mut pruned = layers.clone();
        let report = Obs { cfg: cfg.clone() }
            .prune(&mut pruned, &mut Evidence { gradients: Some(&mut src), activations: None })
            .unwrap();
        assert_eq!(report.samples, cfg.num_grads);
        assert!((report.sparsity - sparsity).abs() < 1e-9, "{name}: overall sparsity {}", report.sparsity);
        for (li, lc) in cases.iter().enumerate() {
            let mask: Vec<f64> = pruned[li].torch(&pruned[li].mask).into_iter().map(f64::from).collect();
            assert_eq!(mask, floats(&lc["new_mask"]), "{name} layer {li}: masks");
            let w: Vec<f64> = pruned[li].torch(&pruned[li].weight).into_iter().map(f64::from).collect();
            let e = rel_err(&w, &floats(&lc["new_weight"]));
            eprintln!("{name} layer {li}: weight error {e:.2e}, {} pruned", mask.iter().filter(|&&m| m == 0.0).count());
            assert!(e <= 1e-5, "{name} layer {li}: OBS-updated weights differ by {e:e} (relative)");
            let changed = w.iter().zip(floats(&lc["weight"])).filter(|(a, b)| (**a - b).abs() > 1e-6).count();
            let newly = mask.iter().zip(floats(&lc["mask"])).filter(|(a, b)| **a == 0.0 && *b == 1.0).count();
            assert!(changed > newly, "{name} layer {li}: the update moves kept weights too ({changed} changed)");
        }
    }
}

#[test]
fn obs_refuses_fisher_inverses_over_the_memory_limit() {
    let l = layer("w", (8, 12), &[1.0; 96], &[1.0; 96], 0, 0.5);
    let cfg = ObsConfig {
        num_grads: 4,
        damp: 1e-7,
        fisher_block_size: 48,
        num_recomputations: 1,
        group: (1, 1),
        global: true,
        max_state_bytes: 1000,
    };
    assert_eq!(cfg.state_bytes(std::slice::from_ref(&l)), 2 * 48 * 48 * 4);
    let mut src = Fixed { grads: vec![vec![vec![0.0; 96]; 4]] };
    let err = Obs { cfg }
        .prune(&mut [l], &mut Evidence { gradients: Some(&mut src), activations: None })
        .unwrap_err()
        .to_string();
    assert!(err.contains("over the limit"), "{err}");
}

/// A gradient source that must not be asked.
struct Refuses;

impl GradientSource for Refuses {
    fn gradients(
        &mut self,
        _layers: &[Layer],
        _count: usize,
        _each: &mut dyn FnMut(&[Vec<f32>]) -> anyhow::Result<()>,
    ) -> anyhow::Result<usize> {
        panic!("an OBS update that prunes nothing asked for gradients")
    }
}

#[test]
fn an_obs_update_that_prunes_nothing_is_the_identity_and_takes_no_gradients() {
    let torch: Vec<f64> = (0..96).map(|i| ((i * 37 % 19) as f64 - 9.0) / 7.0).collect();
    let half: Vec<f64> = (0..96).map(|i| if i % 8 < 4 { 1.0 } else { 0.0 }).collect();
    for (global, group) in [(true, (1, 1)), (false, (4, 1))] {
        for (mask, sparsity) in [(vec![1.0; 96], 0.0), (half.clone(), 0.5), (half.clone(), 0.25)] {
            let masked: Vec<f64> = torch.iter().zip(&mask).map(|(w, m)| w * m).collect();
            let layers = vec![
                layer("a", (8, 12), &masked, &mask, 0, sparsity),
                layer("b", (8, 12), &masked, &mask, 1, sparsity),
            ];
            let cfg = ObsConfig {
                num_grads: 4,
                damp: 1e-7,
                fisher_block_size: 16,
                num_recomputations: 2,
                group,
                global,
                max_state_bytes: 1 << 30,
            };
            let mut pruned = layers.clone();
            let report = Obs { cfg }
                .prune(&mut pruned, &mut Evidence { gradients: Some(&mut Refuses), activations: None })
                .unwrap();
            assert_eq!(report.samples, 0, "global {global}, target {sparsity}");
            for (a, b) in pruned.iter().zip(&layers) {
                assert_eq!(a.weight, b.weight, "global {global}, target {sparsity}: weights moved");
                assert_eq!(a.mask, b.mask, "global {global}, target {sparsity}: masks moved");
                assert_eq!(a.sparsity, b.sparsity);
            }
            let expect = mask.iter().filter(|&&m| m == 0.0).count() as f64 / 96.0;
            assert!((report.sparsity - expect).abs() < 1e-12, "{}", report.sparsity);
        }
    }
}

#[test]
fn sparsegpt_equals_the_numpy_reference_on_a_small_layer() {
    let refs = load("sparsegpt_reference.json");
    let (rows, cols, n) = (
        refs["rows"].as_u64().unwrap() as usize,
        refs["cols"].as_u64().unwrap() as usize,
        refs["n"].as_u64().unwrap() as usize,
    );
    let x: Vec<f32> = floats(&refs["x"]).into_iter().map(|v| v as f32).collect();
    let mut h = Hessian::new(cols);
    h.add(&x[..n / 2 * cols], n / 2);
    h.add(&x[n / 2 * cols..], n - n / 2);
    assert_eq!(h.samples, n);
    let w0 = floats(&refs["weight"]);
    for case in refs["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let mask = match (case["prunen"].as_u64().unwrap(), &case["block"]) {
            (0, Value::Null) => SgptMask::Unstructured,
            (0, b) => {
                let b: Vec<usize> = b.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
                SgptMask::Block { out: b[0], inp: b[1] }
            }
            (pn, _) => SgptMask::PruneNOfM { n: pn as usize, m: case["prunem"].as_u64().unwrap() as usize },
        };
        let cfg = SparseGptConfig {
            block_size: case["block_size"].as_u64().unwrap() as usize,
            dampening_frac: case["dampening_frac"].as_f64().unwrap(),
            mask,
        };
        let mut w = w0.clone();
        let m = fasterprune(&mut w, rows, cols, &h.matrix(), case["sparsity"].as_f64().unwrap(), &cfg).unwrap();
        let want_mask: Vec<bool> = case["mask"].as_array().unwrap().iter().map(|v| v.as_i64() == Some(1)).collect();
        assert_eq!(m, want_mask, "{name}: masks");
        let want = floats(&case["new_weight"]);
        let e = rel_err(&w, &want);
        eprintln!("{name}: weight error {e:.2e}");
        assert!(e <= 1e-5, "{name}: weights differ from the reference by {e:e} (relative)");
        assert!(m.iter().zip(&w).all(|(p, v)| !p || *v == 0.0), "{name}: pruned weights are zero");
        let zeros = m.iter().filter(|&&p| p).count() as f64 / m.len() as f64;
        assert!(zeros >= case["sparsity"].as_f64().unwrap(), "{name}: sparsity {zeros}");
    }
}
