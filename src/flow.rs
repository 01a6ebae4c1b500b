//! The model: n affine coupling layers with alternating checkerboard masks, each with a periodic
//! CNN of channels [1, hidden..., 2]; its flat parameter layout, PyTorch-default initialisation,
//! and the f64 CPU reference model (forward and hand-written backward) that specifies what the
//! GPU tape computes.

use crate::config::Config;
use crate::kernels::Act;
use crate::lattice::Lattice;
use crate::rng::Philox;

/// Alignment (in floats) of each convolution's slice of the flat parameter buffer: 256 bytes,
/// WebGPU's minimum uniform-buffer offset alignment.
pub const PARAM_ALIGN: usize = 64;

/// One convolution of a coupling net and where its parameters live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvLayout {
    pub cin: usize,
    pub cout: usize,
    pub act: Act,
    /// Offset of the weights [cout, cin, taps], followed by the bias [cout].
    pub offset: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FlowSpec {
    pub lattice: Lattice,
    pub n_layers: usize,
    pub hidden: Vec<usize>,
    pub kernel_size: usize,
    pub final_tanh: bool,
}

impl FlowSpec {
    pub fn from_config(cfg: &Config) -> FlowSpec {
        FlowSpec {
            lattice: Lattice::new(cfg.physical.nd, cfg.physical.l),
            n_layers: cfg.model.n_layers,
            hidden: cfg.model.hidden_sizes.clone(),
            kernel_size: cfg.model.kernel_size,
            final_tanh: cfg.model.use_final_tanh,
        }
    }

    pub fn taps(&self) -> usize {
        self.kernel_size.pow(self.lattice.nd as u32)
    }

    /// Coupling layer i uses the checkerboard of parity i mod 2.
    pub fn parity(&self, layer: usize) -> u32 {
        (layer % 2) as u32
    }

    pub fn final_act(&self) -> Act {
        if self.final_tanh {
            Act::Tanh
        } else {
            Act::None
        }
    }

    /// Channels of the coupling net: [1, hidden..., 2].
    pub fn channels(&self) -> Vec<usize> {
        let mut c = vec![1];
        c.extend(&self.hidden);
        c.push(2);
        c
    }

    fn conv_params(&self, cin: usize, cout: usize) -> usize {
        cout * cin * self.taps() + cout
    }

    /// Trainable parameters of one coupling layer.
    pub fn params_per_layer(&self) -> usize {
        self.channels()
            .windows(2)
            .map(|w| self.conv_params(w[0], w[1]))
            .sum()
    }

    /// Trainable parameters of the model (DESIGN §2: 12,960 for the 2D default).
    pub fn n_params(&self) -> usize {
        self.n_layers * self.params_per_layer()
    }

    /// Floats each convolution occupies in the flat buffer: its parameters, padded to a multiple
    /// of `PARAM_ALIGN`, so that every layer's slice starts where a uniform binding may start.
    fn conv_slot(&self, cin: usize, cout: usize) -> usize {
        self.conv_params(cin, cout).div_ceil(PARAM_ALIGN) * PARAM_ALIGN
    }

    fn layer_slot(&self) -> usize {
        self.channels()
            .windows(2)
            .map(|w| self.conv_slot(w[0], w[1]))
            .sum()
    }

    /// Length of the flat parameter (and gradient, and Adam moment) buffer, padding included.
    /// The padding stays zero: no gradient reaches it.
    pub fn param_len(&self) -> usize {
        self.n_layers * self.layer_slot()
    }

    /// The convolutions of coupling `layer`, in order, with their parameter offsets.
    pub fn convs(&self, layer: usize) -> Vec<ConvLayout> {
        let ch = self.channels();
        let mut offset = layer * self.layer_slot();
        let n = ch.len() - 1;
        (0..n)
            .map(|j| {
                let c = ConvLayout {
                    cin: ch[j],
                    cout: ch[j + 1],
                    act: if j + 1 == n {
                        self.final_act()
                    } else {
                        Act::Leaky
                    },
                    offset,
                };
                offset += self.conv_slot(ch[j], ch[j + 1]);
                c
            })
            .collect()
    }

    /// PyTorch's default initialisation, W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with
    /// fan_in = C_in k^Nd, drawn from Philox keyed by the model seed (reproducible anywhere).
    pub fn init_params(&self, seed: u64) -> Vec<f32> {
        let mut rng = Philox::new(seed, 0x1A17);
        let mut p = vec![0f32; self.param_len()];
        for layer in 0..self.n_layers {
            for c in self.convs(layer) {
                let bound = 1.0 / ((c.cin * self.taps()) as f64).sqrt();
                let n = self.conv_params(c.cin, c.cout);
                for v in &mut p[c.offset..c.offset + n] {
                    *v = rng.uniform_in(-bound, bound) as f32;
                }
            }
        }
        p
    }

    /// Multiply-adds of one forward pass of one sample (all convolutions).
    pub fn macs_per_sample(&self) -> usize {
        let v = self.lattice.volume();
        self.n_layers
            * self
                .channels()
                .windows(2)
                .map(|w| w[0] * w[1] * self.taps() * v)
                .sum::<usize>()
    }
}

