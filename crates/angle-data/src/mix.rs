//! Several datasets in one run, every batch from one of them (sentence-transformers' `MultiDatasetBatchSamplers`):
//! formats and in-batch negatives never mix across datasets.
//!
//! An epoch runs each dataset's own [`EpochPlan`] (its own shuffle) and interleaves their batches:
//! - [`Sampler::Proportional`] (the default): every batch of every dataset once, in a shuffled order, so a
//!   dataset's share of the steps is its share of the batches;
//! - [`Sampler::RoundRobin`]: one batch of each dataset in turn, until the one with the fewest batches runs out
//!   (the others' remaining batches are left out of that epoch).
//!
//! Like a single plan, the order is a pure function of `(seed, epoch)`: a resumed run needs only the position.

use std::str::FromStr;

use crate::rng::{STREAM_MIX, SplitMix64, derive};
use crate::{BatchConfig, DataError, Dataset, EpochPlan};

/// How batches of several datasets are interleaved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sampler {
    #[default]
    Proportional,
    RoundRobin,
}

impl Sampler {
    pub fn name(self) -> &'static str {
        match self {
            Sampler::Proportional => "proportional",
            Sampler::RoundRobin => "round-robin",
        }
    }
}

impl FromStr for Sampler {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s {
            "proportional" => Ok(Sampler::Proportional),
            "round-robin" | "round_robin" => Ok(Sampler::RoundRobin),
            _ => Err(DataError::Config(format!(
                "unknown sampler {s:?}: proportional or round-robin"
            ))),
        }
    }
}

/// One epoch over several datasets: each dataset's plan and the interleaved order of their batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MixedPlan {
    pub plans: Vec<EpochPlan>,
    /// Batch `i` of the epoch is batch `order[i].1` of dataset `order[i].0`.
    order: Vec<(u32, u32)>,
}

impl MixedPlan {
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// (dataset, batch of that dataset's plan) of batch `i`.
    pub fn at(&self, i: usize) -> (usize, usize) {
        let (d, b) = self.order[i];
        (d as usize, b as usize)
    }
}

/// The seed of dataset `index` of `count`: a single dataset keeps the run's seed (its order is then exactly a
/// one-dataset run's), several get independent streams.
pub fn dataset_seed(seed: u64, index: usize, count: usize) -> u64 {
    if count == 1 {
        seed
    } else {
        derive(&[seed, STREAM_MIX, u64::MAX, index as u64])
    }
}

/// Batches per epoch of `datasets` under `sampler` (the same every epoch).
pub fn mixed_batches_per_epoch(datasets: &[&Dataset], config: &BatchConfig, sampler: Sampler) -> usize {
    let per: Vec<usize> = datasets.iter().map(|d| d.batches_per_epoch(config)).collect();
    match sampler {
        Sampler::Proportional => per.iter().sum(),
        Sampler::RoundRobin => per.iter().min().copied().unwrap_or(0) * per.len(),
    }
}

