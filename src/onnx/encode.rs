//! IR → `ModelProto` bytes, and atomic saving with optional external data.

use std::io::Write;
use std::path::Path;

use prost::Message;

use super::proto::{self, attribute_proto::AttributeType, tensor_proto::DataLocation, type_proto};
use super::OnnxError;
use crate::ir::{AttrValue, Attribute, DType, Dim, Facts, Graph, Model, Tensor, TensorData, ValueId};

/// How to write a model file.
#[derive(Clone, Debug, Default)]
pub struct SaveOptions {
    /// Store initializers of at least `external_threshold` bytes in this file beside the model.
    pub external_data: Option<String>,
    /// Minimum tensor size for external storage (default 1024 bytes).
    pub external_threshold: Option<usize>,
}

const PROTOBUF_LIMIT: usize = 2_000_000_000;

/// Encodes a model with every tensor inline.
pub fn encode_model(model: &Model) -> Vec<u8> {
    to_proto(model, &mut |_, _| None).encode_to_vec()
}

pub(super) fn save(model: &Model, path: &Path, opts: &SaveOptions) -> Result<(), OnnxError> {
    let werr = |source: std::io::Error| OnnxError::Write { path: path.to_path_buf(), source };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let total: usize = model.graph.initializers().values().map(Tensor::byte_len).sum();
    let external = opts.external_data.clone().or_else(|| {
        (total > PROTOBUF_LIMIT).then(|| format!("{}.data", path.file_name().unwrap_or_default().to_string_lossy()))
    });
    let threshold = opts.external_threshold.unwrap_or(1024);
    let mut data_tmp = None;
    let mp = match &external {
        Some(loc) => {
            let mut tmp = crate::files::temp_file_in(dir).map_err(werr)?;
            let mut offset = 0u64;
            let mut failure = None;
            let mp = to_proto(model, &mut |_, t: &Tensor| {
                if t.byte_len() < threshold || t.dtype == DType::String || failure.is_some() {
                    return None;
                }
                let pad = (4096 - offset % 4096) % 4096;
                let res = tmp.write_all(&vec![0u8; pad as usize]).and_then(|_| tmp.write_all(t.raw()));
                if let Err(e) = res {
                    failure = Some(e);
                    return None;
                }
                offset += pad;
                let entry = (loc.clone(), offset, t.byte_len() as u64);
                offset += t.byte_len() as u64;
                Some(entry)
            });
            if let Some(e) = failure {
                return Err(werr(e));
            }
            tmp.flush().map_err(werr)?;
            data_tmp = Some((tmp, dir.join(loc)));
            mp
        }
        None => to_proto(model, &mut |_, _| None),
    };
    let bytes = mp.encode_to_vec();
    if bytes.len() > PROTOBUF_LIMIT {
        return Err(OnnxError::Write {
            path: path.to_path_buf(),
            source: std::io::Error::other("model exceeds 2 GB; save with external data"),
        });
    }
    let mut tmp = crate::files::temp_file_in(dir).map_err(werr)?;
    tmp.write_all(&bytes).map_err(werr)?;
    if let Some((data, target)) = data_tmp {
        data.persist(&target).map_err(|e| OnnxError::Write { path: target.clone(), source: e.error })?;
    }
    tmp.persist(path).map_err(|e| werr(e.error))?;
    Ok(())
}

type ExternalSink<'a> = dyn FnMut(&str, &Tensor) -> Option<(String, u64, u64)> + 'a;

fn to_proto(model: &Model, external: &mut ExternalSink) -> proto::ModelProto {
    let mut mp = proto::ModelProto::decode(model.opaque_extra.as_slice()).unwrap_or_default();
    mp.ir_version = Some(model.ir_version);
    mp.opset_import = model
        .opset_imports
        .iter()
        .map(|(d, v)| proto::OperatorSetIdProto { domain: Some(d.clone()), version: Some(*v) })
        .collect();
    mp.producer_name = model.producer_name.clone();
    mp.producer_version = model.producer_version.clone();
    mp.domain = model.domain.clone();
    mp.model_version = model.model_version;
    mp.doc_string = model.doc_string.clone();
    mp.metadata_props = kv(&model.metadata_props);
    mp.functions =
        model.opaque_functions.iter().filter_map(|b| proto::FunctionProto::decode(b.as_slice()).ok()).collect();
    mp.graph = Some(encode_graph(&model.graph, external));
    mp
}

fn kv(entries: &[(String, String)]) -> Vec<proto::StringStringEntryProto> {
    entries
        .iter()
        .map(|(k, v)| proto::StringStringEntryProto { key: Some(k.clone()), value: Some(v.clone()) })
        .collect()
}

