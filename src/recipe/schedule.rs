//! What the recipe asks for at a point in training: each pruning modifier's target sparsity and
//! mask-update steps, the learning rate, whether QAT is on and its observers frozen, and the total
//! number of epochs. The formulas are SparseML's (`sparseml.utils.interpolate`,
//! `ScheduledUpdateModifier.update_ready`, `LearningRateFunctionModifier._linear/_cosine/_cyclic_linear`).

use serde::Serialize;

use super::modifiers::*;
use super::Recipe;

/// SparseML's `interpolate`: maps `x` in `[x0, x1]` to `[y0, y1]` through `linear`
/// (`t`), `cubic` (`1 - (1 - t)^3`) or `inverse_cubic` (`1 - (1 - t)^(1/3)`); outside the range
/// (within `f64::EPSILON` of the ends) it returns the end values.
pub fn interpolate(x: f64, x0: f64, x1: f64, y0: f64, y1: f64, f: InterFunc) -> f64 {
    let t = if x1 == x0 {
        if x >= x1 {
            1.0
        } else {
            0.0
        }
    } else {
        (x - x0) / (x1 - x0)
    };
    let y = match f {
        InterFunc::Linear => t,
        InterFunc::Cubic => 1.0 - (1.0 - t).powi(3),
        InterFunc::InverseCubic => {
            if t >= 1.0 {
                1.0
            } else {
                1.0 - (1.0 - t).powf(1.0 / 3.0)
            }
        }
    };
    if y <= f64::EPSILON {
        return y0;
    }
    if y >= 1.0 - f64::EPSILON {
        return y1;
    }
    y * (y1 - y0) + y0
}

/// One mask recomputation: at `step` (epoch `epoch`), masks are set to `sparsity`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MaskUpdate {
    pub step: u64,
    pub epoch: f64,
    pub sparsity: f64,
}

impl PruningModifier {
    /// The sparsity SparseML applies when it updates masks at `epoch`, for a parameter whose
    /// final target is `final_sparsity` and which starts at `init` (the value of
    /// `init_sparsity`, or the parameter's current sparsity for `__FROM_PARAM__`).
    pub fn sparsity_at_update(&self, epoch: f64, init: f64, final_sparsity: f64) -> f64 {
        interpolate(epoch, self.start_epoch, self.end_epoch, init, final_sparsity, self.inter_func)
    }

    /// The nominal update epochs: `start, start + f, start + 2f, …` below `end`, then `end`.
    /// With `update_frequency == -1` SparseML updates every step; only start and end are listed.
    pub fn update_epochs(&self) -> Vec<f64> {
        let mut out = vec![self.start_epoch];
        if self.update_frequency > 0.0 {
            let mut k = 1.0;
            loop {
                let e = self.start_epoch + k * self.update_frequency;
                if e >= self.end_epoch - 1e-9 {
                    break;
                }
                out.push(e);
                k += 1.0;
            }
        }
        if self.end_epoch > self.start_epoch {
            out.push(self.end_epoch);
        }
        out
    }

    /// The exact mask updates of a run with `steps_per_epoch` optimizer steps per epoch and
    /// `total_steps` steps, replaying SparseML's step-wise rules: start when
    /// `epoch >= start_epoch`; then whenever `epoch >= last_update + update_frequency`
    /// (every step for -1); and at the first step with `epoch >= end_epoch`. `epoch = step / steps_per_epoch`.
    pub fn mask_updates(
        &self,
        steps_per_epoch: u64,
        total_steps: u64,
        init: f64,
        final_sparsity: f64,
    ) -> Vec<MaskUpdate> {
        let mut out = Vec::new();
        let (mut started, mut ended) = (false, false);
        let mut last = -1.0f64;
        for step in 0..total_steps {
            let epoch = step as f64 / steps_per_epoch as f64;
            let start_pending = !started
                && !ended
                && (epoch >= self.start_epoch && self.start_epoch >= 0.0 || self.start_epoch == -1.0);
            let end_pending = !ended && started && epoch >= self.end_epoch && self.end_epoch >= 0.0;
            let periodic = started
                && epoch > self.start_epoch
                && !ended
                && (self.update_frequency == -1.0 || (last >= 0.0 && epoch >= last + self.update_frequency));
            if start_pending || end_pending || periodic {
                last = epoch;
                if start_pending {
                    started = true;
                }
                out.push(MaskUpdate { step, epoch, sparsity: self.sparsity_at_update(epoch, init, final_sparsity) });
                if self.end_epoch >= 0.0 && epoch >= self.end_epoch && started {
                    ended = true;
                }
            }
        }
        out
    }

