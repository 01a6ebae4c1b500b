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

fn mask_at(site: u32) -> f32 {
    return f32(parity_tbl[site] ^ p.parity);
}

// One thread per (sample, site), all COUT outputs: each gathered input feeds COUT FMAs.
@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = wid.x * WG + lid;
    let b = wid.y;
    if site >= p.volume {
        return;
    }
    let b_off = p.w_off + COUT * CIN * TAPS;
    var acc: array<f32, COUT>;
    for (var co = 0u; co < COUT; co++) {
        acc[co] = params[b_off + co];
    }
    let nb = site * TAPS;
    for (var ci = 0u; ci < CIN; ci++) {
        let xrow = (b * CIN + ci) * p.volume;
        let wrow = p.w_off + ci * TAPS;
        for (var t = 0u; t < TAPS; t++) {
            let n = nbr[nb + t];
            var v = x[xrow + n];
            if IN_MASK == 1u {
                v *= mask_at(n);
            }
            for (var co = 0u; co < COUT; co++) {
                acc[co] = fma(params[wrow + co * (CIN * TAPS) + t], v, acc[co]);
            }
        }
    }
    for (var co = 0u; co < COUT; co++) {
        y[(b * COUT + co) * p.volume + site] = activate(acc[co], ACT);
    }
}

// dx[ci, u] = sum_co sum_t W[co, ci, t] * gy[co, u - offset(t)]: one thread per (sample, site).
@compute @workgroup_size(WG)
fn backward_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = wid.x * WG + lid;
    let b = wid.y;
    if site >= p.volume {
        return;
    }
    var acc: array<f32, CIN>;
    for (var ci = 0u; ci < CIN; ci++) {
        acc[ci] = 0.0;
    }
    // nbr[site * TAPS + (TAPS - 1 - t)] is site - offset(t).
    let nb = site * TAPS + TAPS - 1u;
    for (var co = 0u; co < COUT; co++) {
        let grow = (b * COUT + co) * p.volume;
        let wrow = p.w_off + co * (CIN * TAPS);
        for (var t = 0u; t < TAPS; t++) {
            let g = gy[grow + nbr[nb - t]];
            for (var ci = 0u; ci < CIN; ci++) {
                acc[ci] = fma(params[wrow + ci * TAPS + t], g, acc[ci]);
            }
        }
    }
    for (var ci = 0u; ci < CIN; ci++) {
        let i = (b * CIN + ci) * p.volume + site;
        if MODE == 0u {
            gx[i] = acc[ci];
        } else if MODE == 1u {
            gx[i] = acc[ci] * activate_grad(x[i], ACT_IN);
        } else {
            gx[i] += acc[ci] * mask_at(site);
        }
    }
}

// Weight and bias gradients, stage 1: one thread per (weight, chunk of samples) writes a partial
// sum; stage 2 (reduce_weight) adds the chunks in a fixed order. Deterministic, no atomics.
@compute @workgroup_size(WG)
fn backward_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let w = wid.x * WG + lid;
    let chunk = wid.y;
    if w >= p.n_weights {
        return;
    }
    let n_kernel = COUT * CIN * TAPS;
    let b0 = chunk * p.chunk;
    let b1 = min(b0 + p.chunk, p.batch);
    var acc = 0.0;
    if w < n_kernel {
        // Division by compile-time constants, once per thread (not in the loop).
        let co = w / (CIN * TAPS);
        let r = w - co * (CIN * TAPS);
        let ci = r / TAPS;
        let t = r - ci * TAPS;
        for (var b = b0; b < b1; b++) {
            let grow = (b * COUT + co) * p.volume;
            let xrow = (b * CIN + ci) * p.volume;
            var nb = t;
            for (var s = 0u; s < p.volume; s++) {
                let n = nbr[nb];
                var v = x[xrow + n];
                if IN_MASK == 1u {
                    v *= mask_at(n);
                }
                acc = fma(gy[grow + s], v, acc);
                nb += TAPS;
            }
        }
    } else {
        let co = w - n_kernel;
        for (var b = b0; b < b1; b++) {
            let grow = (b * COUT + co) * p.volume;
            for (var s = 0u; s < p.volume; s++) {
                acc += gy[grow + s];
            }
        }
    }
    partial[chunk * p.n_weights + w] = acc;
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
