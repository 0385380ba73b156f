//! Activation observers for quantization-aware training: a moving-average min/max per fake-quant
//! site (torch's `MovingAverageMinMaxObserver`, averaging constant 0.01), turned into the
//! scale and zero point the training graph reads as inputs.
//!
//! The training graph reports each site's batch min and max as outputs of the same run that
//! consumes the scale, so the observed range lags the fake quantization by one step (torch
//! updates the observer before quantizing the same batch).

use serde::{Deserialize, Serialize};

use crate::passes::MIN_SCALE;

/// torch's default averaging constant for QAT activation observers.
pub const AVERAGING_CONSTANT: f32 = 0.01;

/// Moving-average min/max of one activation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MinMaxObserver {
    pub min: f32,
    pub max: f32,
    /// Whether any batch was observed.
    pub initialized: bool,
}

impl Default for MinMaxObserver {
    fn default() -> Self {
        MinMaxObserver { min: 0.0, max: 0.0, initialized: false }
    }
}

impl MinMaxObserver {
    /// Folds one batch's range in: the first batch sets it, later ones move it by `c` of the way.
    pub fn observe(&mut self, min: f32, max: f32, c: f32) {
        if !self.initialized {
            self.min = min;
            self.max = max;
            self.initialized = true;
        } else {
            self.min += c * (min - self.min);
            self.max += c * (max - self.max);
        }
    }

    /// torch's `calculate_qparams`: asymmetric uint8 `scale = (max⁺ - min⁻) / 255`,
    /// `zero_point = clamp(-round(min⁻ / scale), 0, 255)`; symmetric int8
    /// `scale = max(|min⁻|, max⁺) / 127.5`, zero point 0. The range always includes 0 and the
    /// scale is at least `f32::EPSILON`. Uninitialised observers give `(1, 0)`.
    pub fn qparams(&self, symmetric: bool) -> (f32, i32) {
        if !self.initialized {
            return (1.0, 0);
        }
        let lo = self.min.min(0.0);
        let hi = self.max.max(0.0);
        if symmetric {
            let scale = (hi.max(-lo) / 127.5).max(MIN_SCALE);
            return (scale, 0);
        }
        let scale = ((hi - lo) / 255.0).max(MIN_SCALE);
        let zp = (-(lo / scale).round_ties_even()).clamp(0.0, 255.0) as i32;
        (scale, zp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average_and_qparams_follow_torch() {
        let mut o = MinMaxObserver::default();
        o.observe(-1.0, 3.0, 0.01);
        o.observe(-2.0, 5.0, 0.01);
        assert!((o.min - (-1.01)).abs() < 1e-6 && (o.max - 3.02).abs() < 1e-6);
        let (s, zp) = o.qparams(false);
        assert!((s - 4.03 / 255.0).abs() < 1e-7);
        assert_eq!(zp, (1.01f32 / s).round() as i32);
        let (s, zp) = o.qparams(true);
        assert!((s - 3.02 / 127.5).abs() < 1e-7 && zp == 0);
        let mut pos = MinMaxObserver::default();
        pos.observe(0.5, 2.0, 0.01);
        assert_eq!(pos.qparams(false).1, 0, "the range is widened to include 0");
    }
}
