//! The loss of the best constant predictor on held-out batches: the per-value mean for flow
//! matching, the unigram distribution for language modelling. Validation losses are quoted
//! against it.

/// Flow matching: the mean squared distance of the targets from their per-value mean.
pub fn flow_baseline(batches: &[crate::model::DitBatch]) -> f64 {
    let n = batches[0].target.len() / batches[0].t.len();
    let all: Vec<&[f32]> = batches.iter().flat_map(|b| b.target.chunks(n)).collect();
    let mean: Vec<f64> = (0..n)
        .map(|j| all.iter().map(|s| s[j] as f64).sum::<f64>() / all.len() as f64)
        .collect();
    let sq: f64 = all
        .iter()
        .map(|s| {
            s.iter()
                .zip(&mean)
                .map(|(&v, m)| (v as f64 - m).powi(2))
                .sum::<f64>()
        })
        .sum();
    sq / (all.len() * n) as f64
}

/// Language modelling: the cross-entropy of the held-out unigram distribution.
pub fn unigram_baseline(batches: &[crate::model::TokenBatch]) -> f64 {
    let mut counts = std::collections::HashMap::new();
    let mut total = 0usize;
    for t in batches.iter().flat_map(|b| &b.targets).filter(|&&t| t >= 0) {
        *counts.entry(*t).or_insert(0usize) += 1;
        total += 1;
    }
    counts
        .values()
        .map(|&c| c as f64 / total as f64)
        .map(|p| -p * p.ln())
        .sum()
}