/// Epoch `epoch` over `datasets`: dataset `i` is planned with [`dataset_seed`] of `config.seed`, then the batches
/// are interleaved as `sampler` says.
pub fn plan_mixed_epoch(
    datasets: &[&Dataset],
    config: &BatchConfig,
    sampler: Sampler,
    epoch: u64,
) -> Result<MixedPlan, DataError> {
    let n = datasets.len();
    let plans = datasets
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let c = BatchConfig {
                seed: dataset_seed(config.seed, i, n),
                ..config.clone()
            };
            d.plan_epoch(&c, epoch)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut order = Vec::new();
    match sampler {
        Sampler::Proportional => {
            for (d, p) in plans.iter().enumerate() {
                order.extend((0..p.len() as u32).map(|b| (d as u32, b)));
            }
            if n > 1 {
                SplitMix64::new(derive(&[config.seed, STREAM_MIX, epoch])).shuffle(&mut order);
                // Each dataset's batches keep their own plan's order: only which dataset comes next is drawn.
                let mut next = vec![0u32; n];
                for slot in &mut order {
                    slot.1 = next[slot.0 as usize];
                    next[slot.0 as usize] += 1;
                }
            }
        }
        Sampler::RoundRobin => {
            let rounds = plans.iter().map(|p| p.len()).min().unwrap_or(0) as u32;
            for b in 0..rounds {
                order.extend((0..n as u32).map(|d| (d, b)));
            }
        }
    }
    Ok(MixedPlan { plans, order })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FileKind, Prompts, ReadOptions, TextTokenizer};

    fn dataset(rows: usize, tag: &str) -> Dataset {
        let csv: String = std::iter::once("text1,text2,label\n".to_string())
            .chain((0..rows).map(|i| format!("{tag} a{i},{tag} b{i},1\n")))
            .collect();
        let raw = crate::read_from(
            csv.as_bytes(),
            "t.csv".as_ref(),
            FileKind::Csv,
            &ReadOptions::default(),
        )
        .unwrap();
        let tok = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/models/all-MiniLM-L6-v2/tokenizer.json");
        Dataset::new(
            &raw,
            &Prompts::default(),
            &TextTokenizer::from_file(tok, 32).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn one_dataset_is_its_own_plan() {
        let d = dataset(10, "x");
        let c = BatchConfig::train(3, 42);
        let m = plan_mixed_epoch(&[&d], &c, Sampler::Proportional, 2).unwrap();
        let p = d.plan_epoch(&c, 2).unwrap();
        assert_eq!(m.plans[0], p);
        assert_eq!(m.len(), p.len());
        assert!((0..m.len()).all(|i| m.at(i) == (0, i)));
    }

    #[test]
    fn proportional_takes_every_batch_once_in_plan_order() {
        let (a, b) = (dataset(10, "a"), dataset(31, "b"));
        let c = BatchConfig::train(4, 7);
        let m = plan_mixed_epoch(&[&a, &b], &c, Sampler::Proportional, 0).unwrap();
        assert_eq!(m.len(), 3 + 8);
        assert_eq!(
            m.len(),
            mixed_batches_per_epoch(&[&a, &b], &c, Sampler::Proportional)
        );
        for d in 0..2 {
            let seen: Vec<usize> = (0..m.len())
                .map(|i| m.at(i))
                .filter(|x| x.0 == d)
                .map(|x| x.1)
                .collect();
            assert_eq!(seen, (0..m.plans[d].len()).collect::<Vec<_>>());
        }
        // Interleaved, not one dataset after the other; another epoch draws another order; the same epoch the same.
        let firsts: Vec<usize> = (0..m.len()).map(|i| m.at(i).0).collect();
        assert_ne!(firsts, [vec![0; 3], vec![1; 8]].concat());
        let again = plan_mixed_epoch(&[&a, &b], &c, Sampler::Proportional, 0).unwrap();
        assert_eq!(again, m);
        let next = plan_mixed_epoch(&[&a, &b], &c, Sampler::Proportional, 1).unwrap();
        assert_ne!(next, m);
    }

    #[test]
    fn round_robin_alternates_until_the_smallest_runs_out() {
        let (a, b, c3) = (dataset(9, "a"), dataset(20, "b"), dataset(40, "c"));
        let c = BatchConfig::train(4, 1);
        let m = plan_mixed_epoch(&[&a, &b, &c3], &c, Sampler::RoundRobin, 0).unwrap();
        assert_eq!(m.len(), 9);
        assert_eq!(
            m.len(),
            mixed_batches_per_epoch(&[&a, &b, &c3], &c, Sampler::RoundRobin)
        );
        let got: Vec<(usize, usize)> = (0..m.len()).map(|i| m.at(i)).collect();
        assert_eq!(
            got,
            vec![
                (0, 0),
                (1, 0),
                (2, 0),
                (0, 1),
                (1, 1),
                (2, 1),
                (0, 2),
                (1, 2),
                (2, 2)
            ]
        );
        // Each dataset shuffles on its own seed.
        assert_ne!(m.plans[1].examples(0), m.plans[2].examples(0));
    }

    #[test]
    fn sampler_names_parse() {
        assert_eq!("round-robin".parse::<Sampler>().unwrap(), Sampler::RoundRobin);
        assert_eq!("proportional".parse::<Sampler>().unwrap(), Sampler::Proportional);
        assert!(
            "random"
                .parse::<Sampler>()
                .unwrap_err()
                .to_string()
                .contains("round-robin")
        );
    }
}
