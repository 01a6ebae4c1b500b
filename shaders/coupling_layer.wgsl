// coupling_layer.wgsl: a whole affine coupling layer's forward in one dispatch, one sample per
// workgroup: the net's convolutions [1 -> HID -> ... -> HID -> 2] with their activations, then
// the coupling and its log J (the same arithmetic as conv.wgsl's forward and coupling.wgsl's
// forward, in the same order). The hidden activations of the sample stay in workgroup memory
// between convolutions, so the layer costs one launch instead of n_convs + 1, and an
// inference tape writes nothing to memory but y and log q. A training tape (TRAIN = 1) also
// stores every convolution's output, which the unfused backward reads.
//
// Conventions as conv.wgsl: neighbours from nbr[site * TAPS + t]; weights [COUT, CIN, TAPS]
// then bias [COUT] per convolution, read through the uniform binding `wu` (the layer's slice
// of the parameter buffer). The constants are specialised by the launcher.

// Sites of the lattice, taps of the kernel window, hidden width, hidden convolutions.
const V: u32 = 64u;
const TAPS: u32 = 9u;
const HID: u32 = 8u;
// The net is 1 -> HID, then NHID - 1 convolutions HID -> HID, then HID -> 2.
const NHID: u32 = 2u;
// The net's final activation (tanh or none); the hidden ones are LeakyReLU.
const ACT_OUT: u32 = 2u;
// Threads per workgroup: a power of two (the log J tree sum), at most 256.
const WG: u32 = 64u;
// Sites per thread: thread lid takes sites lid, lid + WG, ..., lid + (SPT - 1) WG, so each
// weight load feeds SPT multiply-adds (1 on GPUs, where a uniform load is broadcast for free;
// more on CPU adapters, where it is not: as NB in conv.wgsl).
const SPT: u32 = 1u;
// 1: write each convolution's output to `h` for the backward.
const TRAIN: u32 = 0u;
// vec4s of the layer's parameter slice, and where (in floats) its convolutions start in it.
const WLEN: u32 = 240u;
const W_MID: u32 = 128u;
const W_MID_STRIDE: u32 = 640u;
const W_OUT: u32 = 768u;
// Floats of workgroup memory for activations: HID * V, twice when there are HID -> HID layers.
const HLEN: u32 = 1024u;

