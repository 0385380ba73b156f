//! `ModelProto` bytes → IR.

use std::collections::HashMap;
use std::path::Path;

use prost::Message;

use super::proto::{self, attribute_proto::AttributeType, tensor_proto::DataLocation, type_proto};
use super::OnnxError;
use crate::ir::{AttrValue, Attribute, DType, Dim, Facts, Graph, Model, Node, Tensor, TensorData, ValueId};

/// Decodes a serialized model. `path` names the file in errors and anchors external data.
pub fn decode_model(bytes: &[u8], path: &Path) -> Result<Model, OnnxError> {
    let decode_err = |reason: String| OnnxError::Decode { path: path.to_path_buf(), reason };
    let mp = proto::ModelProto::decode(bytes).map_err(|e| decode_err(format!("protobuf decode failed ({e})")))?;
    let ir_version = mp.ir_version.unwrap_or(0);
    if ir_version <= 0 || mp.opset_import.is_empty() {
        return Err(decode_err("no ir_version or opset_import (is this an ONNX file?)".into()));
    }
    let gp = mp.graph.as_ref().ok_or_else(|| decode_err("the model has no graph".into()))?;
    if !mp.training_info.is_empty() {
        tracing::warn!("{}: training_info is kept as-is and not interpreted", path.display());
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let graph = decode_graph(gp, base, path)?;
    let extra = proto::ModelProto {
        training_info: mp.training_info.clone(),
        configuration: mp.configuration.clone(),
        ..Default::default()
    };
    Ok(Model {
        ir_version,
        opset_imports: mp
            .opset_import
            .iter()
            .map(|o| (o.domain.clone().unwrap_or_default(), o.version.unwrap_or(0)))
            .collect(),
        producer_name: mp.producer_name.clone(),
        producer_version: mp.producer_version.clone(),
        domain: mp.domain.clone(),
        model_version: mp.model_version,
        doc_string: mp.doc_string.clone(),
        metadata_props: kv(&mp.metadata_props),
        opaque_functions: mp.functions.iter().map(|f| f.encode_to_vec()).collect(),
        opaque_extra: extra.encode_to_vec(),
        graph,
    })
}

fn kv(entries: &[proto::StringStringEntryProto]) -> Vec<(String, String)> {
    entries.iter().map(|e| (e.key.clone().unwrap_or_default(), e.value.clone().unwrap_or_default())).collect()
}

fn decode_graph(gp: &proto::GraphProto, base: &Path, path: &Path) -> Result<Graph, OnnxError> {
    let unsupported = |reason: String| OnnxError::Unsupported { path: path.to_path_buf(), reason };
    if !gp.sparse_initializer.is_empty() {
        return Err(unsupported("sparse_initializer is not supported".into()));
    }
    let mut g =
        Graph { name: gp.name.clone().unwrap_or_default(), doc_string: gp.doc_string.clone(), ..Graph::default() };
    let mut declared: HashMap<&str, Facts> = HashMap::new();
    for vi in gp.input.iter().chain(&gp.output).chain(&gp.value_info) {
        let name = vi.name.as_deref().unwrap_or("");
        let facts = value_facts(vi).map_err(|r| unsupported(format!("value '{name}': {r}")))?;
        declared.insert(name, facts);
    }
    let define = |g: &mut Graph, name: &str| -> ValueId {
        if let Some(v) = g.value_by_name(name) {
            return v;
        }
        match declared.get(name) {
            Some(f) => g.push_value(name.to_string(), f.clone(), true),
            None => g.push_value(name.to_string(), Facts::default(), false),
        }
    };
    for t in &gp.initializer {
        let name = t.name.clone().unwrap_or_default();
        let tensor = decode_tensor(t, base, path)?;
        let v = define(&mut g, &name);
        if g.initializers.insert(v, tensor).is_some() {
            return Err(unsupported(format!("initializer '{name}' is defined twice")));
        }
    }
    for vi in &gp.input {
        let v = define(&mut g, vi.name.as_deref().unwrap_or(""));
        g.values[v.index()].doc_string = vi.doc_string.clone();
        g.inputs.push(v);
    }
    for (i, np) in gp.node.iter().enumerate() {
        let name = np.name.clone().unwrap_or_else(|| format!("node_{i}"));
        let op_type = np.op_type.clone().unwrap_or_default();
        let mut attrs = Vec::with_capacity(np.attribute.len());
        for a in &np.attribute {
            attrs.push(decode_attr(a, base, path).map_err(|e| match e {
                OnnxError::Unsupported { path, reason } => {
                    OnnxError::Unsupported { path, reason: format!("node '{name}' ({op_type}): {reason}") }
                }
                e => e,
            })?);
        }
        let inputs = np.input.iter().map(|n| (!n.is_empty()).then(|| define(&mut g, n))).collect();
        let outputs = np.output.iter().map(|n| (!n.is_empty()).then(|| define(&mut g, n))).collect();
        let id = crate::ir::NodeId(g.nodes.len() as u32);
        g.nodes.push(Some(Node {
            name,
            op_type,
            domain: np.domain.clone().unwrap_or_default(),
            inputs,
            outputs,
            attrs,
            metadata: kv(&np.metadata_props),
            doc_string: np.doc_string.clone(),
        }));
        g.order.push(id);
    }
    for vi in &gp.output {
        let v = define(&mut g, vi.name.as_deref().unwrap_or(""));
        g.outputs.push(v);
    }
    g.relink().map_err(|source| OnnxError::Ir { path: path.to_path_buf(), source })?;
    Ok(g)
}

fn value_facts(vi: &proto::ValueInfoProto) -> Result<Facts, String> {
    let Some(tp) = &vi.r#type else {
        return Ok(Facts::default());
    };
    match &tp.value {
        Some(type_proto::Value::TensorType(t)) => {
            let dtype = match t.elem_type {
                Some(0) | None => None,
                Some(c) => Some(DType::from_onnx_code(c).ok_or_else(|| format!("unsupported element type {c}"))?),
            };
            let shape = t.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(proto::tensor_shape_proto::dimension::Value::DimValue(v)) if *v >= 0 => Dim::Known(*v),
                        Some(proto::tensor_shape_proto::dimension::Value::DimParam(p)) if !p.is_empty() => {
                            Dim::Sym(p.clone())
                        }
                        _ => Dim::Unknown,
                    })
                    .collect()
            });
            Ok(Facts { dtype, shape, sym_value: None, constant: None })
        }
        None => Ok(Facts::default()),
        Some(_) => Err("only tensor-typed values are supported".into()),
    }
}

