// z2.wgsl: the two element-wise steps that make a coupling odd in its input (Z2-equivariant) by
// symmetrising its net n: the net runs on a batch of 2B, the frozen field and its negative,
//   mirror:  xx[b] = x[b],  xx[B + b] = -x[b]          (b < B; [batch, site])
// and its outputs u = n(xx) [2B, 2, site] are combined into the coupling's (s, t) [B, 2, site]:
//   combine: s = (u_s[b] + u_s[B + b]) / 2  (even in x),  t = (u_t[b] - u_t[B + b]) / 2  (odd),
// so the flow is odd, f(-z) = -f(z), and with a symmetric prior q(-phi) = q(phi) exactly.
// Backward: combine_backward takes dL/d(s, t) to the pre-activation gradient of the net's last
// convolution (times act' per branch); mirror_backward adds the net's path into dL/dx, through
// the checkerboard mask the first convolution applied: gx[b] += mask (gxx[b] - gxx[B + b]).
// One thread per (site, sample); no integer division (the grid is [sites, batch]).

const WG: u32 = 64u;
// The net's final activation, whose derivative combine_backward applies per branch.
const ACT: u32 = 2u;
// Storage type of the net's outputs u and their gradient gu: f32, or f16 under `[device]
// precision = "f16"` ((s, t) and the field stay f32).
alias HS = f32;

struct Params {
    // B: the coupling's batch (the net's is 2B).
    batch: u32,
    volume: u32,
    parity: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> parity_tbl: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> xx: array<f32>;
@group(0) @binding(4) var<storage, read> u: array<HS>;
@group(0) @binding(5) var<storage, read_write> st: array<f32>;
// Backward: dL/d(s, t) (in), dL/du pre-activation (out), dL/dxx (in), dL/dx (added to).
@group(0) @binding(6) var<storage, read> gst: array<f32>;
@group(0) @binding(7) var<storage, read_write> gu: array<HS>;
@group(0) @binding(8) var<storage, read> gxx: array<f32>;
@group(0) @binding(9) var<storage, read_write> gx: array<f32>;

@compute @workgroup_size(WG)
fn mirror(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s = wid.x * WG + lid;
    if s >= p.volume {
        return;
    }
    let i = wid.y * p.volume + s;
    let v = x[i];
    xx[i] = v;
    xx[p.batch * p.volume + i] = -v;
}

@compute @workgroup_size(WG)
fn mirror_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s = wid.x * WG + lid;
    if s >= p.volume {
        return;
    }
    let i = wid.y * p.volume + s;
    let m = f32(parity_tbl[s] ^ p.parity);
    gx[i] += m * (gxx[i] - gxx[p.batch * p.volume + i]);
}

@compute @workgroup_size(WG)
fn combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s = wid.x * WG + lid;
    if s >= p.volume {
        return;
    }
    let b = wid.y;
    let pos = 2u * b * p.volume + s;
    let neg = 2u * (p.batch + b) * p.volume + s;
    st[pos] = 0.5 * (f32(u[pos]) + f32(u[neg]));
    st[pos + p.volume] = 0.5 * (f32(u[pos + p.volume]) - f32(u[neg + p.volume]));
}

@compute @workgroup_size(WG)
fn combine_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s = wid.x * WG + lid;
    if s >= p.volume {
        return;
    }
    let b = wid.y;
    let pos = 2u * b * p.volume + s;
    let neg = 2u * (p.batch + b) * p.volume + s;
    let gs = 0.5 * gst[pos];
    let gt = 0.5 * gst[pos + p.volume];
    gu[pos] = HS(gs * activate_grad(f32(u[pos]), ACT));
    gu[neg] = HS(gs * activate_grad(f32(u[neg]), ACT));
    gu[pos + p.volume] = HS(gt * activate_grad(f32(u[pos + p.volume]), ACT));
    gu[neg + p.volume] = HS(-gt * activate_grad(f32(u[neg + p.volume]), ACT));
}
