//! What is known statically about a value: element type, shape with symbolic dimensions, and, for
//! small integer tensors that describe shapes, their (possibly symbolic) contents.

use std::fmt;

use super::{DType, Tensor};

/// One dimension of a shape: a number, a named symbol (`batch`, `sequence`), or nothing known.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Known(i64),
    Sym(String),
    Unknown,
}

impl Dim {
    pub fn known(&self) -> Option<i64> {
        match self {
            Dim::Known(v) => Some(*v),
            _ => None,
        }
    }

    /// Whether two dims can describe the same extent (unknowns agree with anything).
    pub fn compatible(&self, other: &Dim) -> bool {
        match (self, other) {
            (Dim::Known(a), Dim::Known(b)) => a == b,
            (Dim::Sym(a), Dim::Sym(b)) => a == b,
            _ => true,
        }
    }

    /// The product of two dims, symbolic where needed (`batch*sequence`).
    pub fn mul(&self, other: &Dim) -> Dim {
        match (self, other) {
            (Dim::Known(a), Dim::Known(b)) => Dim::Known(a * b),
            (Dim::Known(1), d) | (d, Dim::Known(1)) => d.clone(),
            (Dim::Sym(a), Dim::Sym(b)) => Dim::Sym(format!("{a}*{b}")),
            (Dim::Sym(a), Dim::Known(b)) | (Dim::Known(b), Dim::Sym(a)) => Dim::Sym(format!("{a}*{b}")),
            _ => Dim::Unknown,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(v) => write!(f, "{v}"),
            Dim::Sym(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// Static knowledge about one value. `None` fields mean "not known".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Facts {
    pub dtype: Option<DType>,
    pub shape: Option<Vec<Dim>>,
    /// Elementwise contents of a rank-0/1 integer tensor whose entries may be symbolic
    /// (the result of `Shape`, or shape arithmetic on it). Used to infer `Reshape`, `Expand`, ….
    pub sym_value: Option<Vec<Dim>>,
    /// The full value, when it is a compile-time constant.
    pub constant: Option<Tensor>,
}

impl Facts {
    pub fn new(dtype: DType, shape: Vec<Dim>) -> Facts {
        Facts { dtype: Some(dtype), shape: Some(shape), sym_value: None, constant: None }
    }

    pub fn of_tensor(t: &Tensor) -> Facts {
        let sym_value = if t.dims.len() <= 1 && t.numel() <= 64 {
            t.as_i64s().map(|v| v.into_iter().map(Dim::Known).collect())
        } else {
            None
        };
        Facts {
            dtype: Some(t.dtype),
            shape: Some(t.dims.iter().map(|&d| Dim::Known(d)).collect()),
            sym_value,
            constant: Some(t.clone()),
        }
    }

    pub fn rank(&self) -> Option<usize> {
        self.shape.as_ref().map(Vec::len)
    }

    /// Facts without the contents (what is written to `value_info`).
    pub fn type_only(&self) -> Facts {
        Facts { dtype: self.dtype, shape: self.shape.clone(), sym_value: None, constant: None }
    }
}

impl fmt::Display for Facts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dtype {
            Some(d) => write!(f, "{d}")?,
            None => f.write_str("?")?,
        }
        match &self.shape {
            Some(s) => {
                f.write_str("[")?;
                for (i, d) in s.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{d}")?;
                }
                f.write_str("]")
            }
            None => f.write_str("[..]"),
        }
    }
}