struct Params {
    batch: u32,
    // Checkerboard parity: mask(site) = parity_tbl[site] ^ parity, 1 = frozen.
    parity: u32,
    // In `h`: hidden convolution m writes [batch, HID, V] at m * h_stride, the last one
    // [batch, 2, V] (s and t after the final activation) at st_off.
    h_stride: u32,
    st_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> nbr: array<u32>;
@group(0) @binding(2) var<storage, read> parity_tbl: array<u32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> logq: array<f32>;
@group(0) @binding(6) var<storage, read_write> h: array<f32>;
@group(0) @binding(7) var<uniform> wu: array<vec4<f32>, WLEN>;

// The sample's activations: hidden outputs alternate between [0, HID V) and [HID V, 2 HID V).
var<workgroup> act: array<f32, HLEN>;

fn weight(i: u32) -> f32 {
    return wu[i >> 2u][i & 3u];
}

// The sites of thread `lid` in pass `s0`; past the lattice they repeat its last site (computed,
// never stored).
fn sites(s0: u32) -> array<u32, SPT> {
    var st: array<u32, SPT>;
    for (var k = 0u; k < SPT; k++) {
        st[k] = min(s0 + k * WG, V - 1u);
    }
    return st;
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.x;
    let xrow = b * V;

    // Convolution 0, 1 -> HID, on the masked input (read from memory: one channel).
    for (var s0 = lid; s0 < V; s0 += WG * SPT) {
        let st = sites(s0);
        var acc: array<f32, SPT * HID>;
        for (var co = 0u; co < HID; co++) {
            let bias = weight(HID * TAPS + co);
            for (var k = 0u; k < SPT; k++) {
                acc[k * HID + co] = bias;
            }
        }
        for (var t = 0u; t < TAPS; t++) {
            var v: array<f32, SPT>;
            for (var k = 0u; k < SPT; k++) {
                let n = nbr[st[k] * TAPS + t];
                v[k] = f32(parity_tbl[n] ^ p.parity) * x[xrow + n];
            }
            for (var co = 0u; co < HID; co++) {
                let w = weight(co * TAPS + t);
                for (var k = 0u; k < SPT; k++) {
                    acc[k * HID + co] = fma(w, v[k], acc[k * HID + co]);
                }
            }
        }
        for (var k = 0u; k < SPT; k++) {
            let s = s0 + k * WG;
            if s < V {
                for (var co = 0u; co < HID; co++) {
                    let a = activate(acc[k * HID + co], ACT_LEAKY);
                    act[co * V + s] = a;
                    if TRAIN == 1u {
                        h[(b * HID + co) * V + s] = a;
                    }
                }
            }
        }
    }
    workgroupBarrier();

    // Hidden convolutions HID -> HID: taps outside, input channels inside, so one neighbour
    // lookup serves every channel and each gathered value feeds HID multiply-adds.
    for (var m = 0u; m + 1u < NHID; m++) {
        let src = (m & 1u) * (HID * V);
        let dst = HID * V - src;
        let wo = W_MID + m * W_MID_STRIDE;
        for (var s0 = lid; s0 < V; s0 += WG * SPT) {
            let st = sites(s0);
            var acc: array<f32, SPT * HID>;
            for (var co = 0u; co < HID; co++) {
                let bias = weight(wo + HID * HID * TAPS + co);
                for (var k = 0u; k < SPT; k++) {
                    acc[k * HID + co] = bias;
                }
            }
            for (var t = 0u; t < TAPS; t++) {
                var n: array<u32, SPT>;
                for (var k = 0u; k < SPT; k++) {
                    n[k] = src + nbr[st[k] * TAPS + t];
                }
                for (var ci = 0u; ci < HID; ci++) {
                    var v: array<f32, SPT>;
                    for (var k = 0u; k < SPT; k++) {
                        v[k] = act[n[k] + ci * V];
                    }
                    let w = wo + ci * TAPS + t;
                    for (var co = 0u; co < HID; co++) {
                        let wv = weight(w + co * (HID * TAPS));
                        for (var k = 0u; k < SPT; k++) {
                            acc[k * HID + co] = fma(wv, v[k], acc[k * HID + co]);
                        }
                    }
                }
            }
            for (var k = 0u; k < SPT; k++) {
                let s = s0 + k * WG;
                if s < V {
                    for (var co = 0u; co < HID; co++) {
                        let a = activate(acc[k * HID + co], ACT_LEAKY);
                        act[dst + co * V + s] = a;
                        if TRAIN == 1u {
                            h[(m + 1u) * p.h_stride + (b * HID + co) * V + s] = a;
                        }
                    }
                }
            }
        }
        workgroupBarrier();
    }

    // The last convolution, HID -> 2, and the coupling at the same site:
    // y = x where frozen, x exp(s) + t elsewhere; log J sums s over the updated sites.
    let src = ((NHID - 1u) & 1u) * (HID * V);
    var part = 0.0;
    for (var s0 = lid; s0 < V; s0 += WG * SPT) {
        let st = sites(s0);
        var sv: array<f32, SPT>;
        var tv: array<f32, SPT>;
        for (var k = 0u; k < SPT; k++) {
            sv[k] = weight(W_OUT + 2u * HID * TAPS);
            tv[k] = weight(W_OUT + 2u * HID * TAPS + 1u);
        }
        for (var t = 0u; t < TAPS; t++) {
            var n: array<u32, SPT>;
            for (var k = 0u; k < SPT; k++) {
                n[k] = src + nbr[st[k] * TAPS + t];
            }
            for (var ci = 0u; ci < HID; ci++) {
                let w = W_OUT + ci * TAPS + t;
                let ws = weight(w);
                let wt = weight(w + HID * TAPS);
                for (var k = 0u; k < SPT; k++) {
                    let v = act[n[k] + ci * V];
                    sv[k] = fma(ws, v, sv[k]);
                    tv[k] = fma(wt, v, tv[k]);
                }
            }
        }
        for (var k = 0u; k < SPT; k++) {
            let s = s0 + k * WG;
            if s < V {
                let sa = activate(sv[k], ACT_OUT);
                let ta = activate(tv[k], ACT_OUT);
                if TRAIN == 1u {
                    h[p.st_off + 2u * xrow + s] = sa;
                    h[p.st_off + 2u * xrow + V + s] = ta;
                }
                let xv = x[xrow + s];
                if (parity_tbl[s] ^ p.parity) == 1u {
                    y[xrow + s] = xv;
                } else {
                    y[xrow + s] = fma(xv, exp(sa), ta);
                    part += sa;
                }
            }
        }
    }
    let total = tree_sum(lid, part);
    if lid == 0u {
        logq[b] -= total;
    }
}
