//! Checkpoints: named f32 tensors (weights, masks, optimiser moments, observers) in one
//! safetensors file plus a JSON state (step, epoch, RNG, schedule), written atomically: everything
//! goes to a temporary folder beside the target, which is renamed into place only when complete.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{de::DeserializeOwned, Serialize};

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
