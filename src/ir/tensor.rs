//! Constant tensors held by the IR (initializers, `Constant` values, tensor attributes).
//!
//! Data is stored once, little-endian and densely packed, behind an `Arc` so that cloning a graph
//! (as every patch does before it commits) does not copy weights.

use std::sync::Arc;

use super::DType;

#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// Little-endian packed elements of a fixed-size dtype.
    Raw(Arc<[u8]>),
    /// Elements of a `DType::String` tensor.
    Strings(Arc<[Vec<u8>]>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: DType,
    pub dims: Vec<i64>,
    pub data: TensorData,
}

#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    #[error("tensor of dtype {dtype} and shape {dims:?} needs {expected} bytes, got {got}")]
    Size { dtype: DType, dims: Vec<i64>, expected: usize, got: usize },
    #[error("tensor has dtype {got}, expected {expected}")]
    DType { expected: DType, got: DType },
    #[error("negative dimension in shape {0:?}")]
    NegativeDim(Vec<i64>),
    #[error("tensor of dtype {dtype} and shape {dims:?} has more bytes than this machine can address")]
    TooLarge { dtype: DType, dims: Vec<i64> },
}

macro_rules! typed_access {
    ($from:ident, $to:ident, $ty:ty, $dt:expr, $n:expr) => {
        pub fn $from(dims: Vec<i64>, values: &[$ty]) -> Tensor {
            let mut bytes = Vec::with_capacity(values.len() * $n);
            for v in values {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            Tensor { dtype: $dt, dims, data: TensorData::Raw(bytes.into()) }
        }

        pub fn $to(&self) -> Result<Vec<$ty>, TensorError> {
            if self.dtype != $dt {
                return Err(TensorError::DType { expected: $dt, got: self.dtype });
            }
            Ok(self.raw().chunks_exact($n).map(|c| <$ty>::from_le_bytes(c.try_into().unwrap())).collect())
        }
    };
}

impl Tensor {
    /// Builds a tensor from raw little-endian bytes, checking the byte count against the shape.
    pub fn from_raw(dtype: DType, dims: Vec<i64>, bytes: Vec<u8>) -> Result<Tensor, TensorError> {
        let numel = numel(&dims)?;
        let Some(expected) = numel.checked_mul(dtype.size().unwrap_or(0)) else {
            return Err(TensorError::TooLarge { dtype, dims });
        };
        if bytes.len() != expected {
            return Err(TensorError::Size { dtype, dims, expected, got: bytes.len() });
        }
        Ok(Tensor { dtype, dims, data: TensorData::Raw(bytes.into()) })
    }

    pub fn scalar_f32(v: f32) -> Tensor {
        Tensor::from_f32(vec![], &[v])
    }

    pub fn scalar_i64(v: i64) -> Tensor {
        Tensor::from_i64(vec![], &[v])
    }

    typed_access!(from_f32, to_f32, f32, DType::F32, 4);
    typed_access!(from_f64, to_f64, f64, DType::F64, 8);
    typed_access!(from_i64, to_i64, i64, DType::I64, 8);
    typed_access!(from_i32, to_i32, i32, DType::I32, 4);
    typed_access!(from_i8, to_i8, i8, DType::I8, 1);
    typed_access!(from_u8, to_u8, u8, DType::U8, 1);

    pub fn from_bool(dims: Vec<i64>, values: &[bool]) -> Tensor {
        let bytes: Vec<u8> = values.iter().map(|&b| b as u8).collect();
        Tensor { dtype: DType::Bool, dims, data: TensorData::Raw(bytes.into()) }
    }

    /// Number of elements (1 for a scalar), saturating at `usize::MAX`.
    pub fn numel(&self) -> usize {
        self.dims.iter().fold(1usize, |n, &d| n.saturating_mul(d.max(0) as usize))
    }

    /// The packed bytes; empty for string tensors.
    pub fn raw(&self) -> &[u8] {
        match &self.data {
            TensorData::Raw(b) => b,
            TensorData::Strings(_) => &[],
        }
    }

    pub fn byte_len(&self) -> usize {
        match &self.data {
            TensorData::Raw(b) => b.len(),
            TensorData::Strings(s) => s.iter().map(Vec::len).sum(),
        }
    }

    /// Any integer-typed tensor widened to i64 (for shape arithmetic).
    pub fn as_i64s(&self) -> Option<Vec<i64>> {
        let b = self.raw();
        Some(match self.dtype {
            DType::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
            DType::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
            DType::U8 | DType::Bool => b.iter().map(|&x| x as i64).collect(),
            DType::I8 => b.iter().map(|&x| x as i8 as i64).collect(),
            _ => return None,
        })
    }

    /// Any float-typed tensor converted to f32.
    pub fn as_f32s(&self) -> Option<Vec<f32>> {
        let b = self.raw();
        Some(match self.dtype {
            DType::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            DType::F64 => b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            DType::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect(),
            DType::BF16 => {
                b.chunks_exact(2).map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect()
            }
            _ => return None,
        })
    }

    /// Fraction of elements that are exactly zero (0.0 or -0.0 for floats).
    pub fn sparsity(&self) -> f64 {
        let n = self.numel();
        if n == 0 {
            return 0.0;
        }
        let zeros = match self.dtype {
            DType::F32 => {
                self.raw().chunks_exact(4).filter(|c| f32::from_le_bytes((*c).try_into().unwrap()) == 0.0).count()
            }
            _ => match self.as_f32s() {
                Some(v) => v.iter().filter(|&&x| x == 0.0).count(),
                None => self.as_i64s().map(|v| v.iter().filter(|&&x| x == 0).count()).unwrap_or(0),
            },
        };
        zeros as f64 / n as f64
    }
}

pub(crate) fn numel(dims: &[i64]) -> Result<usize, TensorError> {
    let mut n = 1usize;
    for &d in dims {
        if d < 0 {
            return Err(TensorError::NegativeDim(dims.to_vec()));
        }
        n = n.saturating_mul(d as usize);
    }
    Ok(n)
}
