//! The pruner each recipe modifier names: magnitude for `GMPruningModifier`,
//! `MagnitudePruningModifier` and `GlobalMagnitudePruningModifier`, OBS for
//! `OBSPruningModifier`, SparseGPT for `SparseGPTModifier` (one-shot only), and keep-the-zeros
//! for `ConstantPruningModifier`. A modifier sparsec cannot carry out is an error here, never a
//! silent fallback.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

use super::magnitude::{Constant, Magnitude, MaskStructure};
use super::movement::Movement;
use super::obs::{Obs, ObsConfig};
use super::sparsegpt::{SgptMask, SparseGpt, SparseGptConfig};
use super::Pruner;
use crate::compile::Plan;
use crate::recipe::{MaskType, Modifier, PruningAlgorithm, SparseGptMask};

/// The magnitude structure of a recipe `mask_type`.
pub fn structure(m: &MaskType) -> MaskStructure {
    match *m {
        MaskType::Unstructured => MaskStructure::Unstructured,
        MaskType::Block { rows, cols } => MaskStructure::Block { out: rows.max(1) as usize, inp: cols.max(1) as usize },
        MaskType::NM { n, m } => MaskStructure::NOfM { n: n as usize, m: m as usize },
    }
}

/// Orders module paths with numeric parts compared as numbers (`layer.2` before `layer.10`).
fn natural_key(s: &str) -> Vec<(u64, String)> {
    s.split('.').map(|p| p.parse::<u64>().map_or((u64::MAX, p.to_string()), |n| (n, String::new()))).collect()
}

/// SparseGPT's groups: the layers (indices into `params`) under each target module, modules in
/// natural order.
pub fn sparsegpt_groups(m: &crate::recipe::SparseGptModifier, params: &[String]) -> Result<Vec<Vec<usize>>> {
    let mut groups: BTreeMap<Vec<(u64, String)>, Vec<usize>> = BTreeMap::new();
    for (i, p) in params.iter().enumerate() {
        let module = p.strip_suffix(".weight").unwrap_or(p);
        match m.group_of(module) {
            Some(g) => groups.entry(natural_key(&g)).or_default().push(i),
            None => bail!("SparseGPTModifier: '{p}' is under none of the targets {:?}", m.targets),
        }
    }
    Ok(groups.into_values().collect())
}

/// One pruner per pruning modifier (by recipe index) of the plan that has masked layers; `params`
/// lists each modifier's masked parameters in mask order. SparseGPT is refused unless `one_shot`.
pub fn pruners(
    plan: &Plan,
    params: &BTreeMap<usize, Vec<String>>,
    max_state_bytes: u64,
    one_shot: bool,
) -> Result<BTreeMap<usize, Box<dyn Pruner>>> {
    let mut out: BTreeMap<usize, Box<dyn Pruner>> = BTreeMap::new();
    for (&i, names) in params {
        let e = &plan.modifiers[i];
        let pruner: Box<dyn Pruner> = match &e.settings {
            Modifier::ConstantPruning(_) => Box::new(Constant),
            Modifier::Pruning(p) => match &p.algorithm {
                PruningAlgorithm::Magnitude => {
                    Box::new(Magnitude { structure: structure(&p.mask_type), global: p.global_sparsity })
                }
                PruningAlgorithm::Obs { num_grads, damp, fisher_block_size, num_recomputations, .. } => {
                    let group = match p.mask_type {
                        MaskType::Unstructured => (1, 1),
                        MaskType::Block { rows, cols } => (rows as usize, cols as usize),
                        MaskType::NM { .. } => bail!("OBSPruningModifier: N:M masks are not supported"),
                    };
                    Box::new(Obs {
                        cfg: ObsConfig {
                            num_grads: *num_grads as usize,
                            damp: *damp,
                            fisher_block_size: *fisher_block_size as usize,
                            num_recomputations: (*num_recomputations).max(1) as usize,
                            group,
                            global: p.global_sparsity,
                            max_state_bytes,
                        },
                    })
                }
                PruningAlgorithm::Movement => {
                    if one_shot {
                        bail!(
                            "MovementPruningModifier (recipe line {}) scores weights from training steps' gradients, \
                             so it cannot run one-shot: train with it instead",
                            e.line
                        );
                    }
                    Box::new(Movement::new(structure(&p.mask_type), p.global_sparsity)?)
                }
            },
            Modifier::SparseGpt(s) => {
                if !one_shot {
                    bail!(
                        "SparseGPTModifier (recipe line {}) is one-shot: run `sparsec train --one-shot N` (N \
                         calibration windows), then fine-tune with a ConstantPruningModifier recipe",
                        e.line
                    );
                }
                let mask = match s.mask_structure {
                    SparseGptMask::Unstructured => SgptMask::Unstructured,
                    SparseGptMask::PruneNOfM { n, m } => SgptMask::PruneNOfM { n: n as usize, m: m as usize },
                    SparseGptMask::Block { rows, cols } => SgptMask::Block { out: rows as usize, inp: cols as usize },
                };
                Box::new(SparseGpt {
                    cfg: SparseGptConfig { block_size: s.block_size as usize, dampening_frac: s.dampening_frac, mask },
                    groups: sparsegpt_groups(s, names)?,
                    sequential_update: s.sequential_update,
                    max_state_bytes,
                })
            }
            _ => continue,
        };
        out.insert(i, pruner);
    }
    Ok(out)
}
