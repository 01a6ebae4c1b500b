// coupling_layer.wgsl: a whole affine coupling layer in one dispatch each way.
// forward: one sample per workgroup: the net's convolutions [1 -> HID -> ... -> HID -> 2] with
// their activations, then the coupling and its log J (the same arithmetic as conv.wgsl's and
// coupling.wgsl's forwards, in the same order). The sample's hidden activations stay in
// workgroup memory between convolutions, so the layer costs one launch instead of n_convs + 1,
// and an inference tape writes nothing to memory but y and log q. A training tape (TRAIN = 1)
// also stores every convolution's output for the backward.
// backward (below): the layer's gradients for a chunk of samples per workgroup, then `reduce`.
// A symmetrised coupling (Z2 = 1, as z2.wgsl's mirror and combine) runs the net twice per
// sample, on mask * x (copy 0) and on -mask * x (copy 1), and couples with
// s = (s0 + s1) / 2, t = (t0 - t1) / 2; its activations in `h` are those of a net batch of 2B,
// copy 1 of sample b at row B + b (the per-kernel path's layout).
//
// A combinational net (BR > 1, as conv.wgsl's): every stage is BR branches (index c), each
// with its own taps and weights, and the stage's output is their mean.
//
// Conventions as conv.wgsl: neighbours from nbr[(site * BR + c) * TAPS + t]; weights
// [COUT, CIN, TAPS] then bias [COUT] per convolution (per branch), read through the uniform
// binding `wu` (the layer's slice of the parameter buffer). The constants are specialised by
// the launcher.

// Sites of the lattice, taps of the kernel window (of each branch), hidden width, hidden
// convolutions.
const V: u32 = 64u;
const TAPS: u32 = 9u;
const HID: u32 = 8u;
// The net is 1 -> HID, then NHID - 1 convolutions HID -> HID, then HID -> 2.
const NHID: u32 = 2u;
// The net's final activation (tanh or none); the hidden ones are LeakyReLU.
const ACT_OUT: u32 = 2u;
// Threads per workgroup: a power of two (the log J tree sum), at most 256.
const WG: u32 = 64u;
// Sites per thread: thread lid takes sites lid, lid + WG, ..., lid + (SPT - 1) WG, so each
// weight load feeds SPT multiply-adds (1 on GPUs, where a uniform load is broadcast for free;
// more on CPU adapters, where it is not: as NB in conv.wgsl).
const SPT: u32 = 1u;
// Backward: taps per weight-gradient thread (a divisor of TAPS: 1, or a row of the window on
// CPU adapters, where each gathered input then feeds TPT * channels multiply-adds).
const TPT: u32 = 1u;
const ROWS: u32 = TAPS / TPT;
// 1: write each convolution's output to `h` for the backward.
const TRAIN: u32 = 0u;
// 1: a symmetrised (odd) coupling: copies 0 and 1 above.
const Z2: u32 = 0u;
// vec4s of the layer's parameter slice, and where (in floats) its convolutions start in it.
const WLEN: u32 = 240u;
const W_MID: u32 = 128u;
const W_MID_STRIDE: u32 = 640u;
const W_OUT: u32 = 768u;
// Floats of workgroup memory for activations: HID * V, twice when there are HID -> HID layers.
const HLEN: u32 = 1024u;

