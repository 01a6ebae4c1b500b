//! Philox4x32-10 (Salmon, Moraes, Dror, Shaw, SC'11), the counter-based generator the shaders use,
//! here on the CPU: the reference for the prior kernel, and the source of every random number the
//! host needs (initial weights, Metropolis accept/reject), so that runs are reproducible bit for
//! bit on any machine and any crate version.

/// Every stream of random numbers the program draws: a generator is keyed by (seed, stream),
/// so two uses with different streams never share numbers. All identifiers live here.
pub mod stream {
    /// The GPU prior's draws (`kernels::prior`): training batches, each epoch's evaluation,
    /// and `sample`'s proposals. Shard I of N of `sample` takes the draw indices I, I + N,
    /// I + 2N, ... of SAMPLE, so no two shards share a proposal, and the N shards together
    /// draw the batches of one chain.
    pub const TRAIN: u32 = 0;
    pub const EVAL: u32 = 1;
    pub const SAMPLE: u32 = 2;
    /// The initial weights (`FlowSpec::init_params`).
    pub const INIT: u32 = 0x1A17;
    /// The accept/reject decisions of an epoch's evaluation chain: `EVAL_MH + epoch`.
    pub const EVAL_MH: u32 = 0x1000;
    /// Those of the final evaluation after training.
    pub const FINAL_EVAL_MH: u32 = 0x0F1A;
    /// Those of `sample`'s chain.
    pub const SAMPLE_MH: u32 = 0x5A3D;
    /// HMC's accept/reject decisions and its trajectory-length jitter.
    pub const HMC: u32 = 0x4D43;
    pub const HMC_JITTER: u32 = 0x4A17;

    /// The most shards one chain can be split into (their streams stay in their own ranges).
    pub const MAX_SHARDS: u32 = 1 << 30;

    /// The accept/reject stream of shard I: shard 0 the unsharded chain's, shard I > 0
    /// `0xC000_0000 + I`, a range no other stream uses.
    pub fn sample_mh_shard(i: u32) -> u32 {
        assert!(i < MAX_SHARDS);
        if i == 0 { SAMPLE_MH } else { 0xC000_0000 + i }
    }
}

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// One Philox4x32-10 block: four 32-bit words from a 128-bit counter and a 64-bit key.
pub fn philox4x32(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for _ in 0..10 {
        let p0 = M0 as u64 * c[0] as u64;
        let p1 = M1 as u64 * c[2] as u64;
        c = [
            (p1 >> 32) as u32 ^ c[1] ^ k[0],
            p1 as u32,
            (p0 >> 32) as u32 ^ c[3] ^ k[1],
            p0 as u32,
        ];
        k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
    }
    c
}

/// The key of a 64-bit seed.
pub fn key_of(seed: u64) -> [u32; 2] {
    [seed as u32, (seed >> 32) as u32]
}

/// A uniform in (0, 1] from the top 24 bits of a word, exactly as the shaders compute it.
pub fn uniform01(r: u32) -> f64 {
    ((r >> 8) as f64 + 1.0) / 16_777_216.0
}

/// Box-Muller, as in the shaders (in f64).
pub fn box_muller(u1: f64, u2: f64) -> [f64; 2] {
    let r = (-2.0 * u1.ln()).sqrt();
    let th = std::f64::consts::TAU * u2;
    [r * th.cos(), r * th.sin()]
}

/// The prior's standard normals for one sample: sites 4q..4q+3 come from counter
/// (q, sample, draw, stream). Mirrors `prior.wgsl`'s `sample_normal`.
pub fn prior_normals(
    key: [u32; 2],
    sample: u32,
    draw: u32,
    stream: u32,
    volume: usize,
) -> Vec<f64> {
    let mut z = Vec::with_capacity(volume);
    let mut q = 0u32;
    while z.len() < volume {
        let r = philox4x32([q, sample, draw, stream], key);
        let a = box_muller(uniform01(r[0]), uniform01(r[1]));
        let b = box_muller(uniform01(r[2]), uniform01(r[3]));
        for v in [a[0], a[1], b[0], b[1]] {
            if z.len() < volume {
                z.push(v);
            }
        }
        q += 1;
    }
    z
}

/// A sequential stream of uniforms from Philox in counter mode, for host-side randomness.
#[derive(Clone, Debug)]
pub struct Philox {
    key: [u32; 2],
    stream: u32,
    /// Blocks drawn so far; the position in the stream (saved in checkpoints).
    pub block: u64,
    buf: [u32; 4],
    used: usize,
}

impl Philox {
    pub fn new(seed: u64, stream: u32) -> Self {
        Philox {
            key: key_of(seed),
            stream,
            block: 0,
            buf: [0; 4],
            used: 4,
        }
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.used == 4 {
            self.buf = philox4x32(
                [self.block as u32, (self.block >> 32) as u32, 0, self.stream],
                self.key,
            );
            self.block += 1;
            self.used = 0;
        }
        self.used += 1;
        self.buf[self.used - 1]
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        let hi = (self.next_u32() >> 5) as u64;
        let lo = (self.next_u32() >> 6) as u64;
        ((hi << 26) | lo) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn uniform_in(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known-answer vectors of Random123's kat_vectors for philox4x32_10.
    #[test]
    fn philox_known_answers() {
        assert_eq!(
            philox4x32([0, 0, 0, 0], [0, 0]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn uniforms_in_range() {
        let mut r = Philox::new(7, 0);
        for _ in 0..10000 {
            let u = r.uniform();
            assert!((0.0..1.0).contains(&u));
        }
        assert!(uniform01(0) > 0.0 && uniform01(u32::MAX) == 1.0);
    }
}
