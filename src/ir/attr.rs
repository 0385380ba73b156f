//! Node attributes, with the typed getters op rules use.

use super::Tensor;

#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Float(f32),
    Int(i64),
    String(Vec<u8>),
    Tensor(Tensor),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Strings(Vec<Vec<u8>>),
    Tensors(Vec<Tensor>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Attribute {
    pub name: String,
    pub value: AttrValue,
    pub doc_string: Option<String>,
}

impl Attribute {
    pub fn new(name: impl Into<String>, value: AttrValue) -> Attribute {
        Attribute { name: name.into(), value, doc_string: None }
    }
    pub fn int(name: impl Into<String>, v: i64) -> Attribute {
        Attribute::new(name, AttrValue::Int(v))
    }
    pub fn float(name: impl Into<String>, v: f32) -> Attribute {
        Attribute::new(name, AttrValue::Float(v))
    }
    pub fn ints(name: impl Into<String>, v: Vec<i64>) -> Attribute {
        Attribute::new(name, AttrValue::Ints(v))
    }
    pub fn tensor(name: impl Into<String>, t: Tensor) -> Attribute {
        Attribute::new(name, AttrValue::Tensor(t))
    }
    pub fn string(name: impl Into<String>, s: &str) -> Attribute {
        Attribute::new(name, AttrValue::String(s.as_bytes().to_vec()))
    }
}

/// Typed attribute lookup on a node's attribute list.
pub trait Attrs {
    fn attr(&self, name: &str) -> Option<&AttrValue>;

    fn attr_int(&self, name: &str) -> Option<i64> {
        match self.attr(name) {
            Some(AttrValue::Int(v)) => Some(*v),
            _ => None,
        }
    }
    fn attr_float(&self, name: &str) -> Option<f32> {
        match self.attr(name) {
            Some(AttrValue::Float(v)) => Some(*v),
            _ => None,
        }
    }
    fn attr_ints(&self, name: &str) -> Option<&[i64]> {
        match self.attr(name) {
            Some(AttrValue::Ints(v)) => Some(v),
            _ => None,
        }
    }
    fn attr_str(&self, name: &str) -> Option<&str> {
        match self.attr(name) {
            Some(AttrValue::String(v)) => std::str::from_utf8(v).ok(),
            _ => None,
        }
    }
    fn attr_tensor(&self, name: &str) -> Option<&Tensor> {
        match self.attr(name) {
            Some(AttrValue::Tensor(t)) => Some(t),
            _ => None,
        }
    }
}

impl Attrs for [Attribute] {
    fn attr(&self, name: &str) -> Option<&AttrValue> {
        self.iter().find(|a| a.name == name).map(|a| &a.value)
    }
}
