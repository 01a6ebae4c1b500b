//! How each kernel family splits its work over threads, decided per adapter kind in one place:
//! every choice here becomes a compile-time constant or an entry point of a shader (`conv.wgsl`'s
//! NB, TPT, COB, NBR, SPT, and forward4 / backward_input4 for 4 sites per thread;
//! `coupling_layer.wgsl`'s WG, SPT, TPT). GPUs take one output per thread (a uniform weight load
//! is broadcast to the warp for free); CPU adapters such as lavapipe, where every lane's load is
//! a separate access and one workgroup runs per core, take several outputs per thread and one
//! weight-gradient chunk per core. The constants were measured on lavapipe (2 cores,
//! BENCHMARKS.md).

use super::conv::ConvDims;

/// Samples per thread on CPU adapters (measured on lavapipe: see BENCHMARKS.md).
pub const SOFTWARE_NB: usize = 8;
/// Accumulators a forward or backward_input thread holds on a CPU adapter (NB * channels).
/// Measured on lavapipe, 32 -> 32 channels, L 16: NB 2 (64) 16.4 GFLOP/s, NB 4 (128) 3.7,
/// NB 8 (256) 6.4; the tutorial's 8 -> 8 layers run best at NB 8 (64).
pub const SOFTWARE_ACCUMULATORS: usize = 64;
/// The same for a backward_weight thread (TPT * COB; it also holds COB bias sums and TPT
/// inputs). Measured on lavapipe, 32 -> 32 channels: COB 4 (12) 6.6 GFLOP/s, COB 8 (24) 8.5,
/// COB 16 (48) 3.0 to 5.4, COB 32 (96) 3.1.
pub const SOFTWARE_WGRAD_ACCUMULATORS: usize = 24;
/// Sites per step of a combinational stage's weight-gradient thread on a CPU adapter: lavapipe
/// runs each lane's load as its own scalar access, and with only 3 taps per branch these
/// threads do few multiply-adds per load. Measured on lavapipe (3D L 8 3C1, AMD Zen 5, six
/// interleaved rounds, median µs per call, 1 -> 4 sites): 8 -> 8 8,387 -> 4,793, 1 -> 8
/// 2,143 -> 1,299, 8 -> 2 3,304 -> 1,621; the step 0.77x. Plain convolutions keep one site by
/// rule (their sums' order, and so the recorded results, unchanged); `--tune` tries both.
pub const SOFTWARE_STAGE_SITES: usize = 4;
/// Consecutive sites of a row per forward and backward_input thread on a CPU adapter, where L
/// is a multiple of 4 (conv.wgsl's forward4, backward_input4): each tap's 4 values come in two
/// vec4 loads instead of four scalar ones, and the sums keep their order (the results are
/// bitwise those of one site). Measured on lavapipe (tutorial, AMD Zen 5, five interleaved
/// rounds, each kernel's median time relative to an unchanged one of the same run), against
/// one site and 8 samples per thread: with 2 samples per thread the 8 -> 8 forward 0.77x, its
/// input gradient 0.77x, the 8 -> 2 forward 0.92x, its input gradient 0.79x, the 1 -> 8
/// forward 0.70x, its input gradient 0.88x.
pub const SOFTWARE_FORWARD_SITES: usize = 4;
/// Weight-gradient threads per chunk below which a CPU adapter's threads hold fewer outputs
/// (8: one 256-bit vector of f32 lanes).
pub const SOFTWARE_MIN_WGRAD_THREADS: usize = 8;

/// Threads per workgroup of the whole-layer kernels, at most (one sample per workgroup;
/// smaller lattices take fewer).
const LAYER_MAX_WG: usize = 64;
/// Accumulators (sites x channels) per whole-layer thread on a CPU adapter. Measured on
/// lavapipe, the tutorial's layer (HID 8, training): SPT 1 1422 us, 2 1286, 4 (32) 894,
/// 8 (64) 1142.
pub const LAYER_SOFTWARE_ACCUMULATORS: usize = 32;

