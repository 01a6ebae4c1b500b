// spline.wgsl: the rational-quadratic spline coupling with a checkerboard mask (1 = frozen),
// Durkan et al.'s neural spline transform on [-B, B] and the identity outside:
//   y = mask * x + (1 - mask) * g(x),   log J = sum_x (1 - mask) * log g'(x),
// where g at each active site is the monotone rational-quadratic spline with K bins whose
// widths (channels 0..K, softmax), heights (K..2K, softmax) and interior knot slopes
// (2K..3K-1, MIN_SLOPE + softplus(u + SLOPE_SHIFT)) are the net's output st [batch, 3K-1, site];
// the knots at -B and B have slope 1. A zero net output gives the identity map.
// The flow keeps log q per sample in one buffer: each coupling subtracts its log J. One
// workgroup per sample; the log J sum is a fixed-order tree reduction.
// The CPU reference, which this follows term by term: src/kernels/spline.rs.

// Power of two, at most 256 (workgroup memory: 4 * WG bytes).
const WG: u32 = 256u;
// K, the bins.
const K: u32 = 8u;
// The net's final activation (tanh, or none): backward applies its derivative to every channel.
const ACT: u32 = 2u;
// Storage type of the net's output and its gradient: f32, or f16 under `[device] precision =
// "f16"` (y, log q and their sums stay f32).
alias HS = f32;

// Net output channels per site.
const C: u32 = 3u * K - 1u;
// The smallest bin width and height as a fraction of 2B, and the smallest knot slope.
const MIN_BIN: f32 = 1e-3;
const MIN_SLOPE: f32 = 1e-3;
// ln(e^(1 - MIN_SLOPE) - 1): a zero output gives slope MIN_SLOPE + softplus(SLOPE_SHIFT) = 1.
const SLOPE_SHIFT: f32 = 0.539742417236952;

