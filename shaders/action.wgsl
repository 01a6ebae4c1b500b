// action.wgsl: the lattice phi^4 action per sample, and its gradient.
//   S = sum_x [ (2 Nd + m^2) phi^2 + lam phi^4 - 2 sum_mu phi(x) phi(x + mu) ]
//   dS/dphi(x) = 2 (2 Nd + m^2) phi + 4 lam phi^3 - 2 sum_mu [phi(x + mu) + phi(x - mu)]
// hop[site * 2 ND + 2 mu] = x + mu, hop[site * 2 ND + 2 mu + 1] = x - mu (a CPU-built table).
// One workgroup per sample; the sum over sites is a fixed-order tree reduction.

const ND: u32 = 2u;
const WG: u32 = 256u;

struct Params {
    batch: u32,
    volume: u32,
    m2: f32,
    lam: f32,
    // action_grad writes scale * dS/dphi: dL/dS per sample (1/batch for the mean loss).
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> hop: array<u32>;
@group(0) @binding(2) var<storage, read> phi: array<f32>;
@group(0) @binding(3) var<storage, read_write> action_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> grad: array<f32>;

fn reduce_and_store(b: u32, lid: u32, part: f32) {
    let total = tree_sum(lid, part);
    if lid == 0u {
        action_out[b] = total;
    }
}

@compute @workgroup_size(WG)
fn action(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.x;
    let row = b * p.volume;
    let c2 = f32(2u * ND) + p.m2;
    var part = 0.0;
    for (var s = lid; s < p.volume; s += WG) {
        let v = phi[row + s];
        var fwd = 0.0;
        for (var mu = 0u; mu < ND; mu++) {
            fwd += phi[row + hop[(s * ND + mu) * 2u]];
        }
        let v2 = v * v;
        part += c2 * v2 + p.lam * v2 * v2 - 2.0 * v * fwd;
    }
    reduce_and_store(b, lid, part);
}

@compute @workgroup_size(WG)
fn action_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.x;
    let row = b * p.volume;
    let c2 = f32(2u * ND) + p.m2;
    var part = 0.0;
    for (var s = lid; s < p.volume; s += WG) {
        let v = phi[row + s];
        var fwd = 0.0;
        var both = 0.0;
        for (var mu = 0u; mu < ND; mu++) {
            let h = (s * ND + mu) * 2u;
            let f = phi[row + hop[h]];
            fwd += f;
            both += f + phi[row + hop[h + 1u]];
        }
        let v2 = v * v;
        part += c2 * v2 + p.lam * v2 * v2 - 2.0 * v * fwd;
        grad[row + s] = p.scale * (2.0 * c2 * v + 4.0 * p.lam * v2 * v - 2.0 * both);
    }
    reduce_and_store(b, lid, part);
}
