//! The teacher of distillation: a model on ONNX Runtime that returns its logits, and the outputs
//! of the modules hidden-state distillation reads, for each training batch.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::config::{Teacher, TrainConfig};
use crate::compile::loss::Loss;
use crate::compile::Compiled;
use crate::ir::{infer, modules};
use crate::runtime::{self, Backend, EngineKind, EngineOptions, HostTensor};

/// The teacher model on ORT, with the outputs of the modules that hidden-state distillation reads.
pub(super) struct TeacherModel {
    backend: Box<dyn Backend>,
    /// Output names of the distilled modules, in the recipe's order.
    hidden: Vec<String>,
}

/// What the teacher returns for one batch.
pub(super) struct TeacherOutputs {
    pub start: HostTensor,
    pub end: HostTensor,
    pub hidden: Vec<HostTensor>,
}

impl TeacherModel {
    /// The teacher a run with loss `loss` needs (none when the loss distills nothing): the model
    /// of `cfg.teacher`, or the one `sparsec compile` started from.
    pub fn for_run(
        cfg: &TrainConfig,
        compiled: &Compiled,
        loss: &Loss,
        opts: &EngineOptions,
    ) -> Result<Option<TeacherModel>> {
        let modules = &loss.teacher_modules;
        Ok(match (loss.needs_teacher(), &cfg.teacher) {
            (false, _) => None,
            (true, Teacher::Path(p)) => Some(load_teacher(p, opts, modules)?),
            (true, _) => {
                let original = PathBuf::from(&compiled.plan.model);
                if !original.exists() {
                    bail!(
                        "the recipe distills from a teacher, and the model compile started from ('{}') is gone: pass \
                         --distill-teacher PATH or --distill-teacher disable",
                        original.display()
                    );
                }
                Some(load_teacher(&original, opts, modules)?)
            }
        })
    }
}

fn load_teacher(path: &Path, opts: &EngineOptions, modules: &[String]) -> Result<TeacherModel> {
    let what = || format!("teacher '{}'", path.display());
    let (backend, hidden) = if modules.is_empty() {
        (runtime::load_file(path, EngineKind::Ort, opts).with_context(what)?, Vec::new())
    } else {
        let mut model = crate::onnx::load(path).with_context(what)?;
        infer::infer_facts(&mut model).with_context(what)?;
        let mut values = Vec::new();
        for m in modules {
            let v = modules::module_output(&model.graph, m).with_context(|| {
                format!("{}: no module '{m}' (PerLayerDistillationModifier teacher_layer_names)", what())
            })?;
            values.push(v);
        }
        let present: Vec<_> = model.graph.outputs().to_vec();
        model
            .graph
            .edit(|p| -> Result<(), crate::ir::IrError> {
                for &v in values.iter().filter(|v| !present.contains(v)) {
                    p.add_output(v);
                }
                Ok(())
            })
            .with_context(what)?;
        let hidden = values.iter().map(|&v| model.graph.value(v).name.clone()).collect();
        let bytes = crate::onnx::encode_model(&model);
        (runtime::load_bytes(&bytes, EngineKind::Ort, opts).with_context(what)?, hidden)
    };
    let outs = backend.output_names();
    if !outs.iter().any(|o| o == "start_logits") || !outs.iter().any(|o| o == "end_logits") {
        bail!("teacher '{}' has no start_logits/end_logits outputs (it has {outs:?})", path.display());
    }
    Ok(TeacherModel { backend, hidden })
}

impl TeacherModel {
    pub fn run(&mut self, inputs: &[(&str, HostTensor)]) -> Result<TeacherOutputs> {
        let names = self.backend.input_names().to_vec();
        let feed: Vec<(&str, HostTensor)> =
            inputs.iter().filter(|(n, _)| names.iter().any(|m| m == n)).cloned().collect();
        let out = self.backend.run(&feed).context("teacher run")?;
        let take = |n: &str| -> Result<HostTensor> {
            let i = out.iter().position(|(o, _)| o == n).with_context(|| format!("teacher has no '{n}'"))?;
            Ok(out[i].1.clone())
        };
        let hidden = self.hidden.iter().map(|n| take(n)).collect::<Result<Vec<_>>>()?;
        Ok(TeacherOutputs { start: take("start_logits")?, end: take("end_logits")?, hidden })
    }
}
