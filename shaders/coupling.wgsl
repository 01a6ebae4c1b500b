// coupling.wgsl: the affine coupling with a checkerboard mask (1 = frozen).
//   y = mask * x + (1 - mask) * (x * exp(s) + t),   log J = sum_x (1 - mask) * s,
// with (s, t) = channels 0 and 1 of the coupling net's output st [batch, 2, site].
// The flow keeps log q per sample in one buffer: the prior writes log r(z), each coupling
// subtracts its log J. One workgroup per sample; the log J sum is a fixed-order tree reduction.

// Power of two, at most 256 (workgroup memory: 4 * WG bytes).
const WG: u32 = 256u;
// The net's final activation (tanh, or none): backward applies its derivative to ds and dt.
const ACT: u32 = 2u;
// Storage type of the net's output (s, t) and its gradient: f32, or f16 under `[device]
// precision = "f16"` (y, log q and their sums stay f32).
alias HS = f32;

struct Params {
    batch: u32,
    volume: u32,
    parity: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> parity_tbl: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> st: array<HS>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> logq: array<f32>;
// Backward: gradients of y (in) and of x and st (out), and dL/dlog q per sample.
@group(0) @binding(6) var<storage, read> gy: array<f32>;
@group(0) @binding(7) var<storage, read_write> gx: array<f32>;
@group(0) @binding(8) var<storage, read_write> gst: array<HS>;
@group(0) @binding(9) var<storage, read> glogq: array<f32>;

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.x;
    let row = b * p.volume;
    let srow = 2u * row;
    var part = 0.0;
    for (var s = lid; s < p.volume; s += WG) {
        let xv = x[row + s];
        if (parity_tbl[s] ^ p.parity) == 1u {
            y[row + s] = xv;
        } else {
            let sv = f32(st[srow + s]);
            let tv = f32(st[srow + p.volume + s]);
            y[row + s] = fma(xv, exp(sv), tv);
            part += sv;
        }
    }
    let total = tree_sum(lid, part);
    if lid == 0u {
        logq[b] -= total;
    }
}

// dx = mask*dy + (1-mask)*dy*exp(s);  ds = (1-mask)*(dy*x*exp(s) - dL/dlog q);  dt = (1-mask)*dy,
// the last two times the final activation's derivative (the pre-activation gradient the net's
// last convolution expects). dx here is only the direct path; the net's path is added by the
// first convolution's backward_input (MODE 2).
@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.x;
    let row = b * p.volume;
    let srow = 2u * row;
    let gl = glogq[b];
    for (var s = lid; s < p.volume; s += WG) {
        let dy = gy[row + s];
        if (parity_tbl[s] ^ p.parity) == 1u {
            gx[row + s] = dy;
            gst[srow + s] = HS(0.0);
            gst[srow + p.volume + s] = HS(0.0);
        } else {
            let sv = f32(st[srow + s]);
            let tv = f32(st[srow + p.volume + s]);
            let e = exp(sv);
            gx[row + s] = dy * e;
            gst[srow + s] = HS((dy * x[row + s] * e - gl) * activate_grad(sv, ACT));
            gst[srow + p.volume + s] = HS(dy * activate_grad(tv, ACT));
        }
    }
}
