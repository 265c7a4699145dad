//! Learning-rate schedule: linear warmup, then linear decay to zero.
//!
//! The same shape as Hugging Face's `get_linear_schedule_with_warmup`, which angle-emb uses: the optimizer step that
//! follows `done` completed steps runs at `lr_at(done)`. With no warmup the first step runs at the full rate and the
//! last one at `base / total`.

/// Linear warmup over `warmup` steps, then linear decay to 0 at `total` steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearSchedule {
    pub base: f32,
    pub warmup: u64,
    pub total: u64,
}

impl LinearSchedule {
    pub fn new(base: f32, warmup: u64, total: u64) -> Self {
        Self { base, warmup, total }
    }

    /// Learning rate of the optimizer step taken after `done` completed steps.
    pub fn lr_at(&self, done: u64) -> f32 {
        if done < self.warmup {
            return self.base * done as f32 / self.warmup as f32;
        }
        let decay_steps = self.total.saturating_sub(self.warmup);
        if decay_steps == 0 {
            return 0.0;
        }
        let left = self.total.saturating_sub(done);
        self.base * left as f32 / decay_steps as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_warmup_decays_linearly_to_zero() {
        let s = LinearSchedule::new(1.0, 0, 4);
        let lrs: Vec<f32> = (0..5).map(|d| s.lr_at(d)).collect();
        assert_eq!(lrs, vec![1.0, 0.75, 0.5, 0.25, 0.0]);
    }

    #[test]
    fn warmup_then_decay() {
        let s = LinearSchedule::new(2.0, 2, 6);
        let lrs: Vec<f32> = (0..7).map(|d| s.lr_at(d)).collect();
        assert_eq!(lrs, vec![0.0, 1.0, 2.0, 1.5, 1.0, 0.5, 0.0]);
        // Past the end the rate stays at zero instead of going negative.
        assert_eq!(s.lr_at(10), 0.0);
    }

    #[test]
    fn warmup_longer_than_training_never_divides_by_zero() {
        let s = LinearSchedule::new(1.0, 10, 5);
        assert_eq!(s.lr_at(5), 0.5);
        assert_eq!(s.lr_at(10), 0.0);
    }
}
