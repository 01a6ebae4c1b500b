// combi.wgsl: the backward of the mean that combines the branches of a combinational
// convolution (GomalizingFlow's Approx{Nd}DConv{Nd}C{r}). Its forward runs inside conv.wgsl
// (BR > 1), which writes each branch's output to row b of hb (at b * p.stride) and
//   AFTER = 1 (combi_activation "branch"): y = (1/BR) sum_b act(u_b);
//   AFTER = 0 ("last"):                     y = act((1/BR) sum_b u_b).
// Between two stages conv.wgsl's backward_input also applies this backward (MODE 4); this
// kernel is the net's last stage's, from the coupling's dL/dy (after the activation) to each
// branch's pre-activation gradient, ghb_b = dL/dy * act'(h_b or y) / BR (AFTER = 0: the same
// for every branch, so one row, hb unread). One thread per
// (site, row of [batch, channel]); the grid is [sites, rows], so no shader divides.

const WG: u32 = 64u;
const BR: u32 = 2u;
const ACT: u32 = 1u;
const AFTER: u32 = 1u;
const INV: f32 = 1.0 / f32(BR);
// Storage type of the activations and gradients: f32, or f16 under `[device] precision = "f16"`.
alias HS = f32;

struct Params {
    volume: u32,
    // Floats between two branches' rows of hb and ghb.
    stride: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> hb: array<HS>;
@group(0) @binding(2) var<storage, read> y: array<HS>;
@group(0) @binding(3) var<storage, read> gy: array<HS>;
@group(0) @binding(4) var<storage, read_write> ghb: array<HS>;

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s = wid.x * WG + lid;
    if s >= p.volume {
        return;
    }
    let i = wid.y * p.volume + s;
    let g = f32(gy[i]) * INV;
    var j = i;
    if AFTER == 1u {
        for (var b = 0u; b < BR; b++) {
            ghb[j] = HS(g * activate_grad(f32(hb[j]), ACT));
            j += p.stride;
        }
    } else {
        // One row serves every branch (stride 0).
        ghb[i] = HS(g * activate_grad(f32(y[i]), ACT));
    }
}
