//! Markov chains: the independence Metropolis-Hastings chain driven by the flow's proposals.

use crate::rng::Philox;

/// An independence Metropolis-Hastings chain over proposals with log weights
/// log w = -S - log q, taken in order.
pub struct MhChain {
    /// For each step, the index of the proposal the chain sits on.
    pub state: Vec<usize>,
    /// Whether step i (i >= 1) accepted its proposal; step 0 is the start.
    pub accepted: Vec<bool>,
}

impl MhChain {
    /// Run the chain: accept proposal i with probability min(1, w_i / w_current).
    pub fn run(logw: &[f64], rng: &mut Philox) -> MhChain {
        let mut state = Vec::with_capacity(logw.len());
        let mut accepted = Vec::with_capacity(logw.len());
        let mut cur = 0;
        for (i, &lw) in logw.iter().enumerate() {
            let acc = i == 0 || {
                let a = lw - logw[cur];
                // NaN weights are rejected: a broken proposal never enters the chain.
                a >= 0.0 || rng.uniform() < a.exp()
            };
            if acc {
                cur = i;
            }
            state.push(cur);
            accepted.push(acc);
        }
        MhChain { state, accepted }
    }

    /// Fraction of accepted proposals after `burn_in` steps (the start excluded).
    pub fn acceptance(&self, burn_in: usize) -> f64 {
        let from = burn_in.max(1);
        let n = self.accepted.len().saturating_sub(from);
        if n == 0 {
            return f64::NAN;
        }
        self.accepted[from..].iter().filter(|&&a| a).count() as f64 / n as f64
    }
}
