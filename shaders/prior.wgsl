// prior.wgsl: draws z from the prior and writes log r(z) per sample (which starts log q).
// Randomness is Philox4x32-10 keyed by the run's seed, with counter
//   (site quad, sample, draw index, stream),
// where the draw index is read from a GPU-resident counter (the training step), so a run draws
// the same numbers on any device, and a resumed run continues the same sequence exactly.
// One Philox call gives four uniforms: two Box-Muller pairs, four sites.
//
// Two priors: the normal N(mu, sigma) per site, and GomalizingFlow's one-site density
// r(x) = exp(-m2 x^2 - lam x^4) / Z on [xmin, xmax], drawn by rejection under its exact
// maximum exp(-vmin) (both computed on the host in f64), so the draws follow r exactly and
// log r(z) = -sum v(z) - V log Z is the density of what was drawn.

const WG: u32 = 256u;

struct Params {
    batch: u32,
    volume: u32,
    key_lo: u32,
    key_hi: u32,
    // Separates independent uses of one seed (training, evaluation, sampling); < 256.
    stream: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    // Normal prior.
    mu: f32,
    sigma: f32,
    // Potential prior: v(x) = m2 x^2 + lam x^4 on [xmin, xmin + width]; vmin = min v there;
    // log_norm = log of the integral of exp(-v) over the interval.
    m2: f32,
    lam: f32,
    xmin: f32,
    width: f32,
    vmin: f32,
    log_norm: f32,
}

// Rejection tries per site, two per Philox block. The acceptance of one try is at least a few
// per cent for any sensible potential, so a site running out has probability below 1e-40.
const MAX_BLOCKS: u32 = 2048u;

const HALF_LN_2PI: f32 = 0.91893853320467274;

@group(0) @binding(0) var<uniform> p: Params;
// counter[0]: the draw index (e.g. the number of training steps done).
@group(0) @binding(1) var<storage, read> counter: array<u32>;
@group(0) @binding(2) var<storage, read_write> z: array<f32>;
@group(0) @binding(3) var<storage, read_write> logq: array<f32>;

@compute @workgroup_size(WG)
fn sample_normal(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.x;
    let row = b * p.volume;
    let key = vec2<u32>(p.key_lo, p.key_hi);
    var part = 0.0;
    for (var q = lid; 4u * q < p.volume; q += WG) {
        let r = philox4x32(vec4<u32>(q, b, counter[0], p.stream), key);
        let n01 = box_muller(uniform01(r.x), uniform01(r.y));
        let n23 = box_muller(uniform01(r.z), uniform01(r.w));
        let v = array<f32, 4>(n01.x, n01.y, n23.x, n23.y);
        for (var j = 0u; j < 4u; j++) {
            let s = 4u * q + j;
            if s < p.volume {
                z[row + s] = fma(p.sigma, v[j], p.mu);
                part -= 0.5 * v[j] * v[j];
            }
        }
    }
    let total = tree_sum(lid, part);
    if lid == 0u {
        logq[b] = total - f32(p.volume) * (HALF_LN_2PI + log(p.sigma));
    }
}

fn potential(x: f32) -> f32 {
    let x2 = x * x;
    return x2 * (p.m2 + p.lam * x2);
}

@compute @workgroup_size(WG)
fn sample_potential(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.x;
    let row = b * p.volume;
    let key = vec2<u32>(p.key_lo, p.key_hi);
    var part = 0.0;
    for (var s = lid; s < p.volume; s += WG) {
        var x = p.xmin;
        for (var k = 0u; k < MAX_BLOCKS; k++) {
            let r = philox4x32(vec4<u32>(s, b, counter[0], p.stream | (k << 8u)), key);
            // Accept x with probability exp(-(v(x) - vmin)).
            let x1 = fma(p.width, uniform01(r.x), p.xmin);
            if log(uniform01(r.y)) <= p.vmin - potential(x1) {
                x = x1;
                break;
            }
            let x2 = fma(p.width, uniform01(r.z), p.xmin);
            x = x2;
            if log(uniform01(r.w)) <= p.vmin - potential(x2) {
                break;
            }
        }
        z[row + s] = x;
        part -= potential(x);
    }
    let total = tree_sum(lid, part);
    if lid == 0u {
        logq[b] = total - f32(p.volume) * p.log_norm;
    }
}