// Backward: floats of the layer's parameter slice from its first weight to its last bias
// (padding between convolutions included: its gradient stays 0).
const WSPAN: u32 = 914u;
// Combinational nets: branches per stage (1: a plain net); the floats between two branches'
// parameter slices in the first, the hidden and the last stage; where the mean is taken (1:
// after each branch's activation, GomalizingFlow's "branch"; 0: before the stage's one).
const BR: u32 = 1u;
const WS0: u32 = 0u;
const WSM: u32 = 0u;
const WSO: u32 = 0u;
const AFTER: u32 = 1u;
const INV: f32 = 1.0 / f32(BR);
// 1: training keeps every branch's activated output in `h` after the stages' (BR > 1,
// AFTER = 1), whose derivative the backward needs: hidden stage m's branch c at
// hb_hidden(m, c), the last stage's at hb_last(c), each [net batch, channels, V].
const KEEP: u32 = 0u;
// Backward: floats of workgroup memory for one branch's pre-activation gradient (max(HID, 2)
// V where BR > 1; 1 otherwise).
const GB: u32 = 1u;
// Storage type of the activations (`act` in workgroup memory, `h` in memory): f32, or f16
// under `[device] precision = "f16"`. The net's (s, t) are rounded to it before the coupling
// uses them, as the per-kernel path stores them. Gradients and every sum stay f32.
alias HS = f32;

