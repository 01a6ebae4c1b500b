//! The model: n coupling layers (affine, symmetrised affine or rational-quadratic spline) with
//! alternating checkerboard masks, each with a periodic CNN of channels [1, hidden..., outputs];
//! its flat parameter layout, PyTorch-default initialisation, and the f64 CPU reference model
//! (forward and hand-written backward) that specifies what the GPU tape computes.

use crate::config::Config;
use crate::kernels::Act;
use crate::lattice::Lattice;
use crate::rng::{Philox, stream};
use std::ops::Range;

/// Alignment (in floats) of each convolution's slice of the flat parameter buffer: 256 bytes,
/// WebGPU's minimum uniform-buffer offset alignment.
pub const PARAM_ALIGN: usize = 64;

/// The sites a convolution reads around its output site: a list of offsets, which the GPU
/// sees as a neighbour table (`table`). A new convolution shape is a new variant here.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Taps {
    /// The full k^Nd window (k odd), offsets -(k/2)..=k/2 per axis, row-major (the order of
    /// PyTorch's [cout, cin, k, ..., k] weights). Tap t and tap k^Nd-1-t are opposite.
    Window { k: usize },
    /// The window k along the lattice axes `axes` (increasing, 0-based) and 1 along the others:
    /// offsets with |d_mu| <= k/2 on those axes and 0 off them, row-major over `axes` (the
    /// last fastest), so tap t and tap k^r-1-t are again opposite. One branch of a
    /// combinational convolution (`Taps::branches`); r = 1 windows are lines, whose union
    /// over the axes is the cross of the lattice Laplacian.
    Axes { k: usize, axes: Vec<usize> },
    /// Several tap sets of one size, one after the other: the branches of a combinational
    /// convolution as one kernel reads them (per site, branch b's taps at b * count).
    Branches(Vec<Taps>),
}

impl Taps {
    /// The windows k along each r-subset of the `nd` axes, in lexicographic order of the
    /// subsets ({0, 1}, {0, 2}, {1, 2} for nd = 3, r = 2): the branches of GomalizingFlow's
    /// combinational convolution `Approx{nd}DConv{nd}C{r}` (1 <= r < nd).
    pub fn branches(nd: usize, k: usize, r: usize) -> Vec<Taps> {
        assert!(
            (1..nd).contains(&r),
            "a combinational convolution needs 1 <= r < Nd"
        );
        // Subsets as increasing index lists, enumerated in lexicographic order.
        let mut out = vec![];
        let mut axes: Vec<usize> = (0..r).collect();
        loop {
            out.push(Taps::Axes {
                k,
                axes: axes.clone(),
            });
            // The rightmost index that can still move right, then its successors packed after it.
            let Some(i) = (0..r).rev().find(|&i| axes[i] < nd - r + i) else {
                return out;
            };
            axes[i] += 1;
            for j in i + 1..r {
                axes[j] = axes[j - 1] + 1;
            }
        }
    }

    /// The offsets, in the order of the weights' last axes.
    pub fn offsets(&self, nd: usize) -> Vec<Vec<i64>> {
        match self {
            Taps::Window { k } => Lattice::new(nd, 2).tap_offsets(*k),
            Taps::Axes { k, axes } => {
                assert!(
                    axes.windows(2).all(|w| w[0] < w[1]) && axes.iter().all(|&a| a < nd),
                    "{self:?}: axes must increase and be below Nd = {nd}"
                );
                // The r-dimensional window's offsets, placed on the chosen axes.
                let sub = Lattice::new(axes.len(), 2).tap_offsets(*k);
                sub.iter()
                    .map(|o| {
                        let mut full = vec![0i64; nd];
                        for (&a, &d) in axes.iter().zip(o) {
                            full[a] = d;
                        }
                        full
                    })
                    .collect()
            }
            Taps::Branches(sets) => sets.iter().flat_map(|t| t.offsets(nd)).collect(),
        }
    }

    /// Number of taps in `nd` dimensions.
    pub fn count(&self, nd: usize) -> usize {
        match self {
            Taps::Window { k } => k.pow(nd as u32),
            Taps::Axes { k, axes } => k.pow(axes.len() as u32),
            Taps::Branches(sets) => sets.iter().map(|t| t.count(nd)).sum(),
        }
    }