pub(super) fn decode_tensor(t: &proto::TensorProto, base: &Path, path: &Path) -> Result<Tensor, OnnxError> {
    let name = t.name.clone().unwrap_or_default();
    let bad =
        |reason: String| OnnxError::Decode { path: path.to_path_buf(), reason: format!("tensor '{name}': {reason}") };
    let code = t.data_type.unwrap_or(0);
    let dtype = DType::from_onnx_code(code).ok_or_else(|| bad(format!("unsupported data type {code}")))?;
    if t.segment.is_some() {
        return Err(bad("segmented tensors are not supported".into()));
    }
    let dims = t.dims.clone();
    let numel = crate::ir::numel(&dims).map_err(|e| bad(e.to_string()))?;
    if dtype == DType::String {
        if t.string_data.len() != numel {
            return Err(bad(format!("{} strings for {numel} elements", t.string_data.len())));
        }
        return Ok(Tensor { dtype, dims, data: TensorData::Strings(t.string_data.clone().into()) });
    }
    let bytes: Vec<u8> = if t.data_location == Some(DataLocation::External as i32) {
        read_external(t, base, path, &name)?
    } else if let Some(raw) = &t.raw_data {
        raw.clone()
    } else {
        typed_fields(t, dtype)
    };
    Tensor::from_raw(dtype, dims, bytes).map_err(|e| bad(e.to_string()))
}

fn typed_fields(t: &proto::TensorProto, dtype: DType) -> Vec<u8> {
    let mut b = Vec::new();
    match dtype {
        DType::F32 => t.float_data.iter().for_each(|v| b.extend_from_slice(&v.to_le_bytes())),
        DType::F64 => t.double_data.iter().for_each(|v| b.extend_from_slice(&v.to_le_bytes())),
        DType::I64 => t.int64_data.iter().for_each(|v| b.extend_from_slice(&v.to_le_bytes())),
        DType::U64 => t.uint64_data.iter().for_each(|v| b.extend_from_slice(&v.to_le_bytes())),
        DType::U32 => t.uint64_data.iter().for_each(|v| b.extend_from_slice(&(*v as u32).to_le_bytes())),
        DType::I32 => t.int32_data.iter().for_each(|v| b.extend_from_slice(&v.to_le_bytes())),
        DType::I16 | DType::U16 | DType::F16 | DType::BF16 => {
            t.int32_data.iter().for_each(|v| b.extend_from_slice(&(*v as u16).to_le_bytes()))
        }
        DType::I8 | DType::U8 | DType::Bool => t.int32_data.iter().for_each(|v| b.push(*v as u8)),
        DType::String => {}
    }
    b
}

