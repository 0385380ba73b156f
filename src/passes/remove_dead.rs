//! `RemoveDead`: named outputs dropped, then everything that no output needs.

use std::collections::HashSet;

use super::{Pass, PassError, PassReport};
use crate::ir::{Model, Patch};

/// Drops graph outputs and removes dead nodes and initializers.
///
/// - Matches: graph outputs whose name is in `drop_outputs` or ends with one of `drop_suffixes`;
///   then every node not on a path to a remaining output, and every initializer no remaining node
///   reads (and that is neither a graph input nor an output).
/// - Emits: nothing new; the remaining outputs are computed exactly as before.
/// - Assumes: nothing; graph inputs stay even when unused (callers may still feed them).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RemoveDead {
    #[serde(default)]
    pub drop_outputs: Vec<String>,
    #[serde(default)]
    pub drop_suffixes: Vec<String>,
}

impl Pass for RemoveDead {
    fn name(&self) -> &'static str {
        "RemoveDead"
    }

    fn run(&self, model: &mut Model) -> Result<PassReport, PassError> {
        let pass = self.name();
        let mut report = PassReport { pass: pass.into(), ..PassReport::default() };
        let dropped = |name: &str| {
            self.drop_outputs.iter().any(|d| d == name) || self.drop_suffixes.iter().any(|s| name.ends_with(s.as_str()))
        };
        model
            .graph
            .edit(|p: &mut Patch| -> Result<(), PassError> {
                let g = p.graph();
                for &o in g.outputs() {
                    if dropped(&g.value(o).name) {
                        p.remove_output(o);
                    }
                }
                Ok(())
            })
            .map_err(|e: PassError| e.in_pass(pass))?;
        model
            .graph
            .edit(|p: &mut Patch| -> Result<(), PassError> {
                let g = p.graph();
                let live = g.live_nodes();
                let mut read: HashSet<_> = g.outputs().iter().copied().collect();
                read.extend(g.inputs().iter().copied());
                for (id, n) in g.nodes() {
                    if live.contains(&id) {
                        read.extend(n.inputs.iter().flatten().copied());
                    } else {
                        p.remove_node(id);
                        report.rewritten += 1;
                    }
                }
                for &v in g.initializers().keys() {
                    if !read.contains(&v) {
                        p.remove_initializer(v);
                    }
                }
                Ok(())
            })
            .map_err(|e: PassError| e.in_pass(pass))?;
        Ok(report)
    }
}
