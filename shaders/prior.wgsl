// prior.wgsl: draws z from the prior and writes log r(z) per sample (which starts log q).
// Randomness is Philox4x32-10 keyed by the run's seed, with counter
//   (site quad, sample, draw index, stream),
// where the draw index is read from a GPU-resident counter (the training step), so a run draws
// the same numbers on any device, and a resumed run continues the same sequence exactly.
// One Philox call gives four uniforms: two Box-Muller pairs, four sites.

const WG: u32 = 256u;

struct Params {
    batch: u32,
    volume: u32,
    key_lo: u32,
    key_hi: u32,
    // Separates independent uses of one seed (training, evaluation, sampling).
    stream: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const HALF_LN_2PI: f32 = 0.91893853320467274;

@group(0) @binding(0) var<uniform> p: Params;
// counter[0]: the draw index (e.g. the number of training steps done).
@group(0) @binding(1) var<storage, read> counter: array<u32>;
@group(0) @binding(2) var<storage, read_write> z: array<f32>;
@group(0) @binding(3) var<storage, read_write> logq: array<f32>;

var<workgroup> red: array<f32, WG>;

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
                z[row + s] = v[j];
                part -= 0.5 * v[j] * v[j];
            }
        }
    }
    red[lid] = part;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if lid < k {
            red[lid] += red[lid + k];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        logq[b] = red[0] - f32(p.volume) * HALF_LN_2PI;
    }
}