    /// The sparsity the masks hold at `epoch` on the nominal schedule ([`update_epochs`](Self::update_epochs)):
    /// `None` before `start_epoch`, and after `end_epoch` when `leave_enabled` is false (masks removed).
    pub fn target_sparsity(&self, epoch: f64, init: f64, final_sparsity: f64) -> Option<f64> {
        if epoch < self.start_epoch {
            return None;
        }
        if epoch >= self.end_epoch {
            return self.leave_enabled.then_some(final_sparsity);
        }
        let last = if self.update_frequency == -1.0 {
            epoch
        } else {
            self.update_epochs().into_iter().filter(|&e| e <= epoch + 1e-12).fold(self.start_epoch, f64::max)
        };
        Some(self.sparsity_at_update(last, init, final_sparsity))
    }
}

impl LearningRateFunctionModifier {
    /// SparseML's learning rate at `epoch` while the modifier runs (`start <= epoch <= end`).
    pub fn lr_at(&self, epoch: f64, steps_per_epoch: u64) -> f64 {
        let (init, fin) = (self.init_lr, self.final_lr);
        match self.lr_func {
            LrFunc::Linear => {
                let start = self.start_epoch.max(0.0);
                init + ((epoch - start) / (self.end_epoch - start)) * (fin - init)
            }
            LrFunc::Cosine => {
                let start = self.start_epoch.max(0.0);
                let x = (epoch - start) / (self.end_epoch - start);
                let (range, shift, xshift) =
                    if fin < init { (init - fin, fin, 0.0) } else { (fin - init, init, std::f64::consts::PI) };
                (x * std::f64::consts::PI + xshift).cos() * range / 2.0 + range / 2.0 + shift
            }
            LrFunc::CyclicLinear => {
                let spe = steps_per_epoch as f64;
                let end_step = self.end_epoch * spe;
                let start_step = self.start_epoch * spe;
                let mut cycle = self.cycle_epochs * spe;
                let current = (epoch - self.start_epoch) * spe;
                if current > ((end_step - start_step) / cycle).trunc() * cycle {
                    cycle = (end_step - start_step) % cycle;
                }
                let adjusted = current % cycle;
                init - (adjusted / (cycle - 1.0)) * (init - fin)
            }
        }
    }
}

/// Quantization-aware training state at an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct QuantState {
    /// Fake quantization is applied in the forward pass.
    pub enabled: bool,
    /// Observers no longer update scales and zero points.
    pub observers_frozen: bool,
    pub bn_frozen: bool,
}

/// The schedule of a whole recipe, for the trainer.
#[derive(Clone, Debug)]
pub struct Schedule<'r> {
    /// The recipe's modifiers, in recipe order.
    modifiers: Vec<&'r Modifier>,
}

