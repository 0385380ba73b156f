//! The patch API: edits apply atomically, and invalid results are refused with the node named.

use crate::common;

use sparsec::ir::{Attribute, DType, Dim, Facts, IrError, NodeSpec};
use sparsec::onnx;

fn bert() -> sparsec::ir::Model {
    onnx::load(common::fixture_dir("bert").join("model.legacy.onnx")).unwrap()
}

fn f32_facts() -> Facts {
    Facts::new(DType::F32, vec![Dim::Sym("batch".into()), Dim::Sym("sequence".into())])
}

#[test]
fn refused_patch_leaves_graph_untouched() {
    let mut m = bert();
    let before = onnx::encode_model(&m);
    let out = m.graph.outputs()[0];
    let err = m
        .graph
        .edit(|p| -> Result<(), IrError> {
            let ghost = p.new_value("ghost", f32_facts());
            p.add_node(NodeSpec::new("Neg", "reads_ghost", &[ghost]), &[("y", f32_facts())]);
            p.remove_output(out);
            Ok(())
        })
        .unwrap_err();
    assert!(err.to_string().contains("reads_ghost"), "{err}");
    assert!(err.to_string().contains("ghost"), "{err}");
    assert_eq!(onnx::encode_model(&m), before);
}

#[test]
fn second_producer_of_a_value_is_refused() {
    let mut m = bert();
    let out = m.graph.outputs()[0];
    let x = m.graph.runtime_inputs().next().unwrap();
    let err = m
        .graph
        .edit(|p| -> Result<(), IrError> {
            p.add_node_with_outputs(NodeSpec::new("Identity", "dup_writer", &[x]), vec![Some(out)]);
            Ok(())
        })
        .unwrap_err();
    assert!(matches!(err, IrError::MultipleProducers { ref node, .. } if node == "dup_writer"), "{err}");
}

#[test]
fn cycle_is_refused_with_a_node_name() {
    let mut m = bert();
    let first = m.graph.nodes().find(|(_, n)| n.op_type == "Add").map(|(i, _)| i).unwrap();
    let last = m.graph.nodes().filter(|(_, n)| n.op_type == "Add").last().unwrap().1.output(0).unwrap();
    let err = m
        .graph
        .edit(|p| -> Result<(), IrError> {
            p.set_node_input(first, 0, Some(last));
            Ok(())
        })
        .unwrap_err();
    assert!(matches!(err, IrError::Cycle(_)), "{err}");
}

#[test]
fn inserted_node_is_sorted_before_its_consumers_and_runs() {
    let mut m = bert();
    let (mm, w) = m
        .graph
        .nodes()
        .find(|(_, n)| n.op_type == "MatMul" && n.input(1).is_some_and(|w| m.graph.is_initializer(w)))
        .map(|(id, n)| (id, n.input(1).unwrap()))
        .unwrap();
    let facts = m.graph.value(w).facts.clone();
    m.graph
        .edit(|p| -> Result<(), IrError> {
            let scale = p.add_initializer("two", sparsec::ir::Tensor::scalar_f32(2.0));
            let y = p.op(NodeSpec::new("Mul", "scale_w", &[w, scale]), "w_scaled", facts.clone());
            p.set_node_input(mm, 1, Some(y));
            p.set_attr(mm, Attribute::string("note", "scaled"));
            Ok(())
        })
        .unwrap();
    let pos = |name: &str| m.graph.nodes().position(|(_, n)| n.name == name).unwrap();
    assert!(pos("scale_w") < pos(&m.graph.node(mm).name.clone()));
    let back = onnx::decode_model(&onnx::encode_model(&m), std::path::Path::new("mem.onnx")).unwrap();
    assert_eq!(back.graph.node_count(), m.graph.node_count());
}
