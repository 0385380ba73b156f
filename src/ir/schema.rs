//! ONNX operator schemas, as far as they differ between the opsets sparsec meets (13–21): which
//! attributes an op accepts, which it needs, and how many inputs and outputs it takes, per opset
//! version. [`check_schemas`] holds a graph to these rules, so that a node in the wrong opset's
//! form (an opset-13 `ReduceMax(axes=…)` in an opset-18 graph) is caught where it is made, with its
//! name, not later when an engine loads the file. [`axes_is_input`] is the same knowledge for the
//! builders in [`emit`](super::emit).
//!
//! Ops outside the table are not checked (their forms did not change in these opsets, or sparsec
//! never emits them); default-domain ops only.

use super::{Graph, IrError, Model};

/// One version of an op: in force from `since` until the next version's `since`.
struct Form {
    since: i64,
    attrs: &'static [&'static str],
    required: &'static [&'static str],
    inputs: (usize, usize),
    outputs: (usize, usize),
}

const MANY: usize = usize::MAX;

const fn form(
    since: i64,
    attrs: &'static [&'static str],
    required: &'static [&'static str],
    inputs: (usize, usize),
    outputs: (usize, usize),
) -> Form {
    Form { since, attrs, required, inputs, outputs }
}

const REDUCE_ATTR: Form = form(1, &["axes", "keepdims"], &[], (1, 1), (1, 1));
const REDUCE_INPUT: Form = form(18, &["keepdims", "noop_with_empty_axes"], &[], (1, 2), (1, 1));
const REDUCE_OPS: [&str; 9] = [
    "ReduceMax",
    "ReduceMin",
    "ReduceMean",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
];
const UNARY: [&str; 20] = [
    "Abs",
    "Neg",
    "Exp",
    "Log",
    "Sqrt",
    "Sign",
    "Erf",
    "Tanh",
    "Sigmoid",
    "Relu",
    "Not",
    "Identity",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Round",
    "Size",
    "NonZero",
    "Sin",
    "Cos",
];
const BINARY: [&str; 14] = [
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Equal",
    "Greater",
    "Less",
    "GreaterOrEqual",
    "LessOrEqual",
    "And",
    "Or",
    "Xor",
    "Expand",
];

