//! Sampling the next token from logits: temperature, top-k, top-p (nucleus),
//! and greedy (temperature 0: the arg-max, ties to the lower id).
//!
//! Filters apply in the order of most tools (Hugging Face `generate`):
//! temperature scales the logits, top-k keeps the k most likely ids, top-p
//! keeps the smallest most-likely set whose probability reaches p, and the
//! survivors are renormalized. All arithmetic is f64 and the order of ids is
//! fixed (probability descending, id ascending on ties), so the same logits
//! and the same random draw give the same token on every machine.

use rand::Rng;

use crate::{Error, Result};

/// Sampling settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampler {
    /// Softmax temperature; 0 = greedy.
    pub temperature: f64,
    /// Keep the `top_k` most likely ids (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of most likely ids with total probability >= `top_p` (1 = all).
    pub top_p: f64,
}

impl Default for Sampler {
    fn default() -> Sampler {
        Sampler { temperature: 1.0, top_k: 0, top_p: 1.0 }
    }
}

impl Sampler {
    /// Refuse settings outside their ranges, naming the flag and the range.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::Config(format!(
                "--temperature {}: must be >= 0 (0 = greedy, 1 = the model's distribution)",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Config(format!(
                "--top-p {}: must be in (0, 1] (1 = no nucleus filter, 0.9 = the top 90% of probability)",
                self.top_p
            )));
        }
        Ok(())
    }

    /// The filtered, renormalized distribution as `(id, probability)` in
    /// sampling order (probability descending, id ascending on ties).
    pub fn distribution(&self, logits: &[f32]) -> Vec<(u32, f64)> {
        let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
        if self.temperature == 0.0 {
            let best = argmax(logits);
            return vec![(best, 1.0)];
        }
        // Subtract the largest logit before dividing: `(x - max) / T` is <= 0
        // for every T > 0, so a tiny temperature (1e-320) sends the others to
        // -inf (probability 0) instead of overflowing to inf - inf = NaN; the
        // limit is greedy, with ties shared.
        let max = logits.iter().map(|&x| f64::from(x)).fold(f64::NEG_INFINITY, f64::max);
        let mut p: Vec<f64> = logits.iter().map(|&x| ((f64::from(x) - max) / self.temperature).exp()).collect();
        let z: f64 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= z);
        ids.sort_by(|&a, &b| p[b as usize].total_cmp(&p[a as usize]).then(a.cmp(&b)));
        // Ids a (tiny) temperature drove to probability 0 can never be drawn.
        ids.retain(|&i| p[i as usize] > 0.0);
        if self.top_k > 0 {
            ids.truncate(self.top_k);
        }
        if self.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = ids
                .iter()
                .position(|&i| {
                    acc += p[i as usize];
                    acc >= self.top_p
                })
                .map_or(ids.len(), |i| i + 1);
            ids.truncate(keep);
        }
        let total: f64 = ids.iter().map(|&i| p[i as usize]).sum();
        ids.into_iter().map(|i| (i, p[i as usize] / total)).collect()
    }

    /// Draw the next token.
    pub fn sample(&self, logits: &[f32], rng: &mut impl Rng) -> u32 {
        let dist = self.distribution(logits);
        if dist.len() == 1 {
            return dist[0].0;
        }
        let u: f64 = rng.random();
        let mut acc = 0.0;
        for &(id, p) in &dist {
            acc += p;
            if u < acc {
                return id;
            }
        }
        dist.last().expect("non-empty").0
    }
}