struct Params {
    batch: u32,
    // Checkerboard parity: mask(site) = parity_tbl[site] ^ parity, 1 = frozen.
    parity: u32,
    // In `h`: hidden convolution m writes [batch, HID, V] at m * h_stride, the last one
    // [batch, 2, V] (s and t after the final activation) at st_off.
    h_stride: u32,
    st_off: u32,
    // Backward: samples per workgroup, workgroups, and the layer's offset in `grads`.
    chunk: u32,
    n_chunks: u32,
    w_first: u32,
    // KEEP = 1: where the branches' outputs start in `h`.
    hb_off: u32,
    // reduce: 1 / the loss scale (`TapeSpec::loss_scale`: 1 but under f16 storage).
    unscale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> nbr: array<u32>;
@group(0) @binding(2) var<storage, read> parity_tbl: array<u32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> logq: array<f32>;
@group(0) @binding(6) var<storage, read_write> h: array<HS>;
@group(0) @binding(7) var<uniform> wu: array<vec4<f32>, WLEN>;
// Backward: dL/dy and dL/dlog q (in), dL/dx (out), per-workgroup weight-gradient sums, and
// the flat parameter gradient.
@group(0) @binding(8) var<storage, read> gy: array<f32>;
@group(0) @binding(9) var<storage, read_write> gx: array<f32>;
@group(0) @binding(10) var<storage, read> glogq: array<f32>;
@group(0) @binding(11) var<storage, read_write> partial: array<f32>;
@group(0) @binding(12) var<storage, read_write> grads: array<f32>;

// The sample's activations: hidden outputs alternate between [0, HID V) and [HID V, 2 HID V).
var<workgroup> act: array<HS, HLEN>;
// A symmetrised layer: copy 0's (s, t), until copy 1 combines them.
var<workgroup> st0: array<f32, 2u * V * Z2 + 1u>;

fn weight(i: u32) -> f32 {
    return wu[i >> 2u][i & 3u];
}

// Branch outputs as their stage's mean adds them: activated where the mean is taken after the
// activation; a plain net's one convolution stays raw until `stage_out`.
fn branch_out(v: f32, a: u32) -> f32 {
    if BR > 1u && AFTER == 1u {
        return activate(v, a);
    }
    return v;
}

// A stage's output from the sum of its branches' `branch_out`.
fn stage_out(sum: f32, a: u32) -> f32 {
    if BR == 1u {
        return activate(sum, a);
    }
    if AFTER == 1u {
        return sum * INV;
    }
    return activate(sum * INV, a);
}

// The factor a stage's output gradient takes on its way back through the stage's activation:
// act' of the output, except where each branch is activated (each branch's own act' comes
// with its gradient, `conv_backward`).
fn out_grad(y: f32, a: u32) -> f32 {
    if BR > 1u && AFTER == 1u {
        return 1.0;
    }
    return activate_grad(y, a);
}

// Branch c's outputs `acc` of a hidden stage (thread sites from s0) into the stage's running
// `sum`; with KEEP, each also to h[keep_at + co V + s].
fn fold_branch(
    c: u32,
    s0: u32,
    keep_at: u32,
    acc: ptr<function, array<f32, SPT * HID>>,
    sum: ptr<function, array<f32, SPT * HID>>,
) {
    for (var k = 0u; k < SPT; k++) {
        let s = s0 + k * WG;
        for (var co = 0u; co < HID; co++) {
            let o = branch_out((*acc)[k * HID + co], ACT_LEAKY);
            if c == 0u {
                (*sum)[k * HID + co] = o;
            } else {
                (*sum)[k * HID + co] += o;
            }
            if KEEP == 1u && s < V {
                h[keep_at + co * V + s] = HS(o);
            }
        }
    }
}

// Where `h` keeps hidden stage m's branch c and the last stage's branch c (`KEEP`).
fn hb_hidden(m: u32, c: u32) -> u32 {
    return p.hb_off + (m * BR + c) * (p.batch * (1u + Z2) * HID * V);
}
fn hb_last(c: u32) -> u32 {
    let rows = p.batch * (1u + Z2);
    return p.hb_off + NHID * BR * rows * HID * V + c * rows * 2u * V;
}

// The sites of thread `lid` in pass `s0`; past the lattice they repeat its last site (computed,
// never stored).
fn sites(s0: u32) -> array<u32, SPT> {
    var st: array<u32, SPT>;
    for (var k = 0u; k < SPT; k++) {
        st[k] = min(s0 + k * WG, V - 1u);
    }
    return st;
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.x;
    let xrow = b * V;
    var part = 0.0;
    for (var br = 0u; br <= Z2; br++) {
        // The net's sample (its batch row) and the sign of its input: x, or -x in copy 1.
        let nb = b + br * p.batch;
        let sign = 1.0 - 2.0 * f32(br);

        // Convolution 0, 1 -> HID, on the masked input (read from memory: one channel).
        for (var s0 = lid; s0 < V; s0 += WG * SPT) {
            let st = sites(s0);
            var acc: array<f32, SPT * HID>;
            // The sum of the stage's branches (a plain net: the one convolution).
            var sum: array<f32, SPT * HID>;
            for (var c = 0u; c < BR; c++) {
                let wb = c * WS0;
                for (var co = 0u; co < HID; co++) {
                    let bias = weight(wb + HID * TAPS + co);
                    for (var k = 0u; k < SPT; k++) {
                        acc[k * HID + co] = bias;
                    }
                }
                for (var t = 0u; t < TAPS; t++) {
                    var v: array<f32, SPT>;
                    for (var k = 0u; k < SPT; k++) {
                        let n = nbr[(st[k] * BR + c) * TAPS + t];
                        v[k] = sign * (f32(parity_tbl[n] ^ p.parity) * x[xrow + n]);
                    }
                    for (var co = 0u; co < HID; co++) {
                        let w = weight(wb + co * TAPS + t);
                        for (var k = 0u; k < SPT; k++) {
                            acc[k * HID + co] = fma(w, v[k], acc[k * HID + co]);
                        }
                    }
                }
                fold_branch(c, s0, hb_hidden(0u, c) + nb * HID * V, &acc, &sum);
            }
            for (var k = 0u; k < SPT; k++) {
                let s = s0 + k * WG;
                if s < V {
                    for (var co = 0u; co < HID; co++) {
                        let a = stage_out(sum[k * HID + co], ACT_LEAKY);
                        act[co * V + s] = HS(a);
                        if TRAIN == 1u {
                            h[(nb * HID + co) * V + s] = HS(a);
                        }
                    }
                }
            }
        }
        workgroupBarrier();

        // Hidden convolutions HID -> HID: taps outside, input channels inside, so one neighbour
        // lookup serves every channel and each gathered value feeds HID multiply-adds.
        for (var m = 0u; m + 1u < NHID; m++) {
            let src = (m & 1u) * (HID * V);
            let dst = HID * V - src;
            let wo = W_MID + m * W_MID_STRIDE;
            for (var s0 = lid; s0 < V; s0 += WG * SPT) {
                let st = sites(s0);
                var acc: array<f32, SPT * HID>;
                var sum: array<f32, SPT * HID>;
                for (var c = 0u; c < BR; c++) {
                    let wb = wo + c * WSM;
                    for (var co = 0u; co < HID; co++) {
                        let bias = weight(wb + HID * HID * TAPS + co);
                        for (var k = 0u; k < SPT; k++) {
                            acc[k * HID + co] = bias;
                        }
                    }
                    for (var t = 0u; t < TAPS; t++) {
                        var n: array<u32, SPT>;
                        for (var k = 0u; k < SPT; k++) {
                            n[k] = src + nbr[(st[k] * BR + c) * TAPS + t];
                        }
                        for (var ci = 0u; ci < HID; ci++) {
                            var v: array<f32, SPT>;
                            for (var k = 0u; k < SPT; k++) {
                                v[k] = f32(act[n[k] + ci * V]);
                            }
                            let w = wb + ci * TAPS + t;
                            for (var co = 0u; co < HID; co++) {
                                let wv = weight(w + co * (HID * TAPS));
                                for (var k = 0u; k < SPT; k++) {
                                    acc[k * HID + co] = fma(wv, v[k], acc[k * HID + co]);
                                }
                            }
                        }
                    }
                    fold_branch(c, s0, hb_hidden(m + 1u, c) + nb * HID * V, &acc, &sum);
                }
                for (var k = 0u; k < SPT; k++) {
                    let s = s0 + k * WG;
                    if s < V {
                        for (var co = 0u; co < HID; co++) {
                            let a = stage_out(sum[k * HID + co], ACT_LEAKY);
                            act[dst + co * V + s] = HS(a);
                            if TRAIN == 1u {
                                h[(m + 1u) * p.h_stride + (nb * HID + co) * V + s] = HS(a);
                            }
                        }
                    }
                }
            }
            workgroupBarrier();
        }

        // The last convolution, HID -> 2, and the coupling at the same site:
        // y = x where frozen, x exp(s) + t elsewhere; log J sums s over the updated sites.
        let src = ((NHID - 1u) & 1u) * (HID * V);
        for (var s0 = lid; s0 < V; s0 += WG * SPT) {
            let st = sites(s0);
            var sv: array<f32, SPT>;
            var tv: array<f32, SPT>;
            var ssum: array<f32, SPT>;
            var tsum: array<f32, SPT>;
            for (var c = 0u; c < BR; c++) {
                let wb = W_OUT + c * WSO;
                for (var k = 0u; k < SPT; k++) {
                    sv[k] = weight(wb + 2u * HID * TAPS);
                    tv[k] = weight(wb + 2u * HID * TAPS + 1u);
                }
                for (var t = 0u; t < TAPS; t++) {
                    var n: array<u32, SPT>;
                    for (var k = 0u; k < SPT; k++) {
                        n[k] = src + nbr[(st[k] * BR + c) * TAPS + t];
                    }
                    for (var ci = 0u; ci < HID; ci++) {
                        let w = wb + ci * TAPS + t;
                        let ws = weight(w);
                        let wt = weight(w + HID * TAPS);
                        for (var k = 0u; k < SPT; k++) {
                            let v = f32(act[n[k] + ci * V]);
                            sv[k] = fma(ws, v, sv[k]);
                            tv[k] = fma(wt, v, tv[k]);
                        }
                    }
                }
                for (var k = 0u; k < SPT; k++) {
                    let s = s0 + k * WG;
                    let so = branch_out(sv[k], ACT_OUT);
                    let to = branch_out(tv[k], ACT_OUT);
                    if c == 0u {
                        ssum[k] = so;
                        tsum[k] = to;
                    } else {
                        ssum[k] += so;
                        tsum[k] += to;
                    }
                    if KEEP == 1u && s < V {
                        h[hb_last(c) + 2u * nb * V + s] = HS(so);
                        h[hb_last(c) + 2u * nb * V + V + s] = HS(to);
                    }
                }
            }
            for (var k = 0u; k < SPT; k++) {
                let s = s0 + k * WG;
                if s < V {
                    var sa = f32(HS(stage_out(ssum[k], ACT_OUT)));
                    var ta = f32(HS(stage_out(tsum[k], ACT_OUT)));
                    if TRAIN == 1u {
                        h[p.st_off + 2u * nb * V + s] = HS(sa);
                        h[p.st_off + 2u * nb * V + V + s] = HS(ta);
                    }
                    if br < Z2 {
                        st0[s] = sa;
                        st0[V + s] = ta;
                        continue;
                    }
                    if Z2 == 1u {
                        sa = 0.5 * (st0[s] + sa);
                        ta = 0.5 * (st0[V + s] - ta);
                    }
                    let xv = x[xrow + s];
                    if (parity_tbl[s] ^ p.parity) == 1u {
                        y[xrow + s] = xv;
                    } else {
                        y[xrow + s] = fma(xv, exp(sa), ta);
                        part += sa;
                    }
                }
            }
        }
        // Copy 1's first convolution overwrites what copy 0's last one read.
        if br < Z2 {
            workgroupBarrier();
        }
    }
    let total = tree_sum(lid, part);
    if lid == 0u {
        logq[b] -= total;
    }
}

// ---- Backward ----
// One workgroup per chunk of samples, one sample at a time. Per sample, from the output back:
// the coupling's gradients (direct dL/dx into gxd, the last convolution's output gradient into
// gact[HLEN..]), then each convolution's weight gradient (summed over sites, added into wacc)
// and input gradient (times the derivative of the activation below, into the other half of
// gact), down to the first convolution, whose input gradient completes dL/dx. The activations
// come from `h`, where the forward left them. After the last sample, wacc (the
// layer's parameter slice) goes to `partial`; `reduce` adds the chunks in a fixed order.
// gact: hidden outputs' gradients in [0, HID V) and [HID V, 2 HID V) as `act` in the forward,
// then the last convolution's output gradient (s, t) at HLEN, then (BR > 1) one branch's
// pre-activation gradient at GOFF. A plain net's gradients there are pre-activation ones; a
// combinational net's are its stages' output gradients times `out_grad`, each branch taking
// its share (1 / BR, times its own act' where AFTER = 1) in `conv_backward`.
const GOFF: u32 = HLEN + 2u * V;
var<workgroup> gact: array<f32, HLEN + 2u * V + GB>;
var<workgroup> gxd: array<f32, V>;
var<workgroup> wacc: array<f32, WSPAN>;

// The backward of one stage of the net, HID -> cout, for the current sample: its output's
// gradient is gact[gsrc + co V + s], its input the hidden output h[hin + ci V + s], its
// weights (and their gradients in wacc) start at wo, branch c's wstride further. Branch c's
// pre-activation gradient (BR > 1) goes to gact[GOFF..], from its output h[hbo + c hbs +
// co V + s] (activation `a`). Adds the weight and bias gradients into wacc and writes the input's
// gradient (dL/dinput times `out_grad` of the stage below) to gact[gdst + ci V + s]. (ci0,
// r0): this thread's first weight-gradient pair. Called only with constant cout (2 or HID), so
// its loops can unroll.
fn conv_backward(
    lid: u32,
    ci0: u32,
    r0: u32,
    cout: u32,
    gsrc: u32,
    hin: u32,
    gdst: u32,
    wo: u32,
    wstride: u32,
    hbo: u32,
    hbs: u32,
    a: u32,
) {
    // Where this branch's pre-activation gradient is.
    let g0 = select(gsrc, GOFF, BR > 1u);
    for (var c = 0u; c < BR; c++) {
        let wb = wo + c * wstride;
        if BR > 1u {
            for (var i = lid; i < cout * V; i += WG) {
                var g = gact[gsrc + i] * INV;
                if AFTER == 1u {
                    g *= activate_grad(f32(h[hbo + c * hbs + i]), a);
                }
                gact[GOFF + i] = g;
            }
            workgroupBarrier();
        }
        // Weight gradients: pairs (input channel, row of TPT taps), cout output channels each.
        var ci = ci0;
        var r = r0;
        for (var k = lid; k < HID * ROWS; k += WG) {
            var acc: array<f32, TPT * HID>;
            for (var i = 0u; i < TPT * HID; i++) {
                acc[i] = 0.0;
            }
            let row = hin + ci * V;
            let t0 = r * TPT;
            for (var s = 0u; s < V; s++) {
                var v: array<f32, TPT>;
                for (var j = 0u; j < TPT; j++) {
                    v[j] = f32(h[row + nbr[(s * BR + c) * TAPS + t0 + j]]);
                }
                for (var co = 0u; co < cout; co++) {
                    let g = gact[g0 + co * V + s];
                    for (var j = 0u; j < TPT; j++) {
                        acc[co * TPT + j] = fma(g, v[j], acc[co * TPT + j]);
                    }
                }
            }
            for (var co = 0u; co < cout; co++) {
                for (var j = 0u; j < TPT; j++) {
                    wacc[wb + (co * HID + ci) * TAPS + t0 + j] += acc[co * TPT + j];
                }
            }
            r += WG;
            while r >= ROWS {
                r -= ROWS;
                ci += 1u;
            }
        }
        for (var co = lid; co < cout; co += WG) {
            var sb = 0.0;
            for (var s = 0u; s < V; s++) {
                sb += gact[g0 + co * V + s];
            }
            wacc[wb + cout * HID * TAPS + co] += sb;
        }
        // The input gradient, SPT sites per thread; the branches' add up in gact[gdst..] (each
        // thread keeps its sites), the last one applies the stage below's `out_grad`.
        for (var s0 = lid; s0 < V; s0 += WG * SPT) {
            let st = sites(s0);
            var acc: array<f32, SPT * HID>;
            for (var i = 0u; i < SPT * HID; i++) {
                acc[i] = 0.0;
            }
            for (var t = 0u; t < TAPS; t++) {
                var n: array<u32, SPT>;
                for (var k = 0u; k < SPT; k++) {
                    n[k] = g0 + nbr[(st[k] * BR + c) * TAPS + TAPS - 1u - t];
                }
                for (var co = 0u; co < cout; co++) {
                    var g: array<f32, SPT>;
                    for (var k = 0u; k < SPT; k++) {
                        g[k] = gact[n[k] + co * V];
                    }
                    let w = wb + co * (HID * TAPS) + t;
                    for (var ci = 0u; ci < HID; ci++) {
                        let wv = weight(w + ci * TAPS);
                        for (var k = 0u; k < SPT; k++) {
                            acc[k * HID + ci] = fma(wv, g[k], acc[k * HID + ci]);
                        }
                    }
                }
            }
            for (var k = 0u; k < SPT; k++) {
                let s = s0 + k * WG;
                if s < V {
                    for (var ci = 0u; ci < HID; ci++) {
                        let i = gdst + ci * V + s;
                        var tot = acc[k * HID + ci];
                        if c > 0u {
                            tot = gact[i] + tot;
                        }
                        if c + 1u < BR {
                            gact[i] = tot;
                        } else {
                            gact[i] = tot * out_grad(f32(h[hin + ci * V + s]), ACT_LEAKY);
                        }
                    }
                }
            }
        }
        // The next branch overwrites this one's gradient.
        if BR > 1u {
            workgroupBarrier();
        }
    }
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    // Weight-gradient threads take pairs (input channel, row of TPT taps) k = lid, lid + WG,
    // ...; the first pair's (ci, row), by division by a constant, once.
    let ci0 = lid / ROWS;
    let r0 = lid - ci0 * ROWS;
    for (var i = lid; i < WSPAN; i += WG) {
        wacc[i] = 0.0;
    }
    let b0 = wid.x * p.chunk;
    let b1 = min(b0 + p.chunk, p.batch);
    for (var b = b0; b < b1; b++) {
        let xrow = b * V;
        let gl = glogq[b];
        // A symmetrised layer: copy 0, then copy 1 (their net rows b and B + b).
        for (var br = 0u; br <= Z2; br++) {
            let nb = b + br * p.batch;
            let sign = 1.0 - 2.0 * f32(br);
            // The coupling: dx = dy (frozen) or dy exp(s); ds = (dy x exp(s) - dL/dlog q) act'(s),
            // dt = dy act'(t) on the updated sites, 0 on the frozen ones. Symmetrised: s and t are
            // the copies' combination, and copy br's outputs get ds / 2 and +-dt / 2 times act'.
            for (var s = lid; s < V; s += WG) {
                let dy = gy[xrow + s];
                if (parity_tbl[s] ^ p.parity) == 1u {
                    if br == 0u {
                        gxd[s] = dy;
                    }
                    gact[HLEN + s] = 0.0;
                    gact[HLEN + V + s] = 0.0;
                } else if Z2 == 0u {
                    let sv = f32(h[p.st_off + 2u * xrow + s]);
                    let tv = f32(h[p.st_off + 2u * xrow + V + s]);
                    let e = exp(sv);
                    gxd[s] = dy * e;
                    gact[HLEN + s] = (dy * x[xrow + s] * e - gl) * out_grad(sv, ACT_OUT);
                    gact[HLEN + V + s] = dy * out_grad(tv, ACT_OUT);
                } else {
                    let u0 = p.st_off + 2u * xrow + s;
                    let u1 = p.st_off + 2u * (xrow + p.batch * V) + s;
                    let e = exp(0.5 * (f32(h[u0]) + f32(h[u1])));
                    if br == 0u {
                        gxd[s] = dy * e;
                    }
                    let u = p.st_off + 2u * nb * V + s;
                    gact[HLEN + s] = 0.5 * (dy * x[xrow + s] * e - gl) * out_grad(f32(h[u]), ACT_OUT);
                    gact[HLEN + V + s] = sign * (0.5 * dy) * out_grad(f32(h[u + V]), ACT_OUT);
                }
            }
            workgroupBarrier();

            // The last convolution, HID -> 2; its input is hidden output NHID - 1, whose gradient
            // goes to half (NHID - 1) & 1.
            conv_backward(
                lid,
                ci0,
                r0,
                2u,
                HLEN,
                (NHID - 1u) * p.h_stride + nb * HID * V,
                ((NHID - 1u) & 1u) * (HID * V),
                W_OUT,
                WSO,
                hb_last(0u) + 2u * nb * V,
                hb_last(1u) - hb_last(0u),
                ACT_OUT,
            );
            workgroupBarrier();

            // Hidden convolutions HID -> HID, last first: convolution m + 1 maps hidden output m
            // to m + 1; its output gradient is in half (m + 1) & 1, its input gradient goes to
            // half m & 1.
            for (var mm = 0u; mm + 1u < NHID; mm++) {
                let m = NHID - 2u - mm;
                let gsrc = ((m + 1u) & 1u) * (HID * V);
                conv_backward(
                    lid,
                    ci0,
                    r0,
                    HID,
                    gsrc,
                    m * p.h_stride + nb * HID * V,
                    HID * V - gsrc,
                    W_MID + m * W_MID_STRIDE,
                    WSM,
                    hb_hidden(m + 1u, 0u) + nb * HID * V,
                    hb_hidden(0u, 1u) - hb_hidden(0u, 0u),
                    ACT_LEAKY,
                );
                workgroupBarrier();
            }

            // The first convolution, 1 -> HID, on mask * x; its output gradient is in half 0.
            for (var c = 0u; c < BR; c++) {
                let wb = c * WS0;
                let g0 = select(0u, GOFF, BR > 1u);
                if BR > 1u {
                    let hbo = hb_hidden(0u, c) + nb * HID * V;
                    for (var i = lid; i < HID * V; i += WG) {
                        var g = gact[i] * INV;
                        if AFTER == 1u {
                            g *= activate_grad(f32(h[hbo + i]), ACT_LEAKY);
                        }
                        gact[GOFF + i] = g;
                    }
                    workgroupBarrier();
                }
                for (var r = lid; r < ROWS; r += WG) {
                    var acc: array<f32, TPT * HID>;
                    for (var i = 0u; i < TPT * HID; i++) {
                        acc[i] = 0.0;
                    }
                    let t0 = r * TPT;
                    for (var s = 0u; s < V; s++) {
                        var v: array<f32, TPT>;
                        for (var j = 0u; j < TPT; j++) {
                            let n = nbr[(s * BR + c) * TAPS + t0 + j];
                            v[j] = sign * (f32(parity_tbl[n] ^ p.parity) * x[xrow + n]);
                        }
                        for (var co = 0u; co < HID; co++) {
                            let g = gact[g0 + co * V + s];
                            for (var j = 0u; j < TPT; j++) {
                                acc[co * TPT + j] = fma(g, v[j], acc[co * TPT + j]);
                            }
                        }
                    }
                    for (var co = 0u; co < HID; co++) {
                        for (var j = 0u; j < TPT; j++) {
                            wacc[wb + co * TAPS + t0 + j] += acc[co * TPT + j];
                        }
                    }
                }
                for (var co = lid; co < HID; co += WG) {
                    var sb = 0.0;
                    for (var s = 0u; s < V; s++) {
                        sb += gact[g0 + co * V + s];
                    }
                    wacc[wb + HID * TAPS + co] += sb;
                }
                // dL/dx = the coupling's direct path + mask * the net's path (symmetrised: copy 0's
                // path - copy 1's, the first added into gxd). The net's path adds up over the
                // branches in gact[HLEN..] (free once the last convolution's backward is done).
                for (var s0 = lid; s0 < V; s0 += WG * SPT) {
                    let st = sites(s0);
                    var acc: array<f32, SPT>;
                    for (var k = 0u; k < SPT; k++) {
                        acc[k] = 0.0;
                    }
                    for (var t = 0u; t < TAPS; t++) {
                        var n: array<u32, SPT>;
                        for (var k = 0u; k < SPT; k++) {
                            n[k] = nbr[(st[k] * BR + c) * TAPS + TAPS - 1u - t];
                        }
                        for (var co = 0u; co < HID; co++) {
                            let wv = weight(wb + co * TAPS + t);
                            for (var k = 0u; k < SPT; k++) {
                                acc[k] = fma(wv, gact[g0 + co * V + n[k]], acc[k]);
                            }
                        }
                    }
                    for (var k = 0u; k < SPT; k++) {
                        let s = s0 + k * WG;
                        if s < V {
                            var tot = acc[k];
                            if c > 0u {
                                tot = gact[HLEN + s] + tot;
                            }
                            if c + 1u < BR {
                                gact[HLEN + s] = tot;
                                continue;
                            }
                            let net = sign * (f32(parity_tbl[s] ^ p.parity) * tot);
                            if br == Z2 {
                                gx[xrow + s] = gxd[s] + net;
                            } else {
                                gxd[s] = gxd[s] + net;
                            }
                        }
                    }
                }
                if BR > 1u {
                    workgroupBarrier();
                }
            }
            workgroupBarrier();
        }
    }
    let base = wid.x * WSPAN;
    for (var i = lid; i < WSPAN; i += WG) {
        partial[base + i] = wacc[i];
    }
}

// The layer's gradient: the workgroups' sums added in a fixed order (deterministic).
@compute @workgroup_size(WG)
fn reduce(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= WSPAN {
        return;
    }
    var acc = 0.0;
    var j = i;
    for (var c = 0u; c < p.n_chunks; c++) {
        acc += partial[j];
        j += WSPAN;
    }
    grads[p.w_first + i] = acc * p.unscale;
}
