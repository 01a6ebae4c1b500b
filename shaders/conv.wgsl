// conv.wgsl: periodic (circular) convolution over an Nd-dimensional lattice, any odd kernel.
//
// Tensors are [batch, channel, site] f32. Neighbours come from a table built on the CPU,
// nbr[site * TAPS + t] = the site at offset t (row-major over the kernel window), so no shader
// does integer division or modulo. The reversed tap TAPS-1-t has the opposite offset.
// Weights are PyTorch's [COUT, CIN, TAPS] followed by the bias [COUT], at w_off in one flat
// parameter buffer. The constants below are specialised per layer by the launcher (the values
// here are defaults, so the file itself is valid WGSL).

const CIN: u32 = 8u;
const COUT: u32 = 8u;
const TAPS: u32 = 9u;
// Activation applied to this convolution's output (forward).
const ACT: u32 = 1u;
// 1: the input is masked by the coupling's checkerboard (the first convolution of a coupling).
const IN_MASK: u32 = 0u;
// backward_input epilogue: 0 write, 1 write times act'(input) with ACT_IN (so the result is the
// pre-activation gradient of the previous convolution), 2 add mask * result (CIN = 1).
const MODE: u32 = 0u;
const ACT_IN: u32 = 0u;
const WG: u32 = 64u;
// Samples per thread in forward and backward_input: each weight load feeds NB multiply-adds.
// 1 on GPUs (a warp broadcasts a uniform load for free); more on CPU adapters, where every
// lane's load of the same weight is a separate memory access.
const NB: u32 = 1u;
// 1: forward and backward_input read this layer's weights and bias through the uniform binding
// `wu` (its slice of the parameter buffer, WLEN vec4s): a uniform load with a uniform index is
// one scalar load on every adapter, where a storage load is a gather per lane on CPU adapters
// (measured on lavapipe: 9 -> 12.7 GFLOP/s). 0 for layers over 64 KiB.
const W_UBO: u32 = 0u;
const WLEN: u32 = 1u;

struct Params {
    batch: u32,
    volume: u32,
    // Offset of this convolution's weights in the flat parameter (and gradient) buffer.
    w_off: u32,
    // Checkerboard parity of the coupling: mask(site) = parity_tbl[site] ^ parity, 1 = frozen.
    parity: u32,
    // backward_weight: samples per chunk, and COUT*CIN*TAPS + COUT.
    chunk: u32,
    n_weights: u32,
    n_chunks: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> params: array<f32>;
@group(0) @binding(2) var<storage, read> nbr: array<u32>;
@group(0) @binding(3) var<storage, read> parity_tbl: array<u32>;
// The convolution's input (what the forward read; backward_input reads it for act').
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
// Gradient with respect to this convolution's pre-activation output.
@group(0) @binding(6) var<storage, read> gy: array<f32>;
@group(0) @binding(7) var<storage, read_write> gx: array<f32>;
@group(0) @binding(8) var<storage, read_write> partial: array<f32>;
@group(0) @binding(9) var<storage, read_write> grads: array<f32>;
@group(0) @binding(10) var<uniform> wu: array<vec4<f32>, WLEN>;

// Parameter i of this layer (weights [COUT, CIN, TAPS] then bias [COUT]).
fn weight(i: u32) -> f32 {
    if W_UBO == 1u {
        return wu[i >> 2u][i & 3u];
    }
    return params[p.w_off + i];
}

fn mask_at(site: u32) -> f32 {
    return f32(parity_tbl[site] ^ p.parity);
}

// One thread per (site, NB samples), all COUT outputs: each gathered input feeds COUT FMAs and
// each weight NB of them. Threads of the last block past the batch compute on the last sample
// and store nothing.
@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = wid.x * WG + lid;
    if site >= p.volume {
        return;
    }
    let b0 = wid.y * NB;
    var acc: array<f32, NB * COUT>;
    for (var co = 0u; co < COUT; co++) {
        let bias = weight(COUT * CIN * TAPS + co);
        for (var j = 0u; j < NB; j++) {
            acc[j * COUT + co] = bias;
        }
    }
    var xb: array<u32, NB>;
    for (var j = 0u; j < NB; j++) {
        xb[j] = min(b0 + j, p.batch - 1u) * CIN * p.volume;
    }
    let nb = site * TAPS;
    // Taps outside, channels inside: one neighbour lookup serves every input channel.
    for (var t = 0u; t < TAPS; t++) {
        let n = nbr[nb + t];
        var m = 1.0;
        if IN_MASK == 1u {
            m = mask_at(n);
        }
        for (var ci = 0u; ci < CIN; ci++) {
            var v: array<f32, NB>;
            for (var j = 0u; j < NB; j++) {
                v[j] = m * x[xb[j] + ci * p.volume + n];
            }
            let w = ci * TAPS + t;
            for (var co = 0u; co < COUT; co++) {
                let wv = weight(w + co * (CIN * TAPS));
                for (var j = 0u; j < NB; j++) {
                    acc[j * COUT + co] = fma(wv, v[j], acc[j * COUT + co]);
                }
            }
        }
    }
    for (var j = 0u; j < NB; j++) {
        let b = b0 + j;
        if b < p.batch {
            for (var co = 0u; co < COUT; co++) {
                y[(b * COUT + co) * p.volume + site] = activate(acc[j * COUT + co], ACT);
            }
        }
    }
}

