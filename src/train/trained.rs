//! The trained folder: the compiled model with the trained weights, masks, quantization
//! parameters and QAT switch bound as initializers, beside the compiled folder's tokenizer,
//! config, recipe and plan.

use anyhow::{bail, Context, Result};

use super::config::TrainConfig;
use crate::compile::Compiled;
use crate::ir::Tensor;
use crate::passes::{BindInputs, Pass};
use crate::runtime::HostTensor;

/// Writes `model.onnx` (trained weights, masks, quantization parameters and switch bound as
/// initializers), and copies tokenizer, config, recipe and plan, into the output folder.
pub(super) fn write_trained(cfg: &TrainConfig, compiled: &Compiled, bound: Vec<(String, HostTensor)>) -> Result<()> {
    let mut model = compiled.model.clone();
    let mut values = Vec::new();
    for (name, t) in bound {
        values.push((name, host_to_tensor(&t)?));
    }
    BindInputs { values }.apply(&mut model).context("cannot bind the trained values")?;
    model.set_metadata("sparsec.trained", "true");
    let dir = &cfg.output_dir;
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "config.json",
        "special_tokens_map.json",
        "vocab.txt",
        "recipe.yaml",
        "plan.json",
    ] {
        let src = compiled.dir.join(f);
        if src.exists() {
            let bytes = std::fs::read(&src).with_context(|| format!("cannot read '{}'", src.display()))?;
            crate::files::write_atomic(&dir.join(f), &bytes)?;
        }
    }
    crate::onnx::save(&model, dir.join("model.onnx"), &crate::onnx::SaveOptions::default())?;
    Ok(())
}

fn host_to_tensor(t: &HostTensor) -> Result<Tensor> {
    let dims = |s: &[usize]| s.iter().map(|&d| d as i64).collect::<Vec<_>>();
    Ok(match t {
        HostTensor::F32(a) => Tensor::from_f32(dims(a.shape()), &a.iter().copied().collect::<Vec<_>>()),
        HostTensor::U8(a) => Tensor::from_u8(dims(a.shape()), &a.iter().copied().collect::<Vec<_>>()),
        HostTensor::I8(a) => Tensor::from_i8(dims(a.shape()), &a.iter().copied().collect::<Vec<_>>()),
        HostTensor::Bool(a) => Tensor::from_bool(dims(a.shape()), &a.iter().copied().collect::<Vec<_>>()),
        HostTensor::I64(a) => Tensor::from_i64(dims(a.shape()), &a.iter().copied().collect::<Vec<_>>()),
        HostTensor::I32(_) => bail!("int32 tensors are not bound"),
    })
}