/// Workgroups a CPU adapter runs at once: lavapipe runs one per core. Kernels that split a sum
/// over workgroups use this many there (fewer, longer serial sums are fastest on a CPU).
pub fn cpu_cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Samples per chunk when `batch` samples are split into about `chunks` chunks.
fn chunk_size(batch: usize, chunks: usize) -> usize {
    batch.div_ceil(chunks.clamp(1, batch.max(1)))
}

/// How one convolution's work is split over threads: each choice is a compile-time constant
/// of conv.wgsl, by a rule per adapter kind (measurements in BENCHMARKS.md) or by measurement
/// on the adapter (`crate::tune`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConvTiling {
    /// Samples per thread of forward and backward_input (see `NB` in conv.wgsl).
    pub samples_per_thread: usize,
    /// Taps whose weight gradients one backward_weight thread holds (TPT in conv.wgsl): a
    /// divisor of TAPS; each output-gradient load then feeds TPT * COB multiply-adds.
    pub taps_per_thread: usize,
    /// Output channels whose weight gradients one backward_weight thread holds (COB in
    /// conv.wgsl): a divisor of COUT.
    pub couts_per_thread: usize,
    /// Samples per chunk of the weight-gradient reduction.
    pub chunk: usize,
    /// Branches of a combinational stage whose weight gradients one backward_weight thread
    /// holds (NBR in conv.wgsl; a divisor of the branches). Where the stage keeps signs its
    /// branches share one row of output gradients and one sign word per site, which such a
    /// thread loads once for all of them. Every sum keeps its order: no effect on the numbers.
    #[serde(default = "one")]
    pub branches_per_thread: usize,
    /// Consecutive sites per step of a backward_weight thread (SPT in conv.wgsl: 1, or 4 where
    /// the volume is a multiple of 4): their output gradients and sign words come in one vec4
    /// load. The order of each sum over sites and samples follows it.
    #[serde(default = "one")]
    pub sites_per_thread: usize,
    /// Consecutive sites of a row per forward and backward_input thread (conv.wgsl's forward4
    /// and backward_input4 for 4): 1, or 4 where L is a multiple of 4. Each sum keeps its
    /// order: no effect on the numbers.
    #[serde(default = "one")]
    pub forward_sites: usize,
}

fn one() -> usize {
    1
}

impl ConvTiling {
    /// The tiling for `dims` on a GPU or (`software`) on a CPU adapter such as lavapipe; `row`
    /// is the tap set's row (`Taps::row`: k for the k^Nd window).
    pub fn for_adapter(dims: &ConvDims, row: usize, software: bool) -> ConvTiling {
        let mut tpt = Self::default_taps_per_thread(dims.taps, row, dims.cout, software);
        let mut cob = Self::default_couts_per_thread(dims.cout, tpt, software);
        // Threads of one chunk are the lanes of a CPU adapter's workgroup: too few leave its
        // vector lanes idle (a 1 -> 8 layer of 3 taps had one thread per chunk). Fewer outputs
        // per thread give more threads; each weight's sum keeps its order.
        let threads = |tpt: usize, cob: usize| dims.cin * dims.taps / tpt * dims.cout / cob;
        while software && threads(tpt, cob) < SOFTWARE_MIN_WGRAD_THREADS {
            if let Some(c) = (1..cob).rev().find(|c| dims.cout.is_multiple_of(*c)) {
                cob = c;
            } else if let Some(t) = (1..tpt).rev().find(|t| dims.taps.is_multiple_of(*t)) {
                tpt = t;
            } else {
                break;
            }
        }
        let fs = if software && Self::forward_sites_fit(dims, row) {
            SOFTWARE_FORWARD_SITES
        } else {
            1
        };
        ConvTiling {
            samples_per_thread: Self::default_samples_per_thread(
                software,
                dims.cin.max(dims.cout) * fs,
            ),
            taps_per_thread: tpt,
            couts_per_thread: cob,
            chunk: Self::rule_chunk(dims, tpt, cob, software),
            branches_per_thread: 1,
            sites_per_thread: 1,
            forward_sites: fs,
        }
    }