// dx[ci, u] = sum_co sum_t W[co, ci, t] * gy[co, u - offset(t)]: one thread per (site, NB samples).
@compute @workgroup_size(WG)
fn backward_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = wid.x * WG + lid;
    if site >= p.volume {
        return;
    }
    let b0 = wid.y * NB;
    var acc: array<f32, NB * CIN>;
    var gb: array<u32, NB>;
    for (var j = 0u; j < NB; j++) {
        gb[j] = min(b0 + j, p.batch - 1u) * COUT * p.volume;
        for (var ci = 0u; ci < CIN; ci++) {
            acc[j * CIN + ci] = 0.0;
        }
    }
    // nbr[site * TAPS + (TAPS - 1 - t)] is site - offset(t).
    let nb = site * TAPS + TAPS - 1u;
    for (var t = 0u; t < TAPS; t++) {
        let n = nbr[nb - t];
        for (var co = 0u; co < COUT; co++) {
            var g: array<f32, NB>;
            for (var j = 0u; j < NB; j++) {
                g[j] = gy[gb[j] + co * p.volume + n];
            }
            let w = co * (CIN * TAPS) + t;
            for (var ci = 0u; ci < CIN; ci++) {
                let wv = weight(w + ci * TAPS);
                for (var j = 0u; j < NB; j++) {
                    acc[j * CIN + ci] = fma(wv, g[j], acc[j * CIN + ci]);
                }
            }
        }
    }
    for (var j = 0u; j < NB; j++) {
        let b = b0 + j;
        if b < p.batch {
            for (var ci = 0u; ci < CIN; ci++) {
                let i = (b * CIN + ci) * p.volume + site;
                if MODE == 0u {
                    gx[i] = acc[j * CIN + ci];
                } else if MODE == 1u {
                    gx[i] = acc[j * CIN + ci] * activate_grad(x[i], ACT_IN);
                } else {
                    gx[i] += acc[j * CIN + ci] * mask_at(site);
                }
            }
        }
    }
}

// Weight and bias gradients, stage 1: one thread per (block of COB output channels, input
// channel, row of TPT taps, chunk of samples) holds the TPT * COB weights that share its loads:
// TPT gathered inputs and COB output gradients feed TPT * COB FMAs (COB < COUT keeps wide layers
// in registers). Every thread also sums its block's dL/db (the same loads); the threads of the
// first (channel, row) write it. Each chunk writes a partial sum; stage 2 (reduce_weight) adds
// the chunks in a fixed order: deterministic, no atomics.
const TPT: u32 = 3u;
const COB: u32 = COUT;

@compute @workgroup_size(WG)
fn backward_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = wid.x * WG + lid;
    let chunk = wid.y;
    let rows = CIN * (TAPS / TPT);
    if k >= rows * (COUT / COB) {
        return;
    }
    // Division by compile-time constants, once per thread (not in the loop).
    let cb = k / rows;
    let r = k - cb * rows;
    let co0 = cb * COB;
    let ci = r / (TAPS / TPT);
    let t0 = (r - ci * (TAPS / TPT)) * TPT;
    let b0 = chunk * p.chunk;
    let b1 = min(b0 + p.chunk, p.batch);
    var acc: array<f32, TPT * COB>;
    var bias: array<f32, COB>;
    for (var i = 0u; i < TPT * COB; i++) {
        acc[i] = 0.0;
    }
    for (var co = 0u; co < COB; co++) {
        bias[co] = 0.0;
    }
    for (var s = 0u; s < p.volume; s++) {
        var n: array<u32, TPT>;
        var m: array<f32, TPT>;
        for (var j = 0u; j < TPT; j++) {
            n[j] = nbr[s * TAPS + t0 + j];
            m[j] = 1.0;
            if IN_MASK == 1u {
                m[j] = mask_at(n[j]);
            }
        }
        for (var b = b0; b < b1; b++) {
            let xrow = (b * CIN + ci) * p.volume;
            var v: array<f32, TPT>;
            for (var j = 0u; j < TPT; j++) {
                v[j] = m[j] * x[xrow + n[j]];
            }
            let grow = (b * COUT + co0) * p.volume + s;
            for (var co = 0u; co < COB; co++) {
                let g = gy[grow + co * p.volume];
                bias[co] += g;
                for (var j = 0u; j < TPT; j++) {
                    acc[co * TPT + j] = fma(g, v[j], acc[co * TPT + j]);
                }
            }
        }
    }
    let base = chunk * p.n_weights;
    for (var co = 0u; co < COB; co++) {
        for (var j = 0u; j < TPT; j++) {
            partial[base + (co0 + co) * (CIN * TAPS) + ci * TAPS + t0 + j] = acc[co * TPT + j];
        }
    }
    if r == 0u {
        for (var co = 0u; co < COB; co++) {
            partial[base + COUT * CIN * TAPS + co0 + co] = bias[co];
        }
    }
}

@compute @workgroup_size(WG)
fn reduce_weight(@builtin(global_invocation_id) gid: vec3<u32>) {
    let w = gid.x;
    if w >= p.n_weights {
        return;
    }
    var acc = 0.0;
    var i = w;
    for (var c = 0u; c < p.n_chunks; c++) {
        acc += partial[i];
        i += p.n_weights;
    }
    grads[p.w_off + w] = acc;
}
