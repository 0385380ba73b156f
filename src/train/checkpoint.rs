//! Checkpoints: named f32 tensors (weights, masks, optimiser moments, observers) in one
//! safetensors file plus a JSON state (step, epoch, RNG, schedule), written atomically: everything
//! goes to a temporary folder beside the target, which is renamed into place only when complete.
//! A run's checkpoints are `step-NNNNNNNNN/` folders, the newest few kept.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::log::EvalRecord;
use super::observers::MinMaxObserver;
use super::run::Run;
use super::step::Stepper;

const TENSORS: &str = "tensors.safetensors";
const STATE: &str = "state.json";

/// A named f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Writes `dir/name/` atomically; an older checkpoint of the same name is replaced only after the
/// new one is complete on disk.
pub fn save(dir: &Path, name: &str, tensors: &[NamedTensor], state: &impl Serialize) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
    let target = dir.join(name);
    let tmp = crate::files::staging_dir(&target, &format!(".{name}."))?;
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|t| (t.name.clone(), t.data.iter().flat_map(|x| x.to_le_bytes()).collect(), t.shape.clone()))
        .collect();
    let views = bytes
        .iter()
        .map(|(n, b, s)| Ok((n.as_str(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let blob = safetensors::serialize(views, None)?;
    write_synced(&tmp.path().join(TENSORS), &blob)?;
    write_synced(&tmp.path().join(STATE), &serde_json::to_vec_pretty(state)?)?;
    crate::files::swap_into_place(tmp, &target)?;
    Ok(target)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path).with_context(|| format!("cannot create '{}'", path.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| format!("cannot write '{}'", path.display()))
}

/// Reads a checkpoint folder written by [`save`].
pub fn load<S: DeserializeOwned>(path: &Path) -> Result<(BTreeMap<String, NamedTensor>, S)> {
    let blob =
        std::fs::read(path.join(TENSORS)).with_context(|| format!("cannot read checkpoint '{}'", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&blob)
        .with_context(|| format!("'{}' is not a valid checkpoint", path.join(TENSORS).display()))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            bail!("checkpoint tensor '{name}' has dtype {:?}, expected F32", view.dtype());
        }
        let data = view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        tensors.insert(name.clone(), NamedTensor { name, shape: view.shape().to_vec(), data });
    }
    let state_path = path.join(STATE);
    let state = serde_json::from_slice(
        &std::fs::read(&state_path).with_context(|| format!("cannot read '{}'", state_path.display()))?,
    )
    .with_context(|| format!("'{}' is not a valid checkpoint state", state_path.display()))?;
    Ok((tensors, state))
}

/// A run's position, beside its tensors.
#[derive(Serialize, Deserialize)]
pub(super) struct CheckpointState {
    pub step: u64,
    pub steps_per_epoch: u64,
    pub total_steps: u64,
    pub adam_step: u64,
    pub samples_seen: u64,
    pub qat_started: bool,
    pub fingerprint: serde_json::Value,
    pub evals: Vec<EvalRecord>,
}

/// The run's tensors: weights, AdamW moments, masks and observers.
pub(super) fn snapshot(stepper: &Stepper, run: &Run) -> Vec<NamedTensor> {
    let mut out = Vec::new();
    for (p, s) in stepper.params.iter().zip(&stepper.optimizer.states) {
        out.push(NamedTensor { name: format!("param/{}", p.input), shape: p.shape.clone(), data: p.data.clone() });
        out.push(NamedTensor { name: format!("adam.m/{}", p.input), shape: p.shape.clone(), data: s.exp_avg.clone() });
        out.push(NamedTensor {
            name: format!("adam.v/{}", p.input),
            shape: p.shape.clone(),
            data: s.exp_avg_sq.clone(),
        });
    }
    for m in &run.masks {
        out.push(NamedTensor { name: format!("mask/{}", m.input), shape: m.shape.clone(), data: m.data.clone() });
    }
    for s in &run.sites {
        let (lo, hi) = s.last.unwrap_or((0.0, 0.0));
        let o = &s.observer;
        out.push(NamedTensor {
            name: format!("observer/{}", s.base),
            shape: vec![6],
            data: vec![o.min, o.max, o.initialized as u8 as f32, lo, hi, s.last.is_some() as u8 as f32],
        });
    }
    out
}

/// Checkpoint tensors into the run; every tensor must have the element count of the value it
/// replaces (an error naming it otherwise: the checkpoint is of another model). With
/// `new_sites_allowed`, a quantization site the checkpoint has no observer for keeps its fresh
/// observer (a fork whose recompile added sites before QAT started); returns those sites.
pub(super) fn restore(
    stepper: &mut Stepper,
    run: &mut Run,
    t: &BTreeMap<String, NamedTensor>,
    new_sites_allowed: bool,
) -> Result<Vec<String>> {
    let get = |name: String, len: usize| -> Result<Vec<f32>> {
        let v = t.get(&name).with_context(|| format!("has no tensor '{name}'"))?;
        if v.data.len() != len {
            bail!(
                "tensor '{name}' holds {} values where this model has {len} (a checkpoint of another model?)",
                v.data.len()
            );
        }
        Ok(v.data.clone())
    };
    for (p, s) in stepper.params.iter_mut().zip(stepper.optimizer.states.iter_mut()) {
        let n = p.data.len();
        p.data = get(format!("param/{}", p.input), n)?;
        s.exp_avg = get(format!("adam.m/{}", p.input), n)?;
        s.exp_avg_sq = get(format!("adam.v/{}", p.input), n)?;
    }
    for m in run.masks.iter_mut() {
        m.data = get(format!("mask/{}", m.input), m.data.len())?;
    }
    let mut new_sites = Vec::new();
    for s in run.sites.iter_mut() {
        let name = format!("observer/{}", s.base);
        if new_sites_allowed && !t.contains_key(&name) {
            new_sites.push(s.base.clone());
            continue;
        }
        let d = &get(name, 6)?;
        s.observer = MinMaxObserver { min: d[0], max: d[1], initialized: d[2] != 0.0 };
        s.last = (d[5] != 0.0).then_some((d[3], d[4]));
    }
    Ok(new_sites)
}

/// The newest `step-*` checkpoint in `dir`.
pub(super) fn latest_checkpoint(dir: &Path) -> Result<Option<PathBuf>> {
    if !dir.exists() {
        return Ok(None);
    }
    let mut best: Option<PathBuf> = None;
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list '{}'", dir.display()))? {
        let p = e?.path();
        let is_ckpt = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step-"));
        if is_ckpt && best.as_ref().is_none_or(|b| p.file_name() > b.file_name()) {
            best = Some(p);
        }
    }
    Ok(best)
}

/// Removes all but the newest `keep` (at least one) checkpoints.
pub(super) fn prune_checkpoints(dir: &Path, keep: usize) -> Result<()> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step-")))
        .collect();
    all.sort();
    let n = all.len().saturating_sub(keep.max(1));
    for p in &all[..n] {
        std::fs::remove_dir_all(p).with_context(|| format!("cannot remove old checkpoint '{}'", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let t = |v: f32| vec![NamedTensor { name: "w".into(), shape: vec![2, 2], data: vec![v; 4] }];
        save(dir.path(), "last", &t(1.0), &serde_json::json!({"step": 1})).unwrap();
        let p = save(dir.path(), "last", &t(2.0), &serde_json::json!({"step": 2})).unwrap();
        let (tensors, state): (_, serde_json::Value) = load(&p).unwrap();
        assert_eq!(tensors["w"].data, vec![2.0; 4]);
        assert_eq!(state["step"], 2);
        let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(entries, vec![std::ffi::OsString::from("last")], "no temporary folders left behind");
    }
}