    /// Taps of one row of the window: the unit in which the weight-gradient kernels group
    /// taps per thread (a divisor of one branch's `count`).
    pub fn row(&self) -> usize {
        match self {
            Taps::Window { k } | Taps::Axes { k, .. } => *k,
            Taps::Branches(sets) => sets[0].row(),
        }
    }

    /// The shape of one (cout, cin) pair's weights, as checkpoints store it (one branch's).
    pub fn shape(&self, nd: usize) -> Vec<usize> {
        match self {
            Taps::Window { k } => vec![*k; nd],
            Taps::Axes { k, axes } => vec![*k; axes.len()],
            Taps::Branches(sets) => sets[0].shape(nd),
        }
    }

    /// Bit b set where tap set b (of `Branches`; bit 0 for a single set) spans the last
    /// lattice axis: its taps then come in rows of `row()` along it, offsets -row/2..=row/2
    /// (the last axis is the fastest of the weights' too); the others' taps all have offset 0
    /// there. conv.wgsl's XSPAN.
    pub fn spans_last_axis(&self, nd: usize) -> u32 {
        match self {
            Taps::Window { .. } => 1,
            Taps::Axes { axes, .. } => axes.contains(&(nd - 1)) as u32,
            Taps::Branches(sets) => sets
                .iter()
                .enumerate()
                .map(|(b, s)| s.spans_last_axis(nd) << b)
                .sum(),
        }
    }

    /// `rows[block * count + t]`, for a lattice whose extent is a multiple of 4: the vec4 index
    /// (site / 4) of the block of 4 sites at `block`'s position along the last axis, in the
    /// row holding tap t's neighbours (the tap's offset with its last component set to 0).
    /// conv.wgsl's forward4 and backward_input4 find a tap's two blocks from there.
    pub fn row_table(&self, lattice: &Lattice) -> Vec<u32> {
        assert!(
            lattice.l.is_multiple_of(4),
            "rows of 4-site blocks need L % 4 == 0"
        );
        let last = lattice.nd - 1;
        let offsets: Vec<Vec<i64>> = self
            .offsets(lattice.nd)
            .into_iter()
            .map(|mut o| {
                o[last] = 0;
                o
            })
            .collect();
        let mut t = Vec::with_capacity(lattice.volume() / 4 * offsets.len());
        for block in 0..lattice.volume() / 4 {
            for o in &offsets {
                t.push((lattice.shift(4 * block, o) / 4) as u32);
            }
        }
        t
    }

    /// `table[site * count + t]` = the site at tap t's offset from `site`.
    pub fn table(&self, lattice: &Lattice) -> Vec<u32> {
        let offsets = self.offsets(lattice.nd);
        let mut t = Vec::with_capacity(lattice.volume() * offsets.len());
        for s in 0..lattice.volume() {
            for o in &offsets {
                t.push(lattice.shift(s, o) as u32);
            }
        }
        t
    }
}

/// One periodic convolution of a coupling net: `cout` outputs from `cin` inputs over the tap
/// set `taps`, plus a bias, then the activation `act`. Its parameters live at `offset` of the
/// flat buffer: weights [cout, cin, n_taps], then the bias [cout].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvBlock {
    pub cin: usize,
    pub cout: usize,
    pub taps: Taps,
    /// `taps.count(Nd)`.
    pub n_taps: usize,
    pub act: Act,
    pub offset: usize,
    /// Start at zero (weights and bias) instead of PyTorch's default: the last convolution of
    /// each net under `identity_init`, so that every coupling starts as the identity map.
    pub zero_init: bool,
    /// Start with a zero bias (the weights as PyTorch's default): the branches of a
    /// combinational convolution.
    pub zero_bias: bool,
}

impl ConvBlock {
    /// Weights without the bias: cout * cin * n_taps.
    pub fn n_weights(&self) -> usize {
        self.cout * self.cin * self.n_taps
    }

    /// Weights and bias.
    pub fn n_params(&self) -> usize {
        self.n_weights() + self.cout
    }

