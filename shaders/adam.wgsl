// adam.wgsl: Adam (Kingma & Ba; PyTorch's and Flux's form) over one flat parameter buffer:
//   m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2,
//   p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps),
// with t = state[0] + 1 read on the GPU, so a training step needs no host write.

const WG: u32 = 256u;

struct Params {
    n: u32,
    _pad: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    // ln(beta1), ln(beta2), computed on the host in f64.
    ln_beta1: f32,
    ln_beta2: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> state: array<u32>;
@group(0) @binding(2) var<storage, read_write> params: array<f32>;
@group(0) @binding(3) var<storage, read> grads: array<f32>;
@group(0) @binding(4) var<storage, read_write> m1: array<f32>;
@group(0) @binding(5) var<storage, read_write> m2: array<f32>;
@group(0) @binding(6) var<storage, read_write> state_rw: array<u32>;

// 1 - beta^t = -expm1(t ln beta). Written as 1 - pow(beta, t) it cancels: at t = 1 an f32 pow
// good to 1e-7 leaves 1 - 0.9 good to only 1e-6. The series keeps full relative accuracy.
fn one_minus_pow(ln_beta: f32, t: f32) -> f32 {
    let x = t * ln_beta;
    if x < -0.5 {
        return 1.0 - exp(x);
    }
    let series = x * (1.0 + x * (1.0 / 2.0 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (1.0 / 120.0
        + x * (1.0 / 720.0 + x * (1.0 / 5040.0 + x * (1.0 / 40320.0))))))));
    return -series;
}

@compute @workgroup_size(WG)
fn adam(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if i >= p.n {
        return;
    }
    let t = f32(state[0] + 1u);
    let g = grads[i];
    let m = p.beta1 * m1[i] + (1.0 - p.beta1) * g;
    let v = p.beta2 * m2[i] + (1.0 - p.beta2) * g * g;
    m1[i] = m;
    m2[i] = v;
    let bc1 = one_minus_pow(p.ln_beta1, t);
    let bc2 = one_minus_pow(p.ln_beta2, t);
    params[i] -= p.lr * (m / bc1) / (sqrt(v / bc2) + p.eps);
}

// End of a step: advance the counter that keys the prior's draws and Adam's t.
@compute @workgroup_size(1)
fn advance() {
    state_rw[0] += 1u;
}