struct Params {
    batch: u32,
    volume: u32,
    parity: u32,
    // B: the spline covers [-B, B].
    bound: f32,
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

fn softplus(u: f32) -> f32 {
    return select(log(1.0 + exp(u)), u, u > 20.0);
}

fn sigmoid(u: f32) -> f32 {
    return 1.0 / (1.0 + exp(-u));
}

// One site's spline where it holds x: the bin b holding x, its left knot (xk, yk), width w,
// height h and end slopes d0, d1; the widths' and heights' softmax maxima and inverse sums,
// from which `prob` recomputes any bin's probability (no per-site arrays: loops of
// compile-time length K over registers); and the rational quadratic's terms at x:
// xi = (x - xk) / w, sl = h / w, om = xi (1 - xi), y = yk + h num / den,
// dy/dx = sl^2 m / den^2.
struct Bin {
    b: u32,
    xk: f32,
    yk: f32,
    w: f32,
    h: f32,
    d0: f32,
    d1: f32,
    mw: f32,
    mh: f32,
    isw: f32,
    ish: f32,
    iw: f32,
    sl: f32,
    xi: f32,
    om: f32,
    num: f32,
    den: f32,
    m: f32,
}

// The slope at interior knot i (1 <= i < K) from channel 2K + i - 1 at `base`, 1 at the ends.
fn slope(base: u32, i: u32) -> f32 {
    if i == 0u || i == K {
        return 1.0;
    }
    let u = f32(st[base + (2u * K + i - 1u) * p.volume]);
    return MIN_SLOPE + softplus(u + SLOPE_SHIFT);
}

// Softmax probability of channel `c` at `base` with maximum m and inverse sum is.
fn prob(base: u32, c: u32, m: f32, is: f32) -> f32 {
    return exp(f32(st[base + c * p.volume]) - m) * is;
}

// `base` = the site's channel 0 in st: (sample * C) * V + site; channel c is at base + c * V.
fn evaluate(xv: f32, base: u32) -> Bin {
    var r: Bin;
    let v = p.volume;
    r.mw = -3.0e38;
    r.mh = -3.0e38;
    for (var j = 0u; j < K; j++) {
        r.mw = max(r.mw, f32(st[base + j * v]));
        r.mh = max(r.mh, f32(st[base + (K + j) * v]));
    }
    var sw = 0.0;
    var sh = 0.0;
    for (var j = 0u; j < K; j++) {
        sw += exp(f32(st[base + j * v]) - r.mw);
        sh += exp(f32(st[base + (K + j) * v]) - r.mh);
    }
    r.isw = 1.0 / sw;
    r.ish = 1.0 / sh;
    let bound = p.bound;
    let lo = 2.0 * bound * MIN_BIN;
    let scale = 2.0 * bound * (1.0 - f32(K) * MIN_BIN);
    // Bin b is the last whose left knot is at or left of x (x > -B: bin 0's is -B).
    var cx = -bound;
    var cy = -bound;
    for (var j = 0u; j < K; j++) {
        let wj = lo + scale * prob(base, j, r.mw, r.isw);
        let hj = lo + scale * prob(base, K + j, r.mh, r.ish);
        if j == 0u || cx <= xv {
            r.b = j;
            r.xk = cx;
            r.yk = cy;
            r.w = wj;
            r.h = hj;
        }
        cx += wj;
        cy += hj;
    }
    r.d0 = slope(base, r.b);
    r.d1 = slope(base, r.b + 1u);
    r.iw = 1.0 / r.w;
    r.sl = r.h * r.iw;
    r.xi = (xv - r.xk) * r.iw;
    r.om = r.xi * (1.0 - r.xi);
    r.num = r.sl * r.xi * r.xi + r.d0 * r.om;
    r.den = r.sl + (r.d0 + r.d1 - 2.0 * r.sl) * r.om;
    r.m = r.d1 * r.xi * r.xi + 2.0 * r.sl * r.om + r.d0 * (1.0 - r.xi) * (1.0 - r.xi);
    return r;
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.x;
    let row = b * p.volume;
    let crow = C * row;
    var part = 0.0;
    for (var s = lid; s < p.volume; s += WG) {
        let xv = x[row + s];
        let moving = (parity_tbl[s] ^ p.parity) == 0u;
        if !moving || xv <= -p.bound || xv >= p.bound {
            y[row + s] = xv;
        } else {
            let r = evaluate(xv, crow + s);
            y[row + s] = r.yk + r.h * r.num * (1.0 / r.den);
            part += 2.0 * log(r.sl) + log(r.m) - 2.0 * log(r.den);
        }
    }
    let total = tree_sum(lid, part);
    if lid == 0u {
        logq[b] -= total;
    }
}

// dx (direct path only: the net's path is added by the first convolution's backward_input)
// and d(st) before the final activation, from dy and dL/dlog J = -dL/dlog q. Frozen sites and
// sites outside [-B, B] pass dy through and give the net nothing.
@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.x;
    let row = b * p.volume;
    let crow = C * row;
    let v = p.volume;
    let gj = -glogq[b];
    for (var s = lid; s < v; s += WG) {
        let xv = x[row + s];
        let dy = gy[row + s];
        let base = crow + s;
        let moving = (parity_tbl[s] ^ p.parity) == 0u;
        if !moving || xv <= -p.bound || xv >= p.bound {
            gx[row + s] = dy;
            for (var c = 0u; c < C; c++) {
                gst[base + c * v] = HS(0.0);
            }
            continue;
        }
        let r = evaluate(xv, base);
        let iw = r.iw; let sl = r.sl; let xi = r.xi; let om = r.om;
        let num = r.num; let den = r.den; let m = r.m;
        let iden = 1.0 / den;
        let im = 1.0 / m;
        let iden2 = iden * iden;
        // Partials in xi, the bin's slope ratio sl = h / w and its end slopes.
        let num_xi = 2.0 * sl * xi + r.d0 * (1.0 - 2.0 * xi);
        let den_xi = (r.d0 + r.d1 - 2.0 * sl) * (1.0 - 2.0 * xi);
        let m_xi = 2.0 * r.d1 * xi + 2.0 * sl * (1.0 - 2.0 * xi) - 2.0 * r.d0 * (1.0 - xi);
        let g_xi = dy * r.h * (num_xi * den - num * den_xi) * iden2
            + gj * (m_xi * im - 2.0 * den_xi * iden);
        let g_s = dy * r.h * (xi * xi * den - num * (1.0 - 2.0 * om)) * iden2
            + gj * (2.0 * r.w / r.h + 2.0 * om * im - 2.0 * (1.0 - 2.0 * om) * iden);
        let g_d0 = dy * r.h * om * (den - num) * iden2
            + gj * ((1.0 - xi) * (1.0 - xi) * im - 2.0 * om * iden);
        let g_d1 = -dy * r.h * num * om * iden2 + gj * (xi * xi * im - 2.0 * om * iden);
        gx[row + s] = g_xi * iw;
        // To the left knot (the widths and heights of the bins before b) and bin b's own.
        let g_left = -g_xi * iw;
        let g_w = -(g_xi * xi + g_s * sl) * iw;
        let g_h = dy * num * iden + g_s * iw;
        // Through the softmaxes: dL/du_j = c p_j (dL/dw_j - sum_i p_i dL/dw_i), where
        // dL/dw_j is g_left left of bin b, g_w at b and 0 right of it (heights: dy, g_h).
        var mean_w = 0.0;
        var mean_h = 0.0;
        for (var j = 0u; j < K; j++) {
            let gwj = select(select(0.0, g_w, j == r.b), g_left, j < r.b);
            let ghj = select(select(0.0, g_h, j == r.b), dy, j < r.b);
            mean_w += prob(base, j, r.mw, r.isw) * gwj;
            mean_h += prob(base, K + j, r.mh, r.ish) * ghj;
        }
        let scale = 2.0 * p.bound * (1.0 - f32(K) * MIN_BIN);
        for (var j = 0u; j < K; j++) {
            let gwj = select(select(0.0, g_w, j == r.b), g_left, j < r.b);
            let ghj = select(select(0.0, g_h, j == r.b), dy, j < r.b);
            let uw = f32(st[base + j * v]);
            let uh = f32(st[base + (K + j) * v]);
            let pw = exp(uw - r.mw) * r.isw;
            let ph = exp(uh - r.mh) * r.ish;
            gst[base + j * v] = HS(scale * pw * (gwj - mean_w) * activate_grad(uw, ACT));
            gst[base + (K + j) * v] = HS(scale * ph * (ghj - mean_h) * activate_grad(uh, ACT));
        }
        // Interior slopes: only bin b's two ends depend on theirs.
        for (var i = 1u; i < K; i++) {
            let ch = base + (2u * K + i - 1u) * v;
            let u = f32(st[ch]);
            let gd = select(0.0, g_d0, i == r.b) + select(0.0, g_d1, i == r.b + 1u);
            gst[ch] = HS(gd * sigmoid(u + SLOPE_SHIFT) * activate_grad(u, ACT));
        }
    }
}