    /// Where the weights and the bias live in the flat buffer.
    pub fn weights(&self) -> Range<usize> {
        self.offset..self.offset + self.n_weights()
    }
    pub fn bias(&self) -> Range<usize> {
        self.offset + self.n_weights()..self.offset + self.n_params()
    }
    /// Weights and bias together.
    pub fn params(&self) -> Range<usize> {
        self.offset..self.offset + self.n_params()
    }

    /// Floats the block occupies in the flat buffer: its parameters padded to `PARAM_ALIGN`,
    /// so that the next block starts where a uniform binding may start.
    fn slot(&self) -> usize {
        self.n_params().div_ceil(PARAM_ALIGN) * PARAM_ALIGN
    }

    /// PyTorch's default initialisation: W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    /// fan_in = cin * n_taps, weights then biases from one stream. A `zero_init` block (and the
    /// bias of a `zero_bias` one) draws the same numbers, so the other blocks start as they
    /// would otherwise, and stores zeros.
    fn init(&self, rng: &mut Philox, p: &mut [f32]) {
        let bound = 1.0 / ((self.cin * self.n_taps) as f64).sqrt();
        let bias = self.bias();
        for i in self.params() {
            let w = rng.uniform_in(-bound, bound) as f32;
            let zero = self.zero_init || (self.zero_bias && bias.contains(&i));
            p[i] = if zero { 0.0 } else { w };
        }
    }
}

/// How a coupling layer uses its net's output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CouplingKind {
    /// (s, t) = channels 0 and 1 of the net's output (after its last activation);
    /// y = mask x + (1 - mask)(x e^s + t), log J = sum (1 - mask) s.
    Affine,
    /// Affine with a symmetrised net (`[model] z2_equivariant`): with u(x) the net's output,
    /// s = (u_s(x) + u_s(-x)) / 2 is even and t = (u_t(x) - u_t(-x)) / 2 odd in the frozen
    /// field, so the coupling is odd, f(-x) = -f(x), and the flow's density symmetric. The
    /// net runs on a batch of 2B (`kernels::z2`).
    AffineZ2,
    /// A rational-quadratic spline of `bins` bins on [-bound, bound] per active site, the
    /// identity outside (`[model] spline_bins`, `spline_bound`; `kernels::spline`): the net
    /// outputs 3 bins - 1 channels, the bins' widths and heights and the interior knots'
    /// slopes.
    Spline { bins: usize, bound: f64 },
}

// The bound is a validated finite number, so equality is an equivalence.
impl Eq for CouplingKind {}

impl CouplingKind {
    /// Samples the net sees per sample of the coupling.
    pub fn net_batch_factor(self) -> usize {
        match self {
            CouplingKind::Affine | CouplingKind::Spline { .. } => 1,
            CouplingKind::AffineZ2 => 2,
        }
    }

    /// Channels of the net's output: (s, t), or a spline's parameters.
    pub fn net_outputs(self) -> usize {
        match self {
            CouplingKind::Affine | CouplingKind::AffineZ2 => 2,
            CouplingKind::Spline { bins, .. } => crate::kernels::spline::channels(bins),
        }
    }
}

/// Where a combinational convolution takes the mean of its branches (`[model]
/// combi_activation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CombiAct {
    /// y = mean_S act(u_S): each branch activated, then averaged (GomalizingFlow's main variant).
    Branch,
    /// y = act(mean_S u_S): the branches averaged, then activated.
    Last,
}

impl CombiAct {
    /// The value of `[model] combi_activation`.
    pub fn key(self) -> &'static str {
        match self {
            CombiAct::Branch => "branch",
            CombiAct::Last => "last",
        }
    }

    pub fn from_key(key: &str) -> Option<CombiAct> {
        [CombiAct::Branch, CombiAct::Last]
            .into_iter()
            .find(|a| a.key() == key)
    }
}

/// GomalizingFlow's combinational convolution (`[model] combi_r`): every convolution of a
/// coupling net becomes C(Nd, r) branches, one per r-subset of the axes (`Taps::branches`),
/// each with its own weights and bias, combined by the mean (`act` says where the
/// activation goes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Combi {
    pub r: usize,
    pub act: CombiAct,
}