/// The versions of `op` in the default domain, oldest first; `None` when the table does not cover it.
fn forms(op: &str) -> Option<&'static [Form]> {
    static SQUEEZE: [Form; 2] = [form(1, &["axes"], &[], (1, 1), (1, 1)), form(13, &[], &[], (1, 2), (1, 1))];
    static UNSQUEEZE: [Form; 2] = [form(1, &["axes"], &["axes"], (1, 1), (1, 1)), form(13, &[], &[], (2, 2), (1, 1))];
    static SPLIT: [Form; 3] = [
        form(2, &["axis", "split"], &[], (1, 1), (1, MANY)),
        form(13, &["axis"], &[], (1, 2), (1, MANY)),
        form(18, &["axis", "num_outputs"], &[], (1, 2), (1, MANY)),
    ];
    static REDUCE_SUM: [Form; 2] = [REDUCE_ATTR, form(13, &["keepdims", "noop_with_empty_axes"], &[], (1, 2), (1, 1))];
    static REDUCE: [Form; 2] = [REDUCE_ATTR, REDUCE_INPUT];
    static PAD: [Form; 3] = [
        form(2, &["mode", "pads", "value"], &["pads"], (1, 1), (1, 1)),
        form(11, &["mode"], &[], (2, 3), (1, 1)),
        form(18, &["mode"], &[], (2, 4), (1, 1)),
    ];
    static CLIP: [Form; 2] = [form(6, &["min", "max"], &[], (1, 1), (1, 1)), form(11, &[], &[], (1, 3), (1, 1))];
    static SLICE: [Form; 2] =
        [form(1, &["axes", "ends", "starts"], &["ends", "starts"], (1, 1), (1, 1)), form(10, &[], &[], (3, 5), (1, 1))];
    static UNARY_FORM: [Form; 1] = [form(1, &[], &[], (1, 1), (1, 1))];
    static BINARY_FORM: [Form; 1] = [form(7, &[], &[], (2, 2), (1, 1))];
    static VARIADIC: [Form; 1] = [form(8, &[], &[], (1, MANY), (1, 1))];
    static WHERE: [Form; 1] = [form(9, &[], &[], (3, 3), (1, 1))];
    static CAST: [Form; 2] =
        [form(13, &["to"], &["to"], (1, 1), (1, 1)), form(19, &["to", "saturate"], &["to"], (1, 1), (1, 1))];
    static SHAPE: [Form; 2] = [form(1, &[], &[], (1, 1), (1, 1)), form(15, &["start", "end"], &[], (1, 1), (1, 1))];
    static RESHAPE: [Form; 2] = [form(5, &[], &[], (2, 2), (1, 1)), form(14, &["allowzero"], &[], (2, 2), (1, 1))];
    static TRANSPOSE: [Form; 1] = [form(1, &["perm"], &[], (1, 1), (1, 1))];
    static CONCAT: [Form; 1] = [form(4, &["axis"], &["axis"], (1, MANY), (1, 1))];
    static GATHER: [Form; 1] = [form(1, &["axis"], &[], (2, 2), (1, 1))];
    static SCATTER_ND: [Form; 2] = [form(11, &[], &[], (3, 3), (1, 1)), form(16, &["reduction"], &[], (3, 3), (1, 1))];
    static SCATTER_ELEMENTS: [Form; 2] =
        [form(11, &["axis"], &[], (3, 3), (1, 1)), form(16, &["axis", "reduction"], &[], (3, 3), (1, 1))];
    static CONSTANT_OF_SHAPE: [Form; 1] = [form(9, &["value"], &[], (1, 1), (1, 1))];
    static MATMUL: [Form; 1] = [form(1, &[], &[], (2, 2), (1, 1))];
    static MATMUL_INTEGER: [Form; 1] = [form(10, &[], &[], (2, 4), (1, 1))];
    static GEMM: [Form; 1] = [form(11, &["alpha", "beta", "transA", "transB"], &[], (2, 3), (1, 1))];
    static SOFTMAX: [Form; 1] = [form(1, &["axis"], &[], (1, 1), (1, 1))];
    static QUANTIZE: [Form; 3] = [
        form(13, &["axis"], &[], (2, 3), (1, 1)),
        form(19, &["axis", "saturate"], &[], (2, 3), (1, 1)),
        form(21, &["axis", "saturate", "block_size", "output_dtype", "precision"], &[], (2, 3), (1, 1)),
    ];
    static DEQUANTIZE: [Form; 2] = [
        form(13, &["axis"], &[], (2, 3), (1, 1)),
        form(21, &["axis", "block_size", "output_dtype"], &[], (2, 3), (1, 1)),
    ];
    static LAYER_NORM: [Form; 1] = [form(17, &["axis", "epsilon", "stash_type"], &[], (2, 3), (1, 3))];
    static CUMSUM: [Form; 1] = [form(11, &["exclusive", "reverse"], &[], (2, 2), (1, 1))];
    static RANGE: [Form; 1] = [form(11, &[], &[], (3, 3), (1, 1))];
    static DROPOUT: [Form; 1] = [form(12, &["seed"], &[], (1, 3), (1, 2))];
    Some(match op {
        "Squeeze" => &SQUEEZE,
        "Unsqueeze" => &UNSQUEEZE,
        "Split" => &SPLIT,
        "ReduceSum" => &REDUCE_SUM,
        o if REDUCE_OPS.contains(&o) => &REDUCE,
        "Pad" => &PAD,
        "Clip" => &CLIP,
        "Slice" => &SLICE,
        o if UNARY.contains(&o) => &UNARY_FORM,
        o if BINARY.contains(&o) => &BINARY_FORM,
        "Max" | "Min" | "Sum" | "Mean" => &VARIADIC,
        "Where" => &WHERE,
        "Cast" => &CAST,
        "Shape" => &SHAPE,
        "Reshape" => &RESHAPE,
        "Transpose" => &TRANSPOSE,
        "Concat" => &CONCAT,
        "Gather" | "GatherElements" => &GATHER,
        "ScatterND" => &SCATTER_ND,
        "ScatterElements" => &SCATTER_ELEMENTS,
        "ConstantOfShape" => &CONSTANT_OF_SHAPE,
        "MatMul" => &MATMUL,
        "MatMulInteger" => &MATMUL_INTEGER,
        "Gemm" => &GEMM,
        "Softmax" | "LogSoftmax" => &SOFTMAX,
        "QuantizeLinear" => &QUANTIZE,
        "DequantizeLinear" => &DEQUANTIZE,
        "LayerNormalization" => &LAYER_NORM,
        "CumSum" => &CUMSUM,
        "Range" => &RANGE,
        "Dropout" => &DROPOUT,
        _ => return None,
    })
}

/// Whether `op` at `opset` takes as an input what older opsets took as an attribute: `axes` of
/// `Reduce*` (from opset 18; `ReduceSum` from 13), `Squeeze` and `Unsqueeze` (13), `split` of
/// `Split` (13), `pads` of `Pad` (11), `min`/`max` of `Clip` (11), `starts`/`ends`/`axes` of `Slice` (10).
pub fn axes_is_input(op: &str, opset: i64) -> bool {
    match op {
        "ReduceSum" | "Squeeze" | "Unsqueeze" | "Split" => opset >= 13,
        o if REDUCE_OPS.contains(&o) => opset >= 18,
        "Pad" | "Clip" => opset >= 11,
        "Slice" => opset >= 10,
        _ => false,
    }
}

/// Checks every default-domain node of `model` that the table covers against the form of its op
/// at the model's opset. The error names the node, its op, the opset and the rule broken.
pub fn check_schemas(model: &Model) -> Result<(), IrError> {
    check_graph(&model.graph, model.opset())
}

