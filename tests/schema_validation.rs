//! Output graphs are held to the ONNX operator schemas of their opset after every pass: a node in
//! the wrong opset's form is reported with the pass and node names at the step that made it, and
//! the passes themselves emit valid nodes on torch dynamo's native opset-18 exports.

use crate::common::*;
use sparsec::ir::{check_schemas, Attribute, Facts, Model, NodeSpec, Patch};
use sparsec::passes::{self, Pass, PassError, PassReport};

/// A deliberately wrong pass: it emits the opset-13 spelling `ReduceMax(axes=[1])` whatever the opset.
struct EmitOldReduceMax;

impl Pass for EmitOldReduceMax {
    fn name(&self) -> &'static str {
        "EmitOldReduceMax"
    }
    fn run(&self, model: &mut Model) -> Result<PassReport, PassError> {
        model
            .graph
            .edit(|p: &mut Patch| -> Result<(), PassError> {
                let g = p.graph();
                let x = g.outputs()[0];
                let spec = NodeSpec::new("ReduceMax", "injected/absmax", &[x])
                    .attr(Attribute::ints("axes", vec![1]))
                    .attr(Attribute::int("keepdims", 0));
                let y = p.op(spec, "injected_absmax", Facts::default());
                p.add_output(y);
                Ok(())
            })
            .map_err(|e: PassError| e)?;
        Ok(PassReport { pass: self.name().into(), rewritten: 1, ..PassReport::default() })
    }
}

fn dynamo_bert() -> Model {
    let m = sparsec::onnx::load(fixture_dir("bert").join("model.dynamo.onnx")).unwrap();
    assert_eq!(m.opset(), 18, "the dynamo fixture is at its native opset");
    m
}

#[test]
fn an_invalid_emitted_node_is_reported_with_the_pass_and_node_names() {
    let mut m = dynamo_bert();
    check_schemas(&m).expect("the exporter's own graph is valid");
    let e = EmitOldReduceMax.apply(&mut m).unwrap_err().to_string();
    assert_eq!(
        e,
        "pass EmitOldReduceMax: node 'injected/absmax' (ReduceMax) is not valid ONNX at opset 18: \
         unrecognized attribute 'axes' (it is an input in this opset)"
    );
}

#[test]
fn the_same_node_is_valid_at_opset_17() {
    let mut m = sparsec::onnx::load(fixture_dir("bert").join("model.legacy.onnx")).unwrap();
    assert_eq!(m.opset(), 17);
    EmitOldReduceMax.apply(&mut m).expect("axes is an attribute before opset 18");
}

#[test]
fn fake_quantization_on_an_opset_18_graph_takes_reduce_axes_as_an_input() {
    for opset_file in ["model.dynamo.onnx", "model.optimum.onnx", "model.legacy.onnx"] {
        let mut m = sparsec::onnx::load(fixture_dir("bert").join(opset_file)).unwrap();
        sparsec::ir::infer::infer_facts(&mut m).unwrap();
        let layers = sparsec::ir::modules::linear_layers(&m.graph);
        let targets: Vec<serde_json::Value> = layers
            .iter()
            .map(|l| serde_json::json!({ "node": m.graph.node(l.node).name, "module": l.module }))
            .collect();
        let pass = passes::by_name("InsertFakeQuant", serde_json::json!({ "targets": targets })).unwrap();
        pass.apply(&mut m).unwrap_or_else(|e| panic!("{opset_file}: {e}"));
        let g = &m.graph;
        let absmax: Vec<_> = g.nodes().filter(|(_, n)| n.name.ends_with("/absmax")).collect();
        assert_eq!(absmax.len(), layers.len(), "{opset_file}");
        for (_, n) in absmax {
            let input_form = m.opset() >= 18;
            assert_eq!(n.input(1).is_some(), input_form, "{opset_file} {}", n.name);
            assert_eq!(n.attrs.iter().any(|a| a.name == "axes"), !input_form, "{opset_file} {}", n.name);
        }
    }
}