/// One coupling layer: its checkerboard, its net (stages of convolutions applied in order to
/// mask * x) and how the net's output transforms the active sites.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CouplingNet {
    /// mask(site) = (sum of coordinates + parity) mod 2, 1 = frozen.
    pub parity: u32,
    /// Every convolution, stage by stage: a stage is `branches` blocks with the same channels
    /// and activation (one for a plain net), in the order of their weights.
    pub convs: Vec<ConvBlock>,
    /// Blocks per stage: 1, or a combinational convolution's C(Nd, r) branches.
    pub branches: usize,
    /// Where a stage of several branches is activated (unused with one branch).
    pub combi_act: CombiAct,
    pub coupling: CouplingKind,
}

impl CouplingNet {
    /// The activation of the net's output, which the coupling's backward differentiates.
    pub fn final_act(&self) -> Act {
        self.convs.last().map_or(Act::None, |c| c.act)
    }

    /// Stages of the net (convolutions of the plain net it stands for).
    pub fn n_stages(&self) -> usize {
        self.convs.len() / self.branches
    }

    /// The activation the coupling's backward differentiates on the net's output: the final
    /// one for a plain net; none for a combinational one, whose last stage's mean applies it
    /// per branch.
    pub fn output_act(&self) -> Act {
        if self.combi() {
            Act::None
        } else {
            self.final_act()
        }
    }

    /// The stages: each the blocks (branches) whose combination is one layer of the net.
    pub fn stages(&self) -> std::slice::Chunks<'_, ConvBlock> {
        self.convs.chunks(self.branches)
    }

    /// The taps stage `j` reads: its block's, or all its branches' (`Taps::Branches`).
    pub fn stage_taps(&self, j: usize) -> Taps {
        let stage = &self.convs[j * self.branches..(j + 1) * self.branches];
        if self.combi() {
            Taps::Branches(stage.iter().map(|c| c.taps.clone()).collect())
        } else {
            stage[0].taps.clone()
        }
    }

    /// Whether the stages are combinational convolutions (several branches each).
    pub fn combi(&self) -> bool {
        self.branches > 1
    }

    /// The activation a branch's convolution applies itself: its stage's, except where the
    /// branches are averaged first (`CombiAct::Last`: the mean applies it).
    pub fn branch_act(&self, c: &ConvBlock) -> Act {
        match (self.combi(), self.combi_act) {
            (true, CombiAct::Last) => Act::None,
            _ => c.act,
        }
    }

    /// Channels along the net: [cin of the first stage, cout of each].
    pub fn channels(&self) -> Vec<usize> {
        let mut c = vec![self.convs[0].cin];
        c.extend(self.stages().map(|s| s[0].cout));
        c
    }

    /// The layer's parameters in the flat buffer, from its first weight to its last bias.
    pub fn params(&self) -> Range<usize> {
        let last = &self.convs[self.convs.len() - 1];
        self.convs[0].offset..last.params().end
    }
}

/// One named tensor of a checkpoint: PyTorch's name for it in the reference model, its shape,
/// and where it lives in the flat buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub range: Range<usize>,
}

/// The model: the config's architecture (`lattice` .. `final_tanh`) and, built from it once by
/// `new`, the description every part reads: each coupling layer's net with its parameter
/// layout. Build it with `new` (or `from_config`), so that the two agree.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowSpec {
    pub lattice: Lattice,
    pub n_layers: usize,
    pub hidden: Vec<usize>,
    pub kernel_size: usize,
    pub final_tanh: bool,
    /// Combinational convolutions instead of the full window (None: the full window).
    pub combi: Option<Combi>,
    /// Coupling layer l's net and parameter layout.
    pub nets: Vec<CouplingNet>,
    /// Length of the flat parameter (and gradient, and Adam moment) buffer, padding included.
    /// The padding stays zero: no gradient reaches it.
    pub param_len: usize,
}

impl FlowSpec {
    /// n_layers affine couplings with alternating checkerboards (layer l has parity l mod 2),
    /// each a net of convolutions with channels [1, hidden..., 2] over the k^Nd window,
    /// LeakyReLU after each but the last, tanh after the last when `final_tanh`.
    pub fn new(
        lattice: Lattice,
        n_layers: usize,
        hidden: Vec<usize>,
        kernel_size: usize,
        final_tanh: bool,
    ) -> FlowSpec {
        Self::build(
            lattice,
            n_layers,
            hidden,
            kernel_size,
            final_tanh,
            None,
            CouplingKind::Affine,
        )
    }

