//! Drawing proposals from a trained flow: an inference tape run batch after batch, with log q
//! and S (and optionally phi) read back for the host-side chain and estimators.

use crate::config::Config;
use crate::flow::FlowSpec;
use crate::gpu::{Gpu, GpuBuffer};
use crate::tape::{Mode, Tape, TapeSpec};
use anyhow::{Context, Result};

/// A batch-drawing inference tape with its own draw counter.
pub struct Proposer {
    pub tape: Tape,
    counter: GpuBuffer,
}

/// Proposals read back from the GPU.
#[derive(Default)]
pub struct Proposals {
    pub logq: Vec<f64>,
    pub action: Vec<f64>,
    /// [n, volume] when kept.
    pub phi: Vec<f32>,
}

impl Proposals {
    /// log w = -S - log q per proposal.
    pub fn logw(&self) -> Vec<f64> {
        self.logq
            .iter()
            .zip(&self.action)
            .map(|(q, s)| -s - q)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.logq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.logq.is_empty()
    }
}

impl Proposer {
    pub fn new(
        gpu: &Gpu,
        cfg: &Config,
        params: &GpuBuffer,
        batch: usize,
        seed: u64,
        stream: u32,
        batch_key: &'static str,
    ) -> Result<Proposer> {
        let spec = TapeSpec {
            flow: FlowSpec::from_config(cfg),
            batch,
            mode: Mode::Infer,
            prior: cfg.training.prior.clone(),
            seed,
            stream,
            m2: cfg.physical.m2,
            lam: cfg.physical.lam,
            lr: 0.0,
            adam_betas: cfg.training.adam_betas,
            fusion: crate::tape::Fusion::Auto,
            precision: cfg.precision,
        };
        Self::from_spec(gpu, spec, params).with_context(|| cfg.sizes(batch_key, batch))
    }

    /// A proposer from a whole inference tape spec (e.g. to choose its `fusion`).
    pub fn from_spec(gpu: &Gpu, spec: TapeSpec, params: &GpuBuffer) -> Result<Proposer> {
        let counter = gpu.upload("proposal counter", &[0u32; 4])?;
        let tape = Tape::new(
            gpu,
            TapeSpec {
                mode: Mode::Infer,
                ..spec
            },
            params,
            &counter,
        )?;
        Ok(Proposer { tape, counter })
    }

    pub fn batch(&self) -> usize {
        self.tape.spec.batch
    }

    /// Draw `n` proposals using draw indices `first_draw, first_draw + 1, ...` (one per batch),
    /// so that the same indices give the same proposals. `on_batch` sees the count so far.
    pub fn draw(
        &self,
        gpu: &Gpu,
        first_draw: u32,
        n: usize,
        keep_phi: bool,
        mut on_batch: impl FnMut(usize),
    ) -> Result<Proposals> {
        let b = self.batch();
        let v = self.tape.spec.flow.lattice.volume();
        let mut out = Proposals::default();
        let mut draw = first_draw;
        while out.len() < n {
            gpu.write(&self.counter, &[draw, 0, 0, 0]);
            self.tape.submit_step(gpu);
            let take = b.min(n - out.len());
            let logq = gpu.read::<f32>(&self.tape.logq)?;
            let action = gpu.read::<f32>(&self.tape.action)?;
            out.logq.extend(logq[..take].iter().map(|&x| x as f64));
            out.action.extend(action[..take].iter().map(|&x| x as f64));
            if keep_phi {
                let phi = gpu.read_range::<f32>(self.tape.phi(), 0, (take * v * 4) as u64)?;
                out.phi.extend(phi);
            }
            draw = draw.wrapping_add(1);
            on_batch(out.len());
        }
        Ok(out)
    }
}
