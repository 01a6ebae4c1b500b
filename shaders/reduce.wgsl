// reduce.wgsl: deterministic reductions without float atomics. Each sum is a fixed-order tree in
// one workgroup, so the same inputs give the same bits on every run.

const WG: u32 = 256u;

struct Params {
    // rows: number of rows; n: length of each row (row_sum); batch (loss).
    rows: u32,
    n: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b_in: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> grad: array<f32>;

// out[r] = scale * sum_i a[r * n + i]: one workgroup per row.
@compute @workgroup_size(WG)
fn row_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.x;
    let row = r * p.n;
    var part = 0.0;
    for (var i = lid; i < p.n; i += WG) {
        part += a[row + i];
    }
    let total = tree_sum(lid, part);
    if lid == 0u {
        out[r] = p.scale * total;
    }
}

// The reverse-KL loss of one batch and its metrics, in one workgroup:
//   out[0] = mean_b (log q + S)           (the loss)
//   out[1] = ESS per sample of the batch  exp(2 LSE(log w) - LSE(2 log w)) / batch
//   out[2] = max_b log w,  out[3] = mean_b log w,      log w = -(S + log q)
// and grad[b] = scale dL/dlog q_b = scale / batch for the backward pass (scale: the loss
// scale, 1 but under f16 storage, `TapeSpec::loss_scale`). a = log q, b_in = S.
@compute @workgroup_size(WG)
fn loss(@builtin(local_invocation_index) lid: u32) {
    let n = p.rows;
    var part = 0.0;
    var mx = -3.0e38;
    for (var i = lid; i < n; i += WG) {
        let lw = -(a[i] + b_in[i]);
        part += lw;
        mx = max(mx, lw);
        grad[i] = p.scale / f32(n);
    }
    let sum_lw = tree_sum(lid, part);
    let max_lw = tree_max(lid, mx);
    var s1 = 0.0;
    var s2 = 0.0;
    for (var i = lid; i < n; i += WG) {
        let e = exp(-(a[i] + b_in[i]) - max_lw);
        s1 += e;
        s2 += e * e;
    }
    let t1 = tree_sum(lid, s1);
    let t2 = tree_sum(lid, s2);
    if lid == 0u {
        out[0] = -sum_lw / f32(n);
        out[1] = t1 * t1 / (t2 * f32(n));
        out[2] = max_lw;
        out[3] = sum_lw / f32(n);
    }
}