    /// The model with every convolution a combinational one of `combi` (the coupling kind
    /// and the identity start carry over; the parameters are laid out anew).
    pub fn with_combi(self, combi: Combi) -> FlowSpec {
        self.rebuilt(Some(combi), self.coupling())
    }

    /// The same architecture with `combi` and every coupling of kind `kind`, laid out anew;
    /// the identity start carries over.
    fn rebuilt(&self, combi: Option<Combi>, kind: CouplingKind) -> FlowSpec {
        let f = Self::build(
            self.lattice,
            self.n_layers,
            self.hidden.clone(),
            self.kernel_size,
            self.final_tanh,
            combi,
            kind,
        );
        if self.blocks().any(|c| c.zero_init) {
            f.with_identity_init()
        } else {
            f
        }
    }

    /// The coupling kind of every layer (the first layer's).
    pub fn coupling(&self) -> CouplingKind {
        self.nets[0].coupling
    }

    /// The nets, each stage one block over the full window or, with `combi`, one block per
    /// r-subset of the axes (zero bias, fan-in of the r-dimensional window).
    fn build(
        lattice: Lattice,
        n_layers: usize,
        hidden: Vec<usize>,
        kernel_size: usize,
        final_tanh: bool,
        combi: Option<Combi>,
        coupling: CouplingKind,
    ) -> FlowSpec {
        let tap_sets = match combi {
            None => vec![Taps::Window { k: kernel_size }],
            Some(c) => Taps::branches(lattice.nd, kernel_size, c.r),
        };
        let channels = Self::channels_of(&hidden, coupling);
        let n = channels.len() - 1;
        let mut offset = 0;
        let nets = (0..n_layers)
            .map(|l| {
                let mut convs = vec![];
                for j in 0..n {
                    for taps in &tap_sets {
                        let c = ConvBlock {
                            cin: channels[j],
                            cout: channels[j + 1],
                            taps: taps.clone(),
                            n_taps: taps.count(lattice.nd),
                            act: match (j + 1 == n, final_tanh) {
                                (false, _) => Act::Leaky,
                                (true, true) => Act::Tanh,
                                (true, false) => Act::None,
                            },
                            offset,
                            zero_init: false,
                            zero_bias: combi.is_some(),
                        };
                        offset += c.slot();
                        convs.push(c);
                    }
                }
                CouplingNet {
                    parity: (l % 2) as u32,
                    convs,
                    branches: tap_sets.len(),
                    combi_act: combi.map_or(CombiAct::Branch, |c| c.act),
                    coupling,
                }
            })
            .collect();
        FlowSpec {
            lattice,
            n_layers,
            hidden,
            kernel_size,
            final_tanh,
            combi,
            nets,
            param_len: offset,
        }
    }

    pub fn from_config(cfg: &Config) -> FlowSpec {
        let mut f = FlowSpec::new(
            Lattice::new(cfg.physical.nd, cfg.physical.l),
            cfg.model.n_layers,
            cfg.model.hidden_sizes.clone(),
            cfg.model.kernel_size,
            cfg.model.use_final_tanh,
        );
        if let Some(c) = cfg.model.combi {
            f = f.with_combi(c);
        }
        if cfg.model.z2_equivariant {
            f = f.with_coupling(CouplingKind::AffineZ2);
        }
        if cfg.model.spline_bins > 0 {
            f = f.with_coupling(CouplingKind::Spline {
                bins: cfg.model.spline_bins,
                bound: cfg.model.spline_bound,
            });
        }
        if cfg.model.identity_init {
            f = f.with_identity_init();
        }
        f
    }

    /// Every coupling of kind `kind`: the parameter layout stays where the net's outputs
    /// do (affine, symmetrised), and is laid out anew where they change (spline).
    pub fn with_coupling(mut self, kind: CouplingKind) -> FlowSpec {
        if kind.net_outputs() != self.coupling().net_outputs() {
            return self.rebuilt(self.combi, kind);
        }
        for n in &mut self.nets {
            n.coupling = kind;
        }
        self
    }