    /// Whether forward and backward_input can take 4 sites of a row per thread: L a multiple
    /// of 4, an odd row of taps reaching at most 4 sites either side (so a tap's 4 values lie
    /// in two adjacent blocks of 4), and at most `SOFTWARE_ACCUMULATORS` accumulators for one
    /// sample (4 sites x max(CIN, COUT)): 32 -> 32 channels at 4 sites took 48 s instead of 2
    /// to compile on lavapipe.
    pub fn forward_sites_fit(dims: &ConvDims, row: usize) -> bool {
        dims.extent.is_multiple_of(4)
            && row % 2 == 1
            && row <= 9
            && 4 * dims.cin.max(dims.cout) <= SOFTWARE_ACCUMULATORS
    }
    /// The tiling of a stage of `branches` convolutions run as one (`ConvSpec::branches`): a
    /// forward thread of several branches also holds their running mean, twice the
    /// accumulators, so a CPU adapter gives it half the samples (measured on lavapipe, 3D L 8,
    /// 3C1: the 8 -> 8 forward took 489 ms per step at 8 samples per thread, 240 at 4). On a
    /// CPU adapter a weight-gradient thread holds every branch where their accumulators stay
    /// within `SOFTWARE_WGRAD_ACCUMULATORS` (3C1's 1 -> 8 and 8 -> 2 stages, not its 8 -> 8):
    /// measured on lavapipe (3D L 8 3C1, AMD Zen 5, four rounds), the 1 -> 8 weight gradient
    /// took 2.8 against 4.1 ms per call, the 8 -> 2 one the same. There its weight-gradient
    /// threads also take 4 sites per step (`SOFTWARE_STAGE_SITES`), where the volume allows.
    /// A GPU keeps one branch and one site per thread (more threads).
    pub fn for_stage(dims: &ConvDims, row: usize, branches: usize, software: bool) -> ConvTiling {
        let mut t = Self::for_adapter(dims, row, software);
        if branches > 1 {
            t.samples_per_thread = (t.samples_per_thread / 2).max(1);
            if software
                && t.taps_per_thread * t.couts_per_thread * branches <= SOFTWARE_WGRAD_ACCUMULATORS
            {
                t.branches_per_thread = branches;
            }
            if software && dims.volume.is_multiple_of(SOFTWARE_STAGE_SITES) {
                t.sites_per_thread = SOFTWARE_STAGE_SITES;
            }
        }
        t
    }

    /// Samples per thread: 1 on GPUs, where a uniform weight load is broadcast for free; on CPU
    /// adapters each weight load is a gather, so several samples share it.
    /// A thread holds NB * `per_sample` accumulators (max(CIN, COUT) times its sites); past
    /// `SOFTWARE_ACCUMULATORS` they spill (measured on lavapipe: 32 -> 32 channels with NB = 8
    /// ran at half the GFLOP/s of 8 -> 8), so wide layers take fewer samples per thread.
    fn default_samples_per_thread(software: bool, per_sample: usize) -> usize {
        if software {
            (SOFTWARE_ACCUMULATORS / per_sample).clamp(1, SOFTWARE_NB)
        } else {
            1
        }
    }

