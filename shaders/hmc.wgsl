// hmc.wgsl: Hybrid Monte Carlo for many independent chains side by side (one per sample row of
// [chains, site] buffers). Leapfrog on H = S(phi) + sum p^2 / 2:
//   kick:  p -= a * eps * dS/dphi   (a = 1/2 at the ends of a trajectory, 1 inside)
//   drift: phi += eps * p
// then a Metropolis test per chain on exp(H_start - H_end), restoring phi where it rejects.
// Momenta are drawn by the prior kernel (standard normal, with log r giving the kinetic
// energy); dS/dphi and S come from the action kernel.

const WG: u32 = 256u;

struct Params {
    // chains * volume (kick, drift), or volume (kinetic, metropolis).
    n: u32,
    volume: u32,
    // Philox key and stream of the accept/reject uniforms.
    key_lo: u32,
    key_hi: u32,
    stream: u32,
    _pad0: u32,
    // kick: a * eps; drift: eps.
    step: f32,
    _pad1: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> phi: array<f32>;
@group(0) @binding(2) var<storage, read_write> mom: array<f32>;
@group(0) @binding(3) var<storage, read> grad: array<f32>;
// Per chain: S at the start and at the end of the trajectory; kinetic energy at the start
// (from the momentum draw's log r) and at the end.
@group(0) @binding(4) var<storage, read> s_start: array<f32>;
@group(0) @binding(5) var<storage, read> s_end: array<f32>;
@group(0) @binding(6) var<storage, read> logr_start: array<f32>;
@group(0) @binding(7) var<storage, read_write> kinetic_end: array<f32>;
// phi at the start of the trajectory (restored on reject, refreshed on accept).
@group(0) @binding(8) var<storage, read_write> phi_saved: array<f32>;
// Per chain: 1 if the last trajectory was accepted; counter[0] = trajectory index.
@group(0) @binding(9) var<storage, read_write> accepted: array<u32>;
@group(0) @binding(10) var<storage, read> counter: array<u32>;

var<workgroup> decision: u32;

fn linear(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn kick(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear(wid, nwg, lid);
    if i < p.n {
        mom[i] -= p.step * grad[i];
    }
}

@compute @workgroup_size(WG)
fn drift(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = linear(wid, nwg, lid);
    if i < p.n {
        phi[i] += p.step * mom[i];
    }
}

// sum p^2 / 2 per chain: one workgroup per chain, a fixed-order tree.
@compute @workgroup_size(WG)
fn kinetic(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = wid.x;
    let row = c * p.volume;
    var part = 0.0;
    for (var s = lid; s < p.volume; s += WG) {
        let v = mom[row + s];
        part += 0.5 * v * v;
    }
    let total = tree_sum(lid, part);
    if lid == 0u {
        kinetic_end[c] = total;
    }
}

// Accept the trajectory of chain c with probability min(1, exp(H_start - H_end)), where the
// start kinetic energy is -(log r + V ln(2 pi) / 2) of the standard-normal momentum draw.
@compute @workgroup_size(WG)
fn metropolis(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = wid.x;
    if lid == 0u {
        let k0 = -(logr_start[c] + f32(p.volume) * 0.91893853320467274);
        let dh = (s_end[c] + kinetic_end[c]) - (s_start[c] + k0);
        let r = philox4x32(vec4<u32>(c, counter[0], 0u, p.stream), vec2<u32>(p.key_lo, p.key_hi));
        // Accept if u < exp(-dH), u in (0, 1]; NaN energies reject.
        let acc = dh <= 0.0 || log(uniform01(r.x)) < -dh;
        decision = select(0u, 1u, acc);
        accepted[c] = decision;
    }
    workgroupBarrier();
    let acc = decision;
    let row = c * p.volume;
    for (var s = lid; s < p.volume; s += WG) {
        if acc == 1u {
            phi_saved[row + s] = phi[row + s];
        } else {
            phi[row + s] = phi_saved[row + s];
        }
    }
}