    /// The last convolution (every branch of the last stage) of every net starts at zero, so
    /// every coupling starts as the identity map (with a final activation of 0 at 0: tanh or
    /// none).
    pub fn with_identity_init(mut self) -> FlowSpec {
        for n in &mut self.nets {
            let last = n.convs.len() - n.branches;
            for c in &mut n.convs[last..] {
                c.zero_init = true;
            }
        }
        self
    }

    /// Whether the couplings are symmetrised (odd flow).
    pub fn z2(&self) -> bool {
        self.nets
            .iter()
            .any(|n| n.coupling == CouplingKind::AffineZ2)
    }

    /// Channels of the coupling net: [1, hidden..., outputs] (2 for an affine coupling).
    pub fn channels(&self) -> Vec<usize> {
        Self::channels_of(&self.hidden, self.coupling())
    }

    fn channels_of(hidden: &[usize], coupling: CouplingKind) -> Vec<usize> {
        let mut c = vec![1];
        c.extend(hidden);
        c.push(coupling.net_outputs());
        c
    }

    /// Every convolution of the model, layer by layer.
    pub fn blocks(&self) -> impl Iterator<Item = &ConvBlock> {
        self.nets.iter().flat_map(|n| &n.convs)
    }

    /// Every tap set the model's kernels read (each is one neighbour table on the GPU): a
    /// plain stage's, or a combinational stage's branches together (`CouplingNet::stage_taps`).
    pub fn tap_sets(&self) -> Vec<Taps> {
        let mut sets: Vec<Taps> = vec![];
        for net in &self.nets {
            for j in 0..net.n_stages() {
                let t = net.stage_taps(j);
                if !sets.contains(&t) {
                    sets.push(t);
                }
            }
        }
        sets
    }

    /// Trainable parameters of the model (12,960 for the 2D default of 16 layers, hidden
    /// [8, 8], k = 3).
    pub fn n_params(&self) -> usize {
        self.blocks().map(ConvBlock::n_params).sum()
    }

    /// PyTorch's default initialisation of every block, drawn from Philox keyed by the model
    /// seed (reproducible anywhere).
    pub fn init_params(&self, seed: u64) -> Vec<f32> {
        let mut rng = Philox::new(seed, stream::INIT);
        let mut p = vec![0f32; self.param_len];
        for c in self.blocks() {
            c.init(&mut rng, &mut p);
        }
        p
    }

    /// The checkpoint's tensors, named as PyTorch's reference model names them
    /// (`layers.{l}.net.{2j}.weight` / `.bias`: its nets interleave convolutions and
    /// activations); a combinational convolution's branch b is `layers.{l}.net.{2j}.branches.{b}`,
    /// its weights shaped [cout, cin, k, ..] with r kernel axes.
    pub fn tensors(&self) -> Vec<Tensor> {
        let nd = self.lattice.nd;
        let mut out = vec![];
        for (l, net) in self.nets.iter().enumerate() {
            for (j, stage) in net.stages().enumerate() {
                for (b, c) in stage.iter().enumerate() {
                    let name = if net.combi() {
                        format!("layers.{l}.net.{}.branches.{b}", 2 * j)
                    } else {
                        format!("layers.{l}.net.{}", 2 * j)
                    };
                    let mut shape = vec![c.cout, c.cin];
                    shape.extend(c.taps.shape(nd));
                    out.push(Tensor {
                        name: format!("{name}.weight"),
                        shape,
                        range: c.weights(),
                    });
                    out.push(Tensor {
                        name: format!("{name}.bias"),
                        shape: vec![c.cout],
                        range: c.bias(),
                    });
                }
            }
        }
        out
    }

    /// Multiply-adds of one forward pass of one sample (all convolutions; a symmetrised net
    /// runs twice, on x and -x).
    pub fn macs_per_sample(&self) -> usize {
        let v = self.lattice.volume();
        (self.nets.iter())
            .map(|n| {
                n.coupling.net_batch_factor()
                    * n.convs.iter().map(|c| c.n_weights() * v).sum::<usize>()
            })
            .sum()
    }