impl<'r> Schedule<'r> {
    pub fn new(recipe: &'r Recipe) -> Schedule<'r> {
        Schedule::of(recipe.modifiers.iter().map(|e| &e.modifier))
    }

    /// The schedule of these modifiers, in recipe order (as a compiled plan holds them).
    pub fn of(modifiers: impl IntoIterator<Item = &'r Modifier>) -> Schedule<'r> {
        Schedule { modifiers: modifiers.into_iter().collect() }
    }

    fn modifiers(&self) -> impl Iterator<Item = &'r Modifier> + '_ {
        self.modifiers.iter().copied()
    }

    /// Total epochs: the `EpochRangeModifier`'s `end_epoch` (the largest if several), otherwise the
    /// largest `end_epoch` (or `start_epoch`) of any modifier, as SparseML's `max_epochs`.
    pub fn total_epochs(&self) -> f64 {
        let ranges: Vec<f64> = self
            .modifiers()
            .filter_map(|m| match m {
                Modifier::EpochRange(r) => Some(r.end_epoch),
                _ => None,
            })
            .collect();
        if let Some(m) = ranges.into_iter().reduce(f64::max) {
            return m;
        }
        self.modifiers().map(|m| m.end_epoch().max(m.start_epoch())).fold(0.0, f64::max)
    }

    /// The learning rate the recipe sets at `epoch`: the value written last by any LR modifier
    /// (a `LearningRateFunctionModifier` writes every step from its start to its end and then
    /// holds; a `SetLearningRateModifier` writes once at its start); later modifiers win ties.
    /// `None` before any LR modifier starts.
    pub fn learning_rate(&self, epoch: f64, steps_per_epoch: u64) -> Option<f64> {
        let mut best: Option<(f64, f64)> = None;
        for m in self.modifiers() {
            let written = match m {
                Modifier::LearningRateFunction(f) if epoch >= f.start_epoch => {
                    let at = epoch.min(f.end_epoch);
                    Some((at, f.lr_at(at, steps_per_epoch)))
                }
                Modifier::SetLearningRate(s) if epoch >= s.start_epoch => Some((s.start_epoch, s.learning_rate)),
                _ => None,
            };
            if let Some((at, lr)) = written {
                if best.is_none_or(|(b, _)| at >= b) {
                    best = Some((at, lr));
                }
            }
        }
        best.map(|(_, lr)| lr)
    }

    /// QAT state at `epoch` from the (last) `QuantizationModifier`; `None` without one.
    pub fn quantization(&self, epoch: f64) -> Option<QuantState> {
        let q = self
            .modifiers()
            .filter_map(|m| match m {
                Modifier::Quantization(q) => Some(q),
                _ => None,
            })
            .last()?;
        let enabled = epoch >= q.start_epoch && (q.end_epoch == -1.0 || epoch < q.end_epoch);
        Some(QuantState {
            enabled,
            observers_frozen: q.disable_quantization_observer_epoch.is_some_and(|e| epoch >= e),
            bn_frozen: q.freeze_bn_stats_epoch.is_some_and(|e| epoch >= e),
        })
    }

    /// Pruning modifiers in recipe order.
    pub fn pruning(&self) -> impl Iterator<Item = &'r PruningModifier> + '_ {
        self.modifiers().filter_map(|m| match m {
            Modifier::Pruning(p) => Some(p),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::ALL_PRUNABLE;

    fn gmp(inter_func: InterFunc, update_frequency: f64) -> PruningModifier {
        PruningModifier {
            kind: "GMPruningModifier".into(),
            algorithm: PruningAlgorithm::Magnitude,
            init_sparsity: InitSparsity::Value(0.05),
            final_sparsity: vec![0.8],
            start_epoch: 2.0,
            end_epoch: 12.0,
            update_frequency,
            params: vec![ALL_PRUNABLE.into()],
            leave_enabled: true,
            inter_func,
            mask_type: MaskType::Unstructured,
            global_sparsity: false,
        }
    }

    #[test]
    fn interpolation_matches_sparseml_formulas_by_hand() {
        // t = (4.5 - 2) / (12 - 2) = 0.25
        let lin = interpolate(4.5, 2.0, 12.0, 0.05, 0.8, InterFunc::Linear);
        assert!((lin - (0.05 + 0.25 * 0.75)).abs() < 1e-12, "{lin}");
        // cubic: 1 - 0.75^3 = 0.578125 → 0.05 + 0.578125 * 0.75 = 0.48359375
        let cub = interpolate(4.5, 2.0, 12.0, 0.05, 0.8, InterFunc::Cubic);
        assert!((cub - 0.48359375).abs() < 1e-12, "{cub}");
        // inverse cubic: 1 - 0.75^(1/3) = 0.0914397 → 0.05 + 0.0914397 * 0.75 = 0.1185798
        let inv = interpolate(4.5, 2.0, 12.0, 0.05, 0.8, InterFunc::InverseCubic);
        assert!((inv - (0.05 + (1.0 - 0.75f64.cbrt()) * 0.75)).abs() < 1e-12, "{inv}");
        assert!((inv - 0.118_579_777_7).abs() < 1e-9, "{inv}");
        for f in [InterFunc::Linear, InterFunc::Cubic, InterFunc::InverseCubic] {
            assert_eq!(interpolate(1.0, 2.0, 12.0, 0.05, 0.8, f), 0.05);
            assert_eq!(interpolate(2.0, 2.0, 12.0, 0.05, 0.8, f), 0.05);
            assert_eq!(interpolate(12.0, 2.0, 12.0, 0.05, 0.8, f), 0.8);
            assert_eq!(interpolate(20.0, 2.0, 12.0, 0.05, 0.8, f), 0.8);
        }
    }

    #[test]
    fn target_sparsity_is_piecewise_constant_between_updates() {
        let m = gmp(InterFunc::Cubic, 1.0);
        assert_eq!(m.update_epochs(), vec![2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]);
        assert_eq!(m.target_sparsity(1.9, 0.05, 0.8), None);
        assert_eq!(m.target_sparsity(2.5, 0.05, 0.8), Some(0.05));
        // held at the epoch-4 update: t = 0.2, 1 - 0.8^3 = 0.488 → 0.05 + 0.488 * 0.75 = 0.416
        let s = m.target_sparsity(4.99, 0.05, 0.8).unwrap();
        assert!((s - 0.416).abs() < 1e-12, "{s}");
        assert_eq!(m.target_sparsity(12.0, 0.05, 0.8), Some(0.8));
        let mut off = m.clone();
        off.leave_enabled = false;
        assert_eq!(off.target_sparsity(13.0, 0.05, 0.8), None);
    }

    #[test]
    fn step_replay_updates_at_start_every_frequency_and_end() {
        let m = gmp(InterFunc::Linear, 2.5);
        let ups = m.mask_updates(4, 4 * 14, 0.05, 0.8);
        let epochs: Vec<f64> = ups.iter().map(|u| u.epoch).collect();
        assert_eq!(epochs, vec![2.0, 4.5, 7.0, 9.5, 12.0]);
        // linear at 7.0: t = 0.5 → 0.425
        assert!((ups[2].sparsity - 0.425).abs() < 1e-12);
        assert_eq!(ups.last().unwrap().sparsity, 0.8);
        assert_eq!(ups[0].step, 8);
    }

    #[test]
    fn learning_rate_functions_follow_sparseml() {
        let mut f = LearningRateFunctionModifier {
            lr_func: LrFunc::Linear,
            init_lr: 8e-5,
            final_lr: 8e-6,
            start_epoch: 0.0,
            end_epoch: 2.0,
            cycle_epochs: 1.0,
            param_groups: None,
            update_frequency: -1.0,
        };
        assert!((f.lr_at(0.5, 100) - (8e-5 + 0.25 * (8e-6 - 8e-5))).abs() < 1e-15);
        f.lr_func = LrFunc::Cosine;
        // cos(0.25π) * 7.2e-5 / 2 + 7.2e-5 / 2 + 8e-6
        let want = (0.25 * std::f64::consts::PI).cos() * 7.2e-5 / 2.0 + 7.2e-5 / 2.0 + 8e-6;
        assert!((f.lr_at(0.5, 100) - want).abs() < 1e-15);
        f.lr_func = LrFunc::CyclicLinear;
        f.start_epoch = 2.0;
        f.end_epoch = 30.0;
        f.cycle_epochs = 4.0;
        // 10 steps/epoch, cycle = 40 steps; epoch 3.0 → step 10 of the cycle: 8e-5 - 10/39 * 7.2e-5
        assert!((f.lr_at(3.0, 10) - (8e-5 - 10.0 / 39.0 * 7.2e-5)).abs() < 1e-15);
        // epoch 6.0 → a new cycle starts: back to init_lr
        assert!((f.lr_at(6.0, 10) - 8e-5).abs() < 1e-15);
    }
}