    /// Taps per backward_weight thread (TPT, a divisor of TAPS). A GPU takes one row of the
    /// window (k). On a CPU adapter the thread's TPT * COUT accumulators must stay in
    /// registers: the largest power of k whose TPT * COUT is within
    /// `SOFTWARE_WGRAD_ACCUMULATORS`, at least a row (wider layers are then split into blocks
    /// of output channels, `default_couts_per_thread`). Measured on lavapipe: the tutorial's
    /// 8 -> 8 weight gradients with a whole 3 x 3 plane per thread (72 accumulators) ran 8x
    /// slower than with a row (24); its 8 -> 2 ones 15-20 % faster with a plane (18) than a row.
    fn default_taps_per_thread(
        taps: usize,
        kernel_size: usize,
        cout: usize,
        software: bool,
    ) -> usize {
        if !taps.is_multiple_of(kernel_size) {
            return 1;
        }
        let mut tpt = kernel_size;
        while software
            && kernel_size > 1
            && taps.is_multiple_of(tpt * kernel_size)
            && tpt * kernel_size <= 25
            && tpt * kernel_size * cout <= SOFTWARE_WGRAD_ACCUMULATORS
        {
            tpt *= kernel_size;
        }
        tpt
    }

    /// Output channels per backward_weight thread (COB, a divisor of COUT). On a CPU adapter
    /// the largest whose TPT * COB accumulators stay within `SOFTWARE_WGRAD_ACCUMULATORS`
    /// (8 channels: all 8; 32 channels: 8); a GPU holds all of them.
    fn default_couts_per_thread(cout: usize, taps_per_thread: usize, software: bool) -> usize {
        if !software {
            return cout;
        }
        (1..=cout)
            .rev()
            .find(|c| cout.is_multiple_of(*c) && c * taps_per_thread <= SOFTWARE_WGRAD_ACCUMULATORS)
            .unwrap_or(1)
    }

    /// The forward and backward_input thread's block: (samples, sites).
    pub fn forward_block(&self) -> (usize, usize) {
        (self.samples_per_thread, self.forward_sites)
    }

    /// This tiling with the forward block `(samples, sites)`.
    pub fn with_forward_block(&self, (nb, vs): (usize, usize)) -> Self {
        ConvTiling {
            samples_per_thread: nb,
            forward_sites: vs,
            ..*self
        }
    }

    /// The weight-gradient thread's block: (taps, output channels, branches, sites).
    pub fn weight_block(&self) -> (usize, usize, usize, usize) {
        (
            self.taps_per_thread,
            self.couts_per_thread,
            self.branches_per_thread,
            self.sites_per_thread,
        )
    }

    /// This tiling with the weight-gradient block `(taps, channels, branches, sites)`.
    pub fn with_weight_block(&self, (tpt, cob, nbr, spt): (usize, usize, usize, usize)) -> Self {
        ConvTiling {
            taps_per_thread: tpt,
            couts_per_thread: cob,
            branches_per_thread: nbr,
            sites_per_thread: spt,
            ..*self
        }
    }

    /// Samples per chunk of the weight-gradient sums, whose threads (CIN * TAPS / TPT *
    /// COUT / COB per chunk) each sum over a chunk. A GPU wants about 16k threads; a CPU
    /// adapter runs one workgroup per core, and there the fewest, longest chunks that still
    /// give every core one are fastest (measured on lavapipe, 2 cores: 2 chunks 9.5 ms per
    /// step for the 8 -> 8 layers, 1 chunk 17.8 ms, 32 chunks 17.7 ms).
    pub fn rule_chunk(
        dims: &ConvDims,
        taps_per_thread: usize,
        couts_per_thread: usize,
        software: bool,
    ) -> usize {
        let threads_per_chunk =
            (dims.cin * dims.taps / taps_per_thread * dims.cout / couts_per_thread).max(1);
        let chunks = if software {
            cpu_cores()
        } else {
            16384usize.div_ceil(threads_per_chunk)
        };
        chunk_size(dims.batch, chunks)
    }
}