    /// The model's options beyond the reference architecture, in words ("" when none).
    pub fn variant(&self) -> String {
        let mut v = vec![];
        if let Some(c) = self.combi {
            let nd = self.lattice.nd;
            v.push(format!(
                "combinational convolutions {nd}C{} ({} branches, mean {} the activation)",
                c.r,
                self.nets[0].branches,
                match c.act {
                    CombiAct::Branch => "after",
                    CombiAct::Last => "before",
                }
            ));
        }
        if self.z2() {
            v.push("symmetrised (odd) couplings".into());
        }
        if let CouplingKind::Spline { bins, bound } = self.coupling() {
            v.push(format!(
                "rational-quadratic spline couplings ({bins} bins on [-{bound}, {bound}])"
            ));
        }
        if self.blocks().any(|c| c.zero_init) {
            v.push("identity start".into());
        }
        v.join(", ")
    }
}

/// The f64 reference model: forward and backward written by hand from the kernel references,
/// block by block as `FlowSpec::nets` describes the model.
pub mod reference {
    use super::{ConvBlock, CouplingKind, CouplingNet, FlowSpec};
    use crate::kernels::Act;
    use crate::kernels::action::reference as action;
    use crate::kernels::combi::reference as combi;
    use crate::kernels::conv::reference::Layer;
    use crate::kernels::coupling::reference as coupling;
    use crate::kernels::spline::reference as spline;
    use crate::kernels::z2::reference as z2;

    /// What the forward keeps for the backward.
    pub struct Forward {
        /// x[l] is the input of coupling l; x[n_layers] is phi.
        pub x: Vec<Vec<f64>>,
        /// The output of each stage of each layer's net (the last one is the net's output),
        /// for the net's batch (2B for a symmetrised coupling).
        pub h: Vec<Vec<Vec<f64>>>,
        /// Each block's own output, in the order of `CouplingNet::convs`: a combinational
        /// stage's branches before their mean (activated under `CombiAct::Branch`, not under
        /// `Last`); for a plain net the same as `h`.
        pub hb: Vec<Vec<Vec<f64>>>,
        /// Each coupling's (s, t) [batch, 2, site].
        pub st: Vec<Vec<f64>>,
        /// log q per sample (prior included).
        pub logq: Vec<f64>,
    }

    fn layer<'a>(spec: &'a FlowSpec, batch: usize, c: &'a ConvBlock) -> Layer<'a> {
        Layer {
            lattice: &spec.lattice,
            taps: &c.taps,
            batch,
            cin: c.cin,
            cout: c.cout,
        }
    }

    /// mask * x: the net's input (the frozen sites of x).
    fn masked(x: &[f64], mask: &[f64]) -> Vec<f64> {
        let v = mask.len();
        x.iter()
            .enumerate()
            .map(|(i, &xv)| xv * mask[i % v])
            .collect()
    }

