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

use crate::config::Config;
use crate::gpu::Gpu;
use crate::kernels::LatticeBuffers;
use crate::kernels::hmc::{Hmc, HmcSpec};
use crate::lattice::Lattice;
use crate::observables::Measurement;
use anyhow::Result;
use std::time::Instant;

/// HMC settings (the `hmc` command's flags).
#[derive(Clone, Debug)]
pub struct HmcOptions {
    pub chains: usize,
    pub trajectories: usize,
    pub burn_in: usize,
    /// Initial step size; tuned towards `target_acceptance` during the first half of burn-in,
    /// and jittered by +-20% per trajectory.
    pub eps: f64,
    pub n_steps: usize,
    pub target_acceptance: f64,
    pub seed: u64,
}

/// What an HMC run produced.
pub struct HmcRun {
    /// `primaries[chain][trajectory]` after burn-in.
    pub primaries: Vec<Vec<Vec<f64>>>,
    pub acceptance: f64,
    pub eps: f64,
    pub n_steps: usize,
    /// Wall seconds of the measured trajectories (GPU work, readback and measurement).
    pub seconds: f64,
}

/// Run `opts.chains` independent HMC chains of the config's action on the GPU.
pub fn run_hmc(
    gpu: &Gpu,
    cfg: &Config,
    opts: &HmcOptions,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<HmcRun> {
    let lat = Lattice::new(cfg.physical.nd, cfg.physical.l);
    let v = lat.volume();
    let lb = LatticeBuffers::new(gpu, lat, &[])?;
    let mut hmc = Hmc::new(
        gpu,
        HmcSpec {
            chains: opts.chains,
            m2: cfg.physical.m2,
            lam: cfg.physical.lam,
            eps: opts.eps,
            n_steps: opts.n_steps,
            seed: opts.seed,
        },
        &lb,
    )?;
    // Start from small random fields.
    let mut rng = Philox::new(opts.seed, crate::rng::stream::HMC);
    let start: Vec<f32> = (0..opts.chains * v)
        .map(|_| rng.uniform_in(-0.5, 0.5) as f32)
        .collect();
    hmc.set_phi(gpu, &start);

    let total = opts.burn_in + opts.trajectories;
    let mut eps = opts.eps;
    let mut window = (0usize, 0usize);
    let mut primaries = vec![Vec::with_capacity(opts.trajectories); opts.chains];
    let mut accepted_total = 0usize;
    let mut t0 = Instant::now();
    let mut jitter = Philox::new(opts.seed, crate::rng::stream::HMC_JITTER);
    for i in 0..total {
        // A step size jittered by +-20% per trajectory: a fixed trajectory length leaves modes
        // whose period divides it nearly frozen (then the free field's phi^2 has tau_int ~ 60).
        hmc.set_step_size(gpu, eps * jitter.uniform_in(0.8, 1.2));
        hmc.submit(gpu, i as u32);
        if i < opts.burn_in {
            let acc: Vec<u32> = gpu.read(&hmc.buf.accepted)?;
            window.0 += acc.iter().filter(|&&a| a == 1).count();
            window.1 += acc.len();
            // Tune during the first half of burn-in, every 5 trajectories.
            if i < opts.burn_in / 2 && (i + 1) % 5 == 0 {
                let rate = window.0 as f64 / window.1 as f64;
                eps *= (1.5 * (rate - opts.target_acceptance))
                    .exp()
                    .clamp(0.5, 1.5);
                window = (0, 0);
            }
            if i + 1 == opts.burn_in {
                t0 = Instant::now();
            }
        } else {
            let phi: Vec<f32> = gpu.read(&hmc.buf.phi)?;
            let acc: Vec<u32> = gpu.read(&hmc.buf.accepted)?;
            accepted_total += acc.iter().filter(|&&a| a == 1).count();
            for (c, chunk) in phi.chunks(v).enumerate() {
                primaries[c].push(Measurement::of(&lat, chunk).primaries());
            }
        }
        progress(i + 1, total, eps);
    }
    let seconds = t0.elapsed().as_secs_f64();
    Ok(HmcRun {
        primaries,
        acceptance: accepted_total as f64 / (opts.trajectories * opts.chains).max(1) as f64,
        eps,
        n_steps: opts.n_steps,
        seconds,
    })
}