/// How a whole coupling layer (`kernels::coupling_layer`) splits its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerTiling {
    /// Threads per workgroup (WG): enough that SPT sites each cover the lattice, a power of
    /// two (the log J tree sum), at least 8, at most 64.
    pub workgroup: usize,
    /// Sites per thread (SPT): 1 on GPUs; on CPU adapters SPT * HID =
    /// `LAYER_SOFTWARE_ACCUMULATORS`, at most 8, and no more than the workgroup needs.
    pub sites_per_thread: usize,
    /// Taps per weight-gradient thread of the backward (TPT): one on GPUs (more threads); a
    /// row of the tap set on CPU adapters, as conv's backward_weight there.
    pub taps_per_thread: usize,
    /// Workgroups of the backward and the samples each takes: one sample per workgroup on a
    /// GPU (at most 256 workgroups); one workgroup per core on a CPU adapter.
    pub n_chunks: usize,
    pub chunk: usize,
}

impl LayerTiling {
    /// The tiling of a layer of `batch` samples on `volume` sites whose hidden width is `hid`
    /// (`None`: not a shape the kernel knows), whose stages have `branches` branches each (a
    /// thread then also holds their sum, twice the accumulators, as `ConvTiling::for_stage`)
    /// over tap sets with rows of `row` taps.
    pub fn for_adapter(
        batch: usize,
        volume: usize,
        hid: Option<usize>,
        branches: usize,
        row: usize,
        software: bool,
    ) -> LayerTiling {
        let held = if branches > 1 { 2 } else { 1 };
        let most_sites = match (software, hid) {
            (true, Some(hid)) => (LAYER_SOFTWARE_ACCUMULATORS / (held * hid)).clamp(1, 8),
            _ => 1,
        };
        let workgroup = volume
            .div_ceil(most_sites)
            .next_power_of_two()
            .clamp(8, LAYER_MAX_WG);
        let chunk = chunk_size(batch, if software { cpu_cores() } else { 256 });
        LayerTiling {
            workgroup,
            // No more than the workgroup (at least 8 threads) needs to cover the lattice.
            sites_per_thread: most_sites.min(volume.div_ceil(workgroup)).max(1),
            taps_per_thread: if software { row } else { 1 },
            n_chunks: batch.div_ceil(chunk),
            chunk: batch.div_ceil(batch.div_ceil(chunk)),
        }
    }
}

/// Accumulators a candidate thread may hold (samples x channels, or taps x output channels):
/// past this every adapter measured so far spills them.
const MAX_CANDIDATE_ACCUMULATORS: usize = 72;

/// The tilings a tuner (`crate::tune`) measures for one convolution, each a valid
/// specialisation of conv.wgsl that the kernel tests check against the f64 reference. The
/// three parts are independent (forward and backward_input use only the samples per thread;
/// backward_weight only the rest), so they are searched one after the other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvCandidates {
    /// (samples, sites) per thread of forward and backward_input.
    pub forward_blocks: Vec<(usize, usize)>,
    /// (taps, output channels, branches, sites) per weight-gradient thread.
    pub weight_blocks: Vec<(usize, usize, usize, usize)>,
}

