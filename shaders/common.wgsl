// common.wgsl: prepended to every shader family (WGSL has no #include).
// Activations, and the Philox4x32-10 counter-based generator (Salmon et al., SC'11).

const ACT_NONE: u32 = 0u;
const ACT_LEAKY: u32 = 1u;
const ACT_TANH: u32 = 2u;
const LEAKY_SLOPE: f32 = 0.01;

// tanh that cannot overflow: exp(-2|x|) stays in (0, 1]. Near 0 the series keeps relative accuracy.
fn tanh_safe(x: f32) -> f32 {
    let ax = abs(x);
    let e = exp(-2.0 * ax);
    let big = (1.0 - e) / (1.0 + e);
    let x2 = ax * ax;
    let small = ax * (1.0 - x2 * (1.0 / 3.0 - x2 * (2.0 / 15.0)));
    return sign(x) * select(big, small, ax < 0.0625);
}

fn activate(x: f32, act: u32) -> f32 {
    if act == ACT_LEAKY {
        return select(LEAKY_SLOPE * x, x, x > 0.0);
    }
    if act == ACT_TANH {
        return tanh_safe(x);
    }
    return x;
}

// The activation's derivative written through its output y = act(x) (what the forward saved):
// LeakyReLU keeps the sign of x, and tanh' = 1 - y^2.
fn activate_grad(y: f32, act: u32) -> f32 {
    if act == ACT_LEAKY {
        return select(LEAKY_SLOPE, 1.0, y > 0.0);
    }
    if act == ACT_TANH {
        return 1.0 - y * y;
    }
    return 1.0;
}

// 32x32 -> 64-bit product as (hi, lo), from 16-bit halves: WGSL has no mulhi.
fn mulhilo(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    let hi = p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
    return vec2<u32>(hi, a * b);
}

fn philox4x32(counter: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = counter;
    var k = key;
    for (var round = 0u; round < 10u; round++) {
        let p0 = mulhilo(0xD2511F53u, c.x);
        let p1 = mulhilo(0xCD9E8D57u, c.z);
        c = vec4<u32>(p1.x ^ c.y ^ k.x, p1.y, p0.x ^ c.w ^ k.y, p0.y);
        k = k + vec2<u32>(0x9E3779B9u, 0xBB67AE85u);
    }
    return c;
}

// A uniform number in (0, 1] from the top 24 bits: never 0, so log() is finite.
fn uniform01(r: u32) -> f32 {
    return (f32(r >> 8u) + 1.0) * (1.0 / 16777216.0);
}

// Box-Muller: two independent standard normals from two uniforms in (0, 1].
fn box_muller(u1: f32, u2: f32) -> vec2<f32> {
    let r = sqrt(-2.0 * log(u1));
    let theta = 6.283185307179586 * u2;
    return vec2<f32>(r * cos(theta), r * sin(theta));
}

// Fixed-order tree reductions over the WG invocations of a workgroup (WG, a power of two, is
// each family's workgroup size). Deterministic: the same inputs give the same bits every run,
// which float atomics would not. Call from uniform control flow; the result is in every lane.
var<workgroup> red: array<f32, WG>;

fn tree_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var k = WG >> 1u; k > 0u; k >>= 1u) {
        if lid < k {
            red[lid] += red[lid + k];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

fn tree_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var k = WG >> 1u; k > 0u; k >>= 1u) {
        if lid < k {
            red[lid] = max(red[lid], red[lid + k]);
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}