/// Index of the largest logit, the lower index on ties (NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Logits whose softmax is exactly `p` (log-probabilities).
    fn logits_of(p: &[f64]) -> Vec<f32> {
        p.iter().map(|x| x.ln() as f32).collect()
    }

    fn frequencies(s: &Sampler, logits: &[f32], draws: usize) -> Vec<f64> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut c = vec![0usize; logits.len()];
        for _ in 0..draws {
            c[s.sample(logits, &mut rng) as usize] += 1;
        }
        c.iter().map(|&x| x as f64 / draws as f64).collect()
    }

    #[test]
    fn filters_on_a_known_distribution() {
        let l = logits_of(&[0.1, 0.5, 0.3, 0.1]);
        let close = |a: &[(u32, f64)], b: &[(u32, f64)]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.0 == y.0 && (x.1 - y.1).abs() < 1e-6)
        };
        let s = Sampler::default();
        assert!(close(&s.distribution(&l), &[(1, 0.5), (2, 0.3), (0, 0.1), (3, 0.1)]), "ties: lower id first");
        let s = Sampler { top_k: 2, ..Sampler::default() };
        assert!(close(&s.distribution(&l), &[(1, 0.625), (2, 0.375)]));
        // top-p 0.8: 0.5 + 0.3 reaches it.
        let s = Sampler { top_p: 0.8, ..Sampler::default() };
        assert!(close(&s.distribution(&l), &[(1, 0.625), (2, 0.375)]));
        let s = Sampler { top_p: 0.81, ..Sampler::default() };
        assert_eq!(s.distribution(&l).len(), 3);
        // Temperature 0.5 squares the probabilities: 0.01, 0.25, 0.09, 0.01 over 0.36.
        let s = Sampler { temperature: 0.5, ..Sampler::default() };
        assert!(close(&s.distribution(&l), &[(1, 0.25 / 0.36), (2, 0.09 / 0.36), (0, 0.01 / 0.36), (3, 0.01 / 0.36)]));
        let s = Sampler { temperature: 0.0, ..Sampler::default() };
        assert!(close(&s.distribution(&l), &[(1, 1.0)]));
    }

    #[test]
    fn draws_follow_the_filtered_distribution() {
        let l = logits_of(&[0.1, 0.5, 0.3, 0.1]);
        let f = frequencies(&Sampler::default(), &l, 40_000);
        // 4 sigma of a binomial at 40k draws is under 0.01.
        for (got, want) in f.iter().zip([0.1, 0.5, 0.3, 0.1]) {
            assert!((got - want).abs() < 0.01, "{f:?}");
        }
        let f = frequencies(&Sampler { top_k: 2, ..Sampler::default() }, &l, 40_000);
        assert_eq!((f[0], f[3]), (0.0, 0.0));
        assert!((f[1] - 0.625).abs() < 0.01, "{f:?}");
    }

    #[test]
    fn tiny_and_huge_temperatures_stay_distributions() {
        let l = logits_of(&[0.1, 0.5, 0.3, 0.1]);
        // 1e-320 is subnormal: 1 / T overflows, so dividing the logits first gave NaN probabilities.
        for t in [1e-320, f64::MIN_POSITIVE, 1e-30] {
            let d = Sampler { temperature: t, ..Sampler::default() }.distribution(&l);
            assert_eq!(d, vec![(1, 1.0)], "T = {t}: the arg-max alone");
        }
        let d = Sampler { temperature: 1e300, ..Sampler::default() }.distribution(&l);
        assert!(d.iter().all(|&(_, p)| (p - 0.25).abs() < 1e-12), "T = 1e300: uniform, {d:?}");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        assert_eq!(Sampler { temperature: 1e-320, ..Sampler::default() }.sample(&l, &mut rng), 1);
    }

    #[test]
    fn greedy_breaks_ties_to_the_lower_id() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5]), 1);
    }

    #[test]
    fn bad_settings_are_refused() {
        let e = Sampler { temperature: -1.0, ..Sampler::default() }.validate().unwrap_err().to_string();
        assert!(e.contains("--temperature -1") && e.contains(">= 0"), "{e}");
        for p in [0.0, 1.5, f64::NAN] {
            let e = Sampler { top_p: p, ..Sampler::default() }.validate().unwrap_err().to_string();
            assert!(e.contains("--top-p") && e.contains("(0, 1]"), "{e}");
        }
    }
}
