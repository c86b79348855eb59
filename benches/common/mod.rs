//! Shared by the timing benches: an interleaved runner whose ratios survive a shared, noisy
//! machine. Criterion times one benchmark after another, so a neighbour's burst during one of them
//! skews a ratio of two; here the peers take turns in short blocks, and each round yields one ratio
//! from blocks measured a few milliseconds apart.

use std::time::Duration;

/// Runs the peers `names` for `rounds` rounds, each once per round in a rotating order; `run(i)`
/// times one block of peer `i` and returns its time per request. Prints, for every peer whose
/// name starts with `ozzobit_auth`, its ratio to every other peer: the median of the per-round
/// ratios, with their 10th and 90th percentiles.
pub(crate) fn interleaved(
    label: &str,
    names: &[&str],
    rounds: usize,
    mut run: impl FnMut(usize) -> Duration,
) {
    let n = names.len();
    let mut times = vec![Vec::with_capacity(rounds); n];
    // One untimed round first, so every peer starts warm.
    for i in 0..n {
        run(i);
    }
    for r in 0..rounds {
        for k in 0..n {
            let i = (r + k) % n;
            times[i].push(run(i).as_secs_f64());
        }
    }
    let medians: Vec<String> = names
        .iter()
        .zip(&times)
        .map(|(name, t)| format!("{name} {:.1} ns", percentile(t.clone(), 0.5) * 1e9))
        .collect();
    eprintln!("{label}: median time per request: {}", medians.join(", "));
    for (a, ours) in names.iter().enumerate() {
        if !ours.starts_with("ozzobit_auth") {
            continue;
        }
        for (b, peer) in names.iter().enumerate() {
            if peer.starts_with("ozzobit_auth") {
                continue;
            }
            let ratios: Vec<f64> = times[a].iter().zip(&times[b]).map(|(x, y)| x / y).collect();
            eprintln!(
                "{label}: {ours} / {peer} = {:.3} (p10 {:.3}, p90 {:.3}; {rounds} interleaved rounds)",
                percentile(ratios.clone(), 0.5),
                percentile(ratios.clone(), 0.1),
                percentile(ratios, 0.9),
            );
        }
    }
}

fn percentile(mut xs: Vec<f64>, p: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[((xs.len() - 1) as f64 * p).round() as usize]
}