/// As [`check_schemas`], for a graph whose default-domain opset is `opset`.
pub fn check_graph(g: &Graph, opset: i64) -> Result<(), IrError> {
    for (_, node) in g.nodes() {
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            continue;
        }
        let Some(forms) = forms(&node.op_type) else { continue };
        let err =
            |message: String| IrError::Schema { node: node.name.clone(), op: node.op_type.clone(), opset, message };
        let Some(f) = forms.iter().rev().find(|f| f.since <= opset) else {
            return Err(err(format!("{} does not exist before opset {}", node.op_type, forms[0].since)));
        };
        for a in &node.attrs {
            if !f.attrs.contains(&a.name.as_str()) {
                let moved =
                    axes_is_input(&node.op_type, opset) && forms.iter().any(|o| o.attrs.contains(&a.name.as_str()));
                let hint = if moved { " (it is an input in this opset)" } else { "" };
                return Err(err(format!("unrecognized attribute '{}'{hint}", a.name)));
            }
        }
        for r in f.required {
            if !node.attrs.iter().any(|a| a.name == *r) {
                return Err(err(format!("required attribute '{r}' is missing")));
            }
        }
        let n_in = node.inputs.iter().rposition(Option::is_some).map_or(0, |i| i + 1);
        let n_out = node.outputs.iter().rposition(Option::is_some).map_or(0, |i| i + 1);
        let range = |(lo, hi): (usize, usize)| {
            if hi == MANY {
                format!("at least {lo}")
            } else if lo == hi {
                format!("{lo}")
            } else {
                format!("{lo} to {hi}")
            }
        };
        if n_in < f.inputs.0 || n_in > f.inputs.1 {
            return Err(err(format!("has {n_in} inputs, the op takes {}", range(f.inputs))));
        }
        if n_out < f.outputs.0 || n_out > f.outputs.1 {
            return Err(err(format!("has {n_out} outputs, the op gives {}", range(f.outputs))));
        }
        if node.op_type == "Split" && opset >= 18 {
            let has_sizes = node.input(1).is_some();
            let has_num = node.attrs.iter().any(|a| a.name == "num_outputs");
            if has_sizes == has_num {
                return Err(err(
                    "exactly one of the 'split' input and the 'num_outputs' attribute must be given".into()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Attribute, DType, Facts, NodeSpec, Tensor};

    fn graph_with(spec: impl Fn(crate::ir::ValueId, crate::ir::ValueId) -> NodeSpec) -> Graph {
        let mut g = Graph::default();
        g.edit(|p| -> Result<(), IrError> {
            let x = p.add_input("x", Facts::new(DType::F32, vec![]));
            let ax = p.add_initializer("axes", Tensor::from_i64(vec![1], &[1]));
            let y = p.op(spec(x, ax), "y", Facts::default());
            p.add_output(y);
            Ok(())
        })
        .unwrap();
        g
    }

    #[test]
    fn reduce_max_axes_attribute_is_rejected_at_opset_18_and_accepted_at_17() {
        let g = graph_with(|x, _| NodeSpec::new("ReduceMax", "absmax", &[x]).attr(Attribute::ints("axes", vec![1])));
        assert!(check_graph(&g, 17).is_ok());
        let e = check_graph(&g, 18).unwrap_err().to_string();
        assert!(e.contains("'absmax'") && e.contains("ReduceMax") && e.contains("opset 18"), "{e}");
        assert!(e.contains("unrecognized attribute 'axes' (it is an input in this opset)"), "{e}");
    }

    #[test]
    fn reduce_max_axes_input_is_rejected_before_opset_18() {
        let g = graph_with(|x, ax| NodeSpec::new("ReduceMax", "absmax", &[x, ax]));
        assert!(check_graph(&g, 18).is_ok());
        let e = check_graph(&g, 17).unwrap_err().to_string();
        assert!(e.contains("has 2 inputs, the op takes 1"), "{e}");
    }

    #[test]
    fn reduce_sum_takes_axes_as_input_from_opset_13() {
        let g = graph_with(|x, ax| NodeSpec::new("ReduceSum", "s", &[x, ax]));
        assert!(check_graph(&g, 13).is_ok());
        assert!(check_graph(&g, 12).is_err());
    }

    #[test]
    fn split_at_opset_18_needs_sizes_or_num_outputs() {
        let g = graph_with(|x, _| NodeSpec::new("Split", "sp", &[x]).attr(Attribute::int("axis", 0)));
        assert!(check_graph(&g, 17).is_ok());
        let e = check_graph(&g, 18).unwrap_err().to_string();
        assert!(e.contains("'num_outputs'"), "{e}");
        let g = graph_with(|x, _| NodeSpec::new("Split", "sp", &[x]).attr(Attribute::int("num_outputs", 1)));
        assert!(check_graph(&g, 18).is_ok());
        assert!(check_graph(&g, 17).unwrap_err().to_string().contains("unrecognized attribute 'num_outputs'"));
    }

    #[test]
    fn missing_required_attribute_is_named() {
        let g = graph_with(|x, _| NodeSpec::new("Cast", "c", &[x]));
        let e = check_graph(&g, 17).unwrap_err().to_string();
        assert!(e.contains("required attribute 'to' is missing"), "{e}");
    }
}