/// The f64 reference model: forward and backward written by hand from the kernel references.
pub mod reference {
    use super::FlowSpec;
    use crate::kernels::action::reference as action;
    use crate::kernels::conv::reference::Layer;
    use crate::kernels::coupling::reference as coupling;

    /// What the forward keeps for the backward.
    pub struct Forward {
        /// x[l] is the input of coupling l; x[n_layers] is phi.
        pub x: Vec<Vec<f64>>,
        /// Activations of each convolution of each layer (the last one is st).
        pub h: Vec<Vec<Vec<f64>>>,
        /// log q per sample (prior included).
        pub logq: Vec<f64>,
    }

    fn layer<'a>(spec: &'a FlowSpec, batch: usize, cin: usize, cout: usize) -> Layer<'a> {
        Layer {
            lattice: &spec.lattice,
            k: spec.kernel_size,
            batch,
            cin,
            cout,
        }
    }

    /// Push z (with prior log density logr per sample) through the flow.
    pub fn forward(spec: &FlowSpec, params: &[f64], z: &[f64], logr: &[f64]) -> Forward {
        let batch = logr.len();
        let v = spec.lattice.volume();
        let mut x = vec![z.to_vec()];
        let mut h = Vec::new();
        let mut logq = logr.to_vec();
        for l in 0..spec.n_layers {
            let mask = spec.lattice.mask(spec.parity(l));
            let xl = &x[l];
            let mut a: Vec<f64> = xl
                .iter()
                .enumerate()
                .map(|(i, &xv)| xv * mask[i % v])
                .collect();
            let mut hs = Vec::new();
            for c in spec.convs(l) {
                let n = c.cout * c.cin * spec.taps() + c.cout;
                a = layer(spec, batch, c.cin, c.cout).forward(
                    &a,
                    &params[c.offset..c.offset + n],
                    c.act,
                );
                hs.push(a.clone());
            }
            let (y, logj) = coupling::forward(xl, &a, &mask, batch);
            for (q, j) in logq.iter_mut().zip(&logj) {
                *q -= j;
            }
            x.push(y);
            h.push(hs);
        }
        Forward { x, h, logq }
    }

    /// The loss mean_b(log q + S) and its gradient with respect to every parameter.
    pub fn loss_and_grad(
        spec: &FlowSpec,
        params: &[f64],
        z: &[f64],
        logr: &[f64],
        m2: f64,
        lam: f64,
    ) -> (f64, Vec<f64>) {
        let batch = logr.len();
        let f = forward(spec, params, z, logr);
        let phi = &f.x[spec.n_layers];
        let s = action::action(&spec.lattice, phi, m2, lam);
        let loss = f.logq.iter().zip(&s).map(|(q, s)| q + s).sum::<f64>() / batch as f64;

        let mut grad = vec![0.0; params.len()];
        let scale = 1.0 / batch as f64;
        let mut gx: Vec<f64> = action::grad(&spec.lattice, phi, m2, lam)
            .iter()
            .map(|g| g * scale)
            .collect();
        let glogq = vec![scale; batch];
        for l in (0..spec.n_layers).rev() {
            gx = layer_backward(spec, params, &f, l, &gx, &glogq, &mut grad);
        }
        (loss, grad)
    }

    /// Back through coupling layer `l` of the forward `f`: given dL/dy (its output's gradient)
    /// and dL/dlog q per sample, add the layer's parameter gradients into `grad` and return
    /// dL/dx (its input's gradient).
    pub fn layer_backward(
        spec: &FlowSpec,
        params: &[f64],
        f: &Forward,
        l: usize,
        gy: &[f64],
        glogq: &[f64],
        grad: &mut [f64],
    ) -> Vec<f64> {
        let batch = glogq.len();
        let v = spec.lattice.volume();
        let mask = spec.lattice.mask(spec.parity(l));
        let convs = spec.convs(l);
        let st = f.h[l].last().unwrap();
        let (gx_direct, mut g) =
            coupling::backward(&f.x[l], st, &mask, gy, glogq, spec.final_act());
        // Back through the net, last convolution first; g is a pre-activation gradient.
        for (j, c) in convs.iter().enumerate().rev() {
            let n = c.cout * c.cin * spec.taps() + c.cout;
            let input: Vec<f64> = if j == 0 {
                f.x[l]
                    .iter()
                    .enumerate()
                    .map(|(i, &xv)| xv * mask[i % v])
                    .collect()
            } else {
                f.h[l][j - 1].clone()
            };
            let lay = layer(spec, batch, c.cin, c.cout);
            let gw = lay.backward_weight(&input, &g);
            for (a, b) in grad[c.offset..c.offset + n].iter_mut().zip(&gw) {
                *a += b;
            }
            let gin = lay.backward_input(&g, &params[c.offset..c.offset + n]);
            if j > 0 {
                let prev = convs[j - 1].act;
                g = gin
                    .iter()
                    .zip(&input)
                    .map(|(gv, &yv)| gv * prev.grad_from_output(yv))
                    .collect();
            } else {
                g = gin;
            }
        }
        // The input reached the net through mask * x.
        gx_direct
            .iter()
            .enumerate()
            .map(|(i, d)| d + mask[i % v] * g[i])
            .collect()
    }
}