impl ConvCandidates {
    /// Candidates for a stage of `branches` convolutions of shape `dims` whose tap set has
    /// rows of `row` taps: powers of two samples per thread (at most the batch, 16, and
    /// `MAX_CANDIDATE_ACCUMULATORS` held with their channels, twice for several branches), each
    /// with one site and (where L and the tap rows allow) with 4 sites per thread, whose
    /// accumulators count 4 times;
    /// taps per thread 1 or a power of the row dividing the taps (at most 25, as
    /// `Conv::new` allows), output channels per thread a power-of-two divisor of COUT or COUT
    /// itself, branches per thread 1 or all of them, the product of the three at most
    /// `MAX_CANDIDATE_ACCUMULATORS`; each with 1 and (where the volume allows) 4 sites per
    /// step. The rule's choice (`ConvTiling::for_stage`) is always among them.
    pub fn for_stage(dims: &ConvDims, row: usize, branches: usize, rule: &ConvTiling) -> Self {
        let held = dims.cin.max(dims.cout) * if branches > 1 { 2 } else { 1 };
        let mut nb: Vec<(usize, usize)> = vec![];
        let fit = ConvTiling::forward_sites_fit(dims, row);
        for vs in if fit { vec![1, 4] } else { vec![1] } {
            nb.extend(
                (0..5)
                    .map(|i| 1usize << i)
                    .filter(|&n| {
                        n == 1 || (n <= dims.batch && vs * n * held <= MAX_CANDIDATE_ACCUMULATORS)
                    })
                    .map(|n| (n, vs)),
            );
        }
        let mut tpts = vec![1];
        let mut t = row;
        while row > 1 && t <= 25 && dims.taps.is_multiple_of(t) {
            tpts.push(t);
            t *= row;
        }
        let mut cobs: Vec<usize> = (0..6)
            .map(|i| 1usize << i)
            .filter(|c| dims.cout.is_multiple_of(*c))
            .collect();
        if !cobs.contains(&dims.cout) {
            cobs.push(dims.cout);
        }
        let nbrs = if branches > 1 {
            vec![1, branches]
        } else {
            vec![1]
        };
        let sites = if dims.volume.is_multiple_of(4) {
            vec![1, 4]
        } else {
            vec![1]
        };
        let mut blocks: Vec<(usize, usize, usize, usize)> = vec![];
        for &spt in &sites {
            for &q in &nbrs {
                for &t in &tpts {
                    for &c in &cobs {
                        if t * c * q <= MAX_CANDIDATE_ACCUMULATORS {
                            blocks.push((t, c, q, spt));
                        }
                    }
                }
            }
        }
        if !nb.contains(&rule.forward_block()) {
            nb.push(rule.forward_block());
        }
        let r = rule.weight_block();
        if !blocks.contains(&r) {
            blocks.push(r);
        }
        ConvCandidates {
            forward_blocks: nb,
            weight_blocks: blocks,
        }
    }

    /// Tilings covering every specialisation a tuner may choose from these candidates, entry
    /// point by entry point: each forward block (forward, backward_input) with the rule's
    /// weight tiling, and each weight block with each chunking of either adapter kind
    /// (backward_weight, reduce_weight) with the rule's forward block. (The entry points
    /// read disjoint constants, so any combination the tuner makes is covered.)
    pub fn every_tiling(&self, dims: &ConvDims, rule: &ConvTiling) -> Vec<ConvTiling> {
        let mut out: Vec<ConvTiling> = self
            .forward_blocks
            .iter()
            .map(|&block| rule.with_forward_block(block))
            .collect();
        for &block in &self.weight_blocks {
            let (tpt, cob, _, _) = block;
            for software in [true, false] {
                for chunk in Self::chunks(dims, tpt, cob, software) {
                    let t = ConvTiling {
                        chunk,
                        ..rule.with_weight_block(block)
                    };
                    if !out.contains(&t) {
                        out.push(t);
                    }
                }
            }
        }
        out
    }

    /// Samples per chunk of the weight-gradient sums to try with `tpt` taps and `cob` output
    /// channels per thread: on a CPU adapter one, two and four chunks per core; on a GPU
    /// enough chunks for about 4k, 16k and 64k threads.
    pub fn chunks(dims: &ConvDims, tpt: usize, cob: usize, software: bool) -> Vec<usize> {
        let threads_per_chunk = (dims.cin * dims.taps / tpt * dims.cout / cob).max(1);
        let counts: Vec<usize> = if software {
            [1, 2, 4].iter().map(|m| m * cpu_cores()).collect()
        } else {
            [4096usize, 16384, 65536]
                .iter()
                .map(|t| t.div_ceil(threads_per_chunk))
                .collect()
        };
        let mut out: Vec<usize> = vec![];
        for c in counts {
            let s = chunk_size(dims.batch, c);
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }
}