    /// The net of coupling `net` applied to `input`: every stage's output and every block's.
    fn net_forward(
        spec: &FlowSpec,
        params: &[f64],
        net: &CouplingNet,
        batch: usize,
        input: Vec<f64>,
    ) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
        let mut a = input;
        let (mut hs, mut hbs) = (Vec::new(), Vec::new());
        for stage in net.stages() {
            let outs: Vec<Vec<f64>> = (stage.iter())
                .map(|c| layer(spec, batch, c).forward(&a, &params[c.params()], net.branch_act(c)))
                .collect();
            a = if net.combi() {
                combi::forward(&outs, net.combi_act, stage[0].act)
            } else {
                outs[0].clone()
            };
            hs.push(a.clone());
            hbs.extend(outs);
        }
        (hs, hbs)
    }

    /// Push z (with prior log density logr per sample) through the flow.
    pub fn forward(spec: &FlowSpec, params: &[f64], z: &[f64], logr: &[f64]) -> Forward {
        let batch = logr.len();
        let v = spec.lattice.volume();
        let mut x = vec![z.to_vec()];
        let (mut h, mut hb) = (Vec::new(), Vec::new());
        let mut st = Vec::new();
        let mut logq = logr.to_vec();
        for net in &spec.nets {
            let mask = spec.lattice.mask(net.parity);
            let xl = x.last().unwrap();
            let input = masked(xl, &mask);
            let ((hs, hbs), stl) = match net.coupling {
                CouplingKind::Affine | CouplingKind::Spline { .. } => {
                    let hs = net_forward(spec, params, net, batch, input);
                    let out = hs.0.last().unwrap().clone();
                    (hs, out)
                }
                CouplingKind::AffineZ2 => {
                    let hs = net_forward(spec, params, net, 2 * batch, z2::mirror(&input));
                    let out = z2::combine(hs.0.last().unwrap(), v);
                    (hs, out)
                }
            };
            let (y, logj) = match net.coupling {
                CouplingKind::Spline { bins, bound } => {
                    spline::forward(xl, &stl, &mask, batch, bins, bound)
                }
                _ => coupling::forward(xl, &stl, &mask, batch),
            };
            for (q, j) in logq.iter_mut().zip(&logj) {
                *q -= j;
            }
            x.push(y);
            h.push(hs);
            hb.push(hbs);
            st.push(stl);
        }
        Forward { x, h, hb, st, logq }
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
        let net = &spec.nets[l];
        let batch = glogq.len() * net.coupling.net_batch_factor();
        let mask = spec.lattice.mask(net.parity);
        let v = mask.len();
        // A plain net's output gradient is taken through its final activation here; a
        // combinational net's goes to its last stage's mean, which applies it per branch.
        let out_act = net.output_act();
        let (gx_direct, mut g) = match net.coupling {
            CouplingKind::Affine => {
                coupling::backward(&f.x[l], &f.st[l], &mask, gy, glogq, out_act)
            }
            CouplingKind::AffineZ2 => {
                let (gx, gst) = coupling::backward(&f.x[l], &f.st[l], &mask, gy, glogq, Act::None);
                let u = f.h[l].last().unwrap();
                (gx, z2::combine_backward(u, &gst, v, out_act))
            }
            CouplingKind::Spline { bins, bound } => {
                let (x, st) = (&f.x[l], &f.st[l]);
                spline::backward(x, st, &mask, gy, glogq, bins, bound, out_act)
            }
        };
        // Back through the net, last stage first; g is the stage output's gradient, before
        // the activation for a plain net and after it for a combinational one.
        let nb = net.branches;
        let stages: Vec<&[ConvBlock]> = net.stages().collect();
        for (j, stage) in stages.iter().enumerate().rev() {
            let input = match (j, net.coupling) {
                (0, CouplingKind::Affine | CouplingKind::Spline { .. }) => masked(&f.x[l], &mask),
                (0, CouplingKind::AffineZ2) => z2::mirror(&masked(&f.x[l], &mask)),
                _ => f.h[l][j - 1].clone(),
            };
            // Each block's pre-activation output gradient.
            let gb = if net.combi() {
                let hb = &f.hb[l][j * nb..(j + 1) * nb];
                combi::backward(hb, &f.h[l][j], &g, net.combi_act, stage[0].act)
            } else {
                vec![g]
            };
            let mut gin = vec![0.0; input.len()];
            for (c, gc) in stage.iter().zip(&gb) {
                let lay = layer(spec, batch, c);
                let gw = lay.backward_weight(&input, gc);
                for (a, b) in grad[c.params()].iter_mut().zip(&gw) {
                    *a += b;
                }
                let gi = lay.backward_input(gc, &params[c.params()]);
                for (a, b) in gin.iter_mut().zip(&gi) {
                    *a += b;
                }
            }
            g = if j > 0 && !net.combi() {
                let prev = stages[j - 1][0].act;
                gin.iter()
                    .zip(&input)
                    .map(|(gv, &yv)| gv * prev.grad_from_output(yv))
                    .collect()
            } else {
                gin
            };
        }
        // The input reached the net through mask * x (and, symmetrised, -mask * x).
        let g_net = match net.coupling {
            CouplingKind::Affine | CouplingKind::Spline { .. } => masked(&g, &mask),
            CouplingKind::AffineZ2 => z2::mirror_backward(&g, &mask),
        };
        gx_direct.iter().zip(&g_net).map(|(d, n)| d + n).collect()
    }
}