fn encode_graph(g: &Graph, external: &mut ExternalSink) -> proto::GraphProto {
    let value_info = |v: ValueId| -> proto::ValueInfoProto {
        let value = g.value(v);
        proto::ValueInfoProto {
            name: Some(value.name.clone()),
            r#type: Some(type_of(&value.facts)),
            doc_string: value.doc_string.clone(),
            metadata_props: vec![],
        }
    };
    let initializer = g
        .initializers()
        .iter()
        .map(|(&v, t)| {
            let name = &g.value(v).name;
            let mut tp = encode_tensor(t, name);
            if let Some((loc, off, len)) = external(name, t) {
                tp.raw_data = None;
                tp.data_location = Some(DataLocation::External as i32);
                tp.external_data = kv(&[
                    ("location".into(), loc),
                    ("offset".into(), off.to_string()),
                    ("length".into(), len.to_string()),
                ]);
            }
            tp
        })
        .collect();
    let mut listed: std::collections::HashSet<ValueId> = g.inputs().iter().chain(g.outputs()).copied().collect();
    listed.extend(g.initializers().keys().copied());
    let mut value_infos = Vec::new();
    for (_, node) in g.nodes() {
        for v in node.outputs.iter().flatten() {
            if g.value(*v).declared && listed.insert(*v) {
                value_infos.push(value_info(*v));
            }
        }
    }
    proto::GraphProto {
        node: g
            .nodes()
            .map(|(_, n)| proto::NodeProto {
                input: n.inputs.iter().map(|v| v.map(|v| g.value(v).name.clone()).unwrap_or_default()).collect(),
                output: n.outputs.iter().map(|v| v.map(|v| g.value(v).name.clone()).unwrap_or_default()).collect(),
                name: Some(n.name.clone()),
                op_type: Some(n.op_type.clone()),
                domain: (!n.domain.is_empty()).then(|| n.domain.clone()),
                overload: None,
                attribute: n.attrs.iter().map(encode_attr).collect(),
                doc_string: n.doc_string.clone(),
                metadata_props: kv(&n.metadata),
                device_configurations: vec![],
            })
            .collect(),
        name: Some(g.name.clone()),
        initializer,
        sparse_initializer: vec![],
        doc_string: g.doc_string.clone(),
        input: g.inputs().iter().map(|&v| value_info(v)).collect(),
        output: g.outputs().iter().map(|&v| value_info(v)).collect(),
        value_info: value_infos,
        quantization_annotation: vec![],
        metadata_props: vec![],
    }
}

fn type_of(f: &Facts) -> proto::TypeProto {
    let shape = f.shape.as_ref().map(|s| proto::TensorShapeProto {
        dim: s
            .iter()
            .map(|d| proto::tensor_shape_proto::Dimension {
                denotation: None,
                value: match d {
                    Dim::Known(v) => Some(proto::tensor_shape_proto::dimension::Value::DimValue(*v)),
                    Dim::Sym(s) => Some(proto::tensor_shape_proto::dimension::Value::DimParam(s.clone())),
                    Dim::Unknown => None,
                },
            })
            .collect(),
    });
    proto::TypeProto {
        denotation: None,
        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: Some(f.dtype.map(DType::onnx_code).unwrap_or(0)),
            shape,
        })),
    }
}

pub(super) fn encode_tensor(t: &Tensor, name: &str) -> proto::TensorProto {
    let mut tp = proto::TensorProto {
        dims: t.dims.clone(),
        data_type: Some(t.dtype.onnx_code()),
        name: (!name.is_empty()).then(|| name.to_string()),
        ..Default::default()
    };
    match &t.data {
        TensorData::Raw(b) => tp.raw_data = Some(b.to_vec()),
        TensorData::Strings(s) => tp.string_data = s.to_vec(),
    }
    tp
}

fn encode_attr(a: &Attribute) -> proto::AttributeProto {
    let mut ap =
        proto::AttributeProto { name: Some(a.name.clone()), doc_string: a.doc_string.clone(), ..Default::default() };
    let ty = match &a.value {
        AttrValue::Float(v) => {
            ap.f = Some(*v);
            AttributeType::Float
        }
        AttrValue::Int(v) => {
            ap.i = Some(*v);
            AttributeType::Int
        }
        AttrValue::String(v) => {
            ap.s = Some(v.clone());
            AttributeType::String
        }
        AttrValue::Tensor(t) => {
            ap.t = Some(encode_tensor(t, ""));
            AttributeType::Tensor
        }
        AttrValue::Floats(v) => {
            ap.floats = v.clone();
            AttributeType::Floats
        }
        AttrValue::Ints(v) => {
            ap.ints = v.clone();
            AttributeType::Ints
        }
        AttrValue::Strings(v) => {
            ap.strings = v.clone();
            AttributeType::Strings
        }
        AttrValue::Tensors(v) => {
            ap.tensors = v.iter().map(|t| encode_tensor(t, "")).collect();
            AttributeType::Tensors
        }
    };
    ap.r#type = Some(ty as i32);
    ap
}