fn read_external(t: &proto::TensorProto, base: &Path, path: &Path, name: &str) -> Result<Vec<u8>, OnnxError> {
    let err = |reason: String| OnnxError::ExternalData { path: path.to_path_buf(), tensor: name.to_string(), reason };
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for e in &t.external_data {
        let value = e.value.clone().unwrap_or_default();
        match e.key.as_deref() {
            Some("location") => location = Some(value),
            Some("offset") => offset = value.parse().map_err(|_| err(format!("bad offset '{value}'")))?,
            Some("length") => length = Some(value.parse::<u64>().map_err(|_| err(format!("bad length '{value}'")))?),
            _ => {}
        }
    }
    let location = location.ok_or_else(|| err("no location".into()))?;
    let rel = Path::new(&location);
    if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(err(format!("location '{location}' must be a relative path inside the model's folder")));
    }
    let file = base.join(rel);
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(&file).map_err(|e| err(format!("cannot open '{}': {e}", file.display())))?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    let length = length.unwrap_or(size.saturating_sub(offset));
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(err(format!(
            "offset {offset} + length {length} runs past the end of '{}' ({size} bytes)",
            file.display()
        )));
    }
    f.seek(SeekFrom::Start(offset)).map_err(|e| err(e.to_string()))?;
    let mut buf = vec![0u8; length as usize];
    f.read_exact(&mut buf).map_err(|e| err(e.to_string()))?;
    Ok(buf)
}

fn decode_attr(a: &proto::AttributeProto, base: &Path, path: &Path) -> Result<Attribute, OnnxError> {
    let name = a.name.clone().unwrap_or_default();
    let unsupported = |what: &str| OnnxError::Unsupported {
        path: path.to_path_buf(),
        reason: format!("attribute '{name}': {what} is not supported"),
    };
    if a.ref_attr_name.is_some() {
        return Err(unsupported("a reference attribute"));
    }
    let ty = a.r#type.and_then(|t| AttributeType::try_from(t).ok()).unwrap_or_else(|| infer_attr_type(a));
    let value = match ty {
        AttributeType::Float => AttrValue::Float(a.f.unwrap_or(0.0)),
        AttributeType::Int => AttrValue::Int(a.i.unwrap_or(0)),
        AttributeType::String => AttrValue::String(a.s.clone().unwrap_or_default()),
        AttributeType::Tensor => {
            let t = a.t.as_ref().ok_or_else(|| unsupported("a tensor attribute without a tensor"))?;
            AttrValue::Tensor(decode_tensor(t, base, path)?)
        }
        AttributeType::Floats => AttrValue::Floats(a.floats.clone()),
        AttributeType::Ints => AttrValue::Ints(a.ints.clone()),
        AttributeType::Strings => AttrValue::Strings(a.strings.clone()),
        AttributeType::Tensors => {
            AttrValue::Tensors(a.tensors.iter().map(|t| decode_tensor(t, base, path)).collect::<Result<_, _>>()?)
        }
        AttributeType::Graph | AttributeType::Graphs => return Err(unsupported("a subgraph (control flow)")),
        _ => return Err(unsupported(&format!("attribute type {ty:?}"))),
    };
    Ok(Attribute { name, value, doc_string: a.doc_string.clone() })
}

fn infer_attr_type(a: &proto::AttributeProto) -> AttributeType {
    if a.f.is_some() {
        AttributeType::Float
    } else if a.i.is_some() {
        AttributeType::Int
    } else if a.s.is_some() {
        AttributeType::String
    } else if a.t.is_some() {
        AttributeType::Tensor
    } else if a.g.is_some() {
        AttributeType::Graph
    } else if !a.floats.is_empty() {
        AttributeType::Floats
    } else if !a.ints.is_empty() {
        AttributeType::Ints
    } else if !a.strings.is_empty() {
        AttributeType::Strings
    } else if !a.tensors.is_empty() {
        AttributeType::Tensors
    } else {
        AttributeType::Undefined
    }
}
