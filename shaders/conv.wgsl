// conv.wgsl: periodic (circular) convolution over an Nd-dimensional lattice, any odd kernel.
//
// Tensors are [batch, channel, site] f32. Neighbours come from a table built on the CPU,
// nbr[site * TAPS + t] = the site at offset t (row-major over the kernel window), so no shader
// does integer division or modulo. The reversed tap TAPS-1-t has the opposite offset.
// Weights are PyTorch's [COUT, CIN, TAPS] followed by the bias [COUT], at w_off in one flat
// parameter buffer. The constants below are specialised per layer by the launcher (the values
// here are defaults, so the file itself is valid WGSL).
//
// BR > 1: a combinational convolution, BR branches in one dispatch. Branch b has its own taps
// (the table row of a site holds the branches' TAPS taps one after the other, BR * TAPS in
// all) and its own weights and bias at w_off + b * WSTRIDE. The forward writes their mean to y
// (each branch activated with ACT when AFTER = 1, the mean when AFTER = 0): the stage's output;
// with KEEP, each branch's activated output to row b of hb (p.stride floats apart), whose
// derivative the backward needs. gy is the branches' pre-activation gradients [BR, stride]:
// with AFTER = 0 they are equal, one row (stride 0). With SIGNS (LeakyReLU under AFTER = 1,
// whose derivative depends on the sign alone) the forward keeps one bit per branch and channel
// instead, and gy is one row, dL/dy / BR, that the backward multiplies by each branch's act'.

const CIN: u32 = 8u;
const COUT: u32 = 8u;
const TAPS: u32 = 9u;
// Activation applied to this convolution's output (forward).
const ACT: u32 = 1u;
// 1: the input is masked by the coupling's checkerboard (the first convolution of a coupling).
const IN_MASK: u32 = 0u;
// backward_input epilogue: 0 write, 1 write times act'(input) with ACT_IN (so the result is the
// pre-activation gradient of the previous convolution), 2 add mask * result (CIN = 1), 4 the
// previous stage's branch gradients: row b of gx = result / BR * act' (with ACT_IN) of row b
// of hb_in (AFTER = 1), or its one row = result / BR * act' of the input (AFTER = 0).
const MODE: u32 = 0u;
const ACT_IN: u32 = 0u;
const WG: u32 = 64u;
// Samples per thread in forward and backward_input: each weight load feeds NB multiply-adds.
// 1 on GPUs (a warp broadcasts a uniform load for free); more on CPU adapters, where every
// lane's load of the same weight is a separate memory access.
const NB: u32 = 1u;
// 1: forward and backward_input read this layer's weights and bias through the uniform binding
// `wu` (its slice of the parameter buffer, WLEN vec4s): a uniform load with a uniform index is
// one scalar load on every adapter, where a storage load is a gather per lane on CPU adapters
// (measured on lavapipe: 9 -> 12.7 GFLOP/s). 0 for layers over 64 KiB.
const W_UBO: u32 = 0u;
const WLEN: u32 = 1u;
// Branches (1: a plain convolution), the floats between two branches' parameter slices, and
// where the mean takes the activation (1: after it, GomalizingFlow's "branch"; 0: before).
const BR: u32 = 1u;
const WSTRIDE: u32 = 0u;
const AFTER: u32 = 1u;
// 1: the forward keeps each branch's output in hb for the backward (AFTER = 1, training).
const KEEP: u32 = 0u;
// 1: it keeps their signs instead: bit k = br * COUT + co of word (b * WORDS + k / 32) *
// volume + site of `bits` is set where branch br's output channel co is positive; gy is one
// row (stride 0) and backward_input and backward_weight apply act' from the bits.
const SIGNS: u32 = 0u;
const WORDS: u32 = 1u;
// backward_input MODE 4 where the previous stage keeps signs: gx is one row, dL/dx / BR.
const SIGNS_IN: u32 = 0u;
const INV: f32 = 1.0 / f32(BR);
// Storage types of the activations on the input side (x, gx, hb_in) and the output side (y,
// gy, hb): f32, or f16 under `[device] precision = "f16"` (every sum stays f32).
alias XS = f32;
alias YS = f32;

struct Params {
    batch: u32,
    volume: u32,
    // Offset of this convolution's weights in the flat parameter (and gradient) buffer.
    w_off: u32,
    // Checkerboard parity of the coupling: mask(site) = parity_tbl[site] ^ parity, 1 = frozen.
    parity: u32,
    // backward_weight: samples per chunk, and COUT*CIN*TAPS + COUT.
    chunk: u32,
    n_weights: u32,
    n_chunks: u32,
    // BR > 1: floats between two branches' rows of hb and gy (this stage's outputs), and of
    // hb_in and gx in MODE 4 (the previous stage's).
    stride: u32,
    stride_in: u32,
    // reduce_weight: 1 / the loss scale (`TapeSpec::loss_scale`: 1 but under f16 storage).
    unscale: f32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> params: array<f32>;
@group(0) @binding(2) var<storage, read> nbr: array<u32>;
@group(0) @binding(3) var<storage, read> parity_tbl: array<u32>;
// The convolution's input (what the forward read; backward_input reads it for act').
@group(0) @binding(4) var<storage, read> x: array<XS>;
@group(0) @binding(5) var<storage, read_write> y: array<YS>;
// Gradient with respect to this convolution's pre-activation output.
@group(0) @binding(6) var<storage, read> gy: array<YS>;
@group(0) @binding(7) var<storage, read_write> gx: array<XS>;
@group(0) @binding(8) var<storage, read_write> partial: array<f32>;
@group(0) @binding(9) var<storage, read_write> grads: array<f32>;
@group(0) @binding(10) var<uniform> wu: array<vec4<f32>, WLEN>;
// BR > 1: this stage's branch outputs (forward), the previous stage's (backward_input MODE 4).
@group(0) @binding(11) var<storage, read_write> hb: array<YS>;
@group(0) @binding(12) var<storage, read> hb_in: array<XS>;
// SIGNS: this stage's branch signs (written by the forward, read by the backward).
@group(0) @binding(13) var<storage, read_write> bits: array<u32>;

// Parameter i of this layer (weights [COUT, CIN, TAPS] then bias [COUT]).
fn weight(i: u32) -> f32 {
    if W_UBO == 1u {
        return wu[i >> 2u][i & 3u];
    }
    return params[p.w_off + i];
}

fn mask_at(site: u32) -> f32 {
    return f32(parity_tbl[site] ^ p.parity);
}

// The word of a sample's signs that holds bit k: a constant 0 where one word holds them all
// (BR * COUT <= 32), so the sign arrays are indexed by constants and stay in registers.
fn word_of(k: u32) -> u32 {
    if WORDS == 1u {
        return 0u;
    }
    return k >> 5u;
}

// act' of a branch's output from its sign bit (bit k of `word`): LeakyReLU's derivative.
fn sign_grad(word: u32, k: u32) -> f32 {
    return activate_grad(select(-1.0, 1.0, ((word >> (k & 31u)) & 1u) == 1u), ACT);
}

// One thread per (site, NB samples), all COUT outputs (of every branch): each gathered input
// feeds COUT FMAs and each weight NB of them. Threads of the last block past the batch compute
// on the last sample and store nothing.
@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = wid.x * WG + lid;
    if site >= p.volume {
        return;
    }
    let b0 = wid.y * NB;
    var acc: array<f32, NB * COUT>;
    // BR > 1: the sum of the branches' outputs; SIGNS: their signs.
    var mean: array<f32, NB * COUT>;
    var sb: array<u32, NB * WORDS>;
    var xb: array<u32, NB>;
    for (var j = 0u; j < NB; j++) {
        xb[j] = min(b0 + j, p.batch - 1u) * CIN * p.volume;
    }
    for (var br = 0u; br < BR; br++) {
        let wb = br * WSTRIDE;
        for (var co = 0u; co < COUT; co++) {
            let bias = weight(wb + COUT * CIN * TAPS + co);
            for (var j = 0u; j < NB; j++) {
                acc[j * COUT + co] = bias;
            }
        }
        let nb = (site * BR + br) * TAPS;
        // Taps outside, channels inside: one neighbour lookup serves every input channel.
        for (var t = 0u; t < TAPS; t++) {
            let n = nbr[nb + t];
            var m = 1.0;
            if IN_MASK == 1u {
                m = mask_at(n);
            }
            for (var ci = 0u; ci < CIN; ci++) {
                var v: array<f32, NB>;
                for (var j = 0u; j < NB; j++) {
                    v[j] = m * f32(x[xb[j] + ci * p.volume + n]);
                }
                let w = wb + ci * TAPS + t;
                for (var co = 0u; co < COUT; co++) {
                    let wv = weight(w + co * (CIN * TAPS));
                    for (var j = 0u; j < NB; j++) {
                        acc[j * COUT + co] = fma(wv, v[j], acc[j * COUT + co]);
                    }
                }
            }
        }
        if BR > 1u {
            for (var j = 0u; j < NB; j++) {
                let b = b0 + j;
                for (var co = 0u; co < COUT; co++) {
                    var h = acc[j * COUT + co];
                    if AFTER == 1u {
                        h = activate(h, ACT);
                    }
                    if br == 0u {
                        mean[j * COUT + co] = h;
                    } else {
                        mean[j * COUT + co] += h;
                    }
                    if KEEP == 1u && b < p.batch {
                        if SIGNS == 1u {
                            let k = br * COUT + co;
                            if h > 0.0 {
                                sb[j * WORDS + word_of(k)] |= 1u << (k & 31u);
                            }
                        } else {
                            hb[br * p.stride + (b * COUT + co) * p.volume + site] = YS(h);
                        }
                    }
                }
            }
        }
    }
    for (var j = 0u; j < NB; j++) {
        let b = b0 + j;
        if b < p.batch {
            for (var co = 0u; co < COUT; co++) {
                var out = activate(acc[j * COUT + co], ACT);
                if BR > 1u {
                    out = mean[j * COUT + co] * INV;
                    if AFTER == 0u {
                        out = activate(out, ACT);
                    }
                }
                y[(b * COUT + co) * p.volume + site] = YS(out);
            }
            if KEEP == 1u && SIGNS == 1u {
                for (var w = 0u; w < WORDS; w++) {
                    bits[(b * WORDS + w) * p.volume + site] = sb[j * WORDS + w];
                }
            }
        }
    }
}

// dx[ci, u] = sum_br sum_co sum_t W_br[co, ci, t] * gy_br[co, u - offset_br(t)]: one thread
// per (site, NB samples).
@compute @workgroup_size(WG)
fn backward_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = wid.x * WG + lid;
    if site >= p.volume {
        return;
    }
    let b0 = wid.y * NB;
    var acc: array<f32, NB * CIN>;
    var gb: array<u32, NB>;
    // SIGNS: the first sign word of each sample.
    var sbase: array<u32, NB>;
    for (var j = 0u; j < NB; j++) {
        gb[j] = min(b0 + j, p.batch - 1u) * COUT * p.volume;
        sbase[j] = min(b0 + j, p.batch - 1u) * WORDS * p.volume;
        for (var ci = 0u; ci < CIN; ci++) {
            acc[j * CIN + ci] = 0.0;
        }
    }
    for (var br = 0u; br < BR; br++) {
        let wb = br * WSTRIDE;
        let gbr = br * p.stride;
        // nbr[(site * BR + br) * TAPS + (TAPS - 1 - t)] is site - offset_br(t).
        let nb = (site * BR + br) * TAPS + TAPS - 1u;
        for (var t = 0u; t < TAPS; t++) {
            let n = nbr[nb - t];
            var sw: array<u32, NB * WORDS>;
            if SIGNS == 1u {
                for (var j = 0u; j < NB; j++) {
                    for (var w = 0u; w < WORDS; w++) {
                        sw[j * WORDS + w] = bits[sbase[j] + w * p.volume + n];
                    }
                }
            }
            for (var co = 0u; co < COUT; co++) {
                var g: array<f32, NB>;
                for (var j = 0u; j < NB; j++) {
                    g[j] = f32(gy[gbr + gb[j] + co * p.volume + n]);
                    if SIGNS == 1u {
                        let k = br * COUT + co;
                        g[j] *= sign_grad(sw[j * WORDS + word_of(k)], k);
                    }
                }
                let w = wb + co * (CIN * TAPS) + t;
                for (var ci = 0u; ci < CIN; ci++) {
                    let wv = weight(w + ci * TAPS);
                    for (var j = 0u; j < NB; j++) {
                        acc[j * CIN + ci] = fma(wv, g[j], acc[j * CIN + ci]);
                    }
                }
            }
        }
    }
    for (var j = 0u; j < NB; j++) {
        let b = b0 + j;
        if b < p.batch {
            for (var ci = 0u; ci < CIN; ci++) {
                let i = (b * CIN + ci) * p.volume + site;
                if MODE == 0u {
                    gx[i] = XS(acc[j * CIN + ci]);
                } else if MODE == 1u {
                    gx[i] = XS(acc[j * CIN + ci] * activate_grad(f32(x[i]), ACT_IN));
                } else if MODE == 2u {
                    gx[i] = XS(f32(gx[i]) + acc[j * CIN + ci] * mask_at(site));
                } else {
                    let g = acc[j * CIN + ci] * INV;
                    if SIGNS_IN == 1u {
                        // act' is applied where the previous stage reads the row.
                        gx[i] = XS(g);
                    } else if AFTER == 1u {
                        var k = i;
                        for (var br = 0u; br < BR; br++) {
                            gx[k] = XS(g * activate_grad(f32(hb_in[k]), ACT_IN));
                            k += p.stride_in;
                        }
                    } else {
                        // One row serves every branch (stride 0).
                        gx[i] = XS(g * activate_grad(f32(x[i]), ACT_IN));
                    }
                }
            }
        }
    }
}

// Weight and bias gradients, stage 1: one thread per (block of COB output channels, input
// channel, row of TPT taps, chunk of samples) holds the TPT * COB weights that share its loads:
// TPT gathered inputs and COB output gradients feed TPT * COB FMAs (COB < COUT keeps wide layers
// in registers). Every thread also sums its block's dL/db (the same loads); the threads of the
// first (channel, row) write it. Each chunk writes a partial sum; stage 2 (reduce_weight) adds
// the chunks in a fixed order: deterministic, no atomics.
const TPT: u32 = 3u;
const COB: u32 = COUT;
// Branches per weight-gradient thread (1 or BR). Where the stage keeps signs, a thread of all
// the branches loads each (site, sample)'s sign word and one row of output gradients once for
// all of them; elsewhere they share only the loop. Each sum keeps its order, so the numbers do
// not depend on it.
const NBR: u32 = 1u;
// Consecutive sites per weight-gradient step (1 or 4; 4 needs volume % 4 == 0): the output
// gradients and sign words of 4 sites come in one vec4 load through gy4 and bits4 (the same
// buffers as gy and bits). A CPU adapter runs every lane's load as its own scalar access, so
// this quarters those loads; each sum then runs over the sites of a block sample by sample.
const SPT: u32 = 1u;

// Views of gy and bits by 4 sites (SPT = 4).
@group(0) @binding(14) var<storage, read> gy4: array<vec4<YS>>;
@group(0) @binding(15) var<storage, read_write> bits4: array<vec4<u32>>;

// The output gradients of SPT consecutive sites from index i of gy (i a multiple of SPT).
fn gy_sites(i: u32) -> vec4<f32> {
    if SPT == 4u {
        return vec4<f32>(gy4[i >> 2u]);
    }
    return vec4<f32>(f32(gy[i]), 0.0, 0.0, 0.0);
}

// The sign words of SPT consecutive sites from index i of bits.
fn bits_sites(i: u32) -> vec4<u32> {
    if SPT == 4u {
        return bits4[i >> 2u];
    }
    return vec4<u32>(bits[i], 0u, 0u, 0u);
}

@compute @workgroup_size(WG)
fn backward_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = wid.x * WG + lid;
    let chunk = wid.y;
    // BR > 1: NBR branches per z of the grid, their taps, output gradients and partial sums.
    let br0 = wid.z * NBR;
    let rows = CIN * (TAPS / TPT);
    if k >= rows * (COUT / COB) {
        return;
    }
    // Division by compile-time constants, once per thread (not in the loop).
    let cb = k / rows;
    let r = k - cb * rows;
    let co0 = cb * COB;
    let ci = r / (TAPS / TPT);
    let t0 = (r - ci * (TAPS / TPT)) * TPT;
    let b0 = chunk * p.chunk;
    let b1 = min(b0 + p.chunk, p.batch);
    var acc: array<f32, NBR * TPT * COB>;
    var bias: array<f32, NBR * COB>;
    for (var i = 0u; i < NBR * TPT * COB; i++) {
        acc[i] = 0.0;
    }
    for (var i = 0u; i < NBR * COB; i++) {
        bias[i] = 0.0;
    }
    for (var s = 0u; s < p.volume; s += SPT) {
        // Neighbour e = (i * NBR + q) * TPT + j: site s + i's tap t0 + j of branch br0 + q.
        var n: array<u32, SPT * NBR * TPT>;
        var m: array<f32, SPT * NBR * TPT>;
        for (var i = 0u; i < SPT; i++) {
            for (var q = 0u; q < NBR; q++) {
                for (var j = 0u; j < TPT; j++) {
                    let e = (i * NBR + q) * TPT + j;
                    n[e] = nbr[(s + i) * (BR * TAPS) + (br0 + q) * TAPS + t0 + j];
                    m[e] = 1.0;
                    if IN_MASK == 1u {
                        m[e] = mask_at(n[e]);
                    }
                }
            }
        }
        for (var b = b0; b < b1; b++) {
            let xrow = (b * CIN + ci) * p.volume;
            var v: array<f32, SPT * NBR * TPT>;
            for (var e = 0u; e < SPT * NBR * TPT; e++) {
                v[e] = m[e] * f32(x[xrow + n[e]]);
            }
            let grow = (b * COUT + co0) * p.volume + s;
            var sw: array<vec4<u32>, WORDS>;
            var g0: array<vec4<f32>, COB>;
            if SIGNS == 1u {
                for (var w = 0u; w < WORDS; w++) {
                    sw[w] = bits_sites((b * WORDS + w) * p.volume + s);
                }
                // One row of dL/dy / BR for every branch (stride 0).
                for (var co = 0u; co < COB; co++) {
                    g0[co] = gy_sites(grow + co * p.volume);
                }
            }
            for (var q = 0u; q < NBR; q++) {
                let br = br0 + q;
                for (var co = 0u; co < COB; co++) {
                    var g: vec4<f32>;
                    if SIGNS == 1u {
                        let k = br * COUT + co0 + co;
                        for (var i = 0u; i < SPT; i++) {
                            g[i] = g0[co][i] * sign_grad(sw[word_of(k)][i], k);
                        }
                    } else {
                        g = gy_sites(br * p.stride + grow + co * p.volume);
                    }
                    for (var i = 0u; i < SPT; i++) {
                        bias[q * COB + co] += g[i];
                        for (var j = 0u; j < TPT; j++) {
                            let a = (q * COB + co) * TPT + j;
                            acc[a] = fma(g[i], v[(i * NBR + q) * TPT + j], acc[a]);
                        }
                    }
                }
            }
        }
    }
    for (var q = 0u; q < NBR; q++) {
        let base = chunk * p.n_weights + (br0 + q) * WSTRIDE;
        for (var co = 0u; co < COB; co++) {
            for (var j = 0u; j < TPT; j++) {
                partial[base + (co0 + co) * (CIN * TAPS) + ci * TAPS + t0 + j] = acc[(q * COB + co) * TPT + j];
            }
        }
        if r == 0u {
            for (var co = 0u; co < COB; co++) {
                partial[base + COUT * CIN * TAPS + co0 + co] = bias[q * COB + co];
            }
        }
    }
}

// One thread per parameter of a branch (z: the branch; the padding between branches' slices
// is not touched, so it stays zero).
@compute @workgroup_size(WG)
fn reduce_weight(@builtin(global_invocation_id) gid: vec3<u32>) {
    if gid.x >= COUT * CIN * TAPS + COUT {
        return;
    }
    let w = gid.z * WSTRIDE + gid.x;
    var acc = 0.0;
    var i = w;
    for (var c = 0u; c < p.n_chunks; c++) {
        acc += partial[i];
        i += p.n_weights;
    }
    grads[p.w_off + w] = acc * p.unscale;
}

// forward4 and backward_input4: `forward` and `backward_input` with 4 consecutive sites of a
// row of the last (fastest) lattice axis per thread, for lattices whose extent L along it is a
// multiple of 4. A CPU adapter runs every lane's storage load as its own scalar access; a
// vec4 load costs one. A tap's 4 values lie in at most two adjacent blocks of its row (the
// thread's own block and its periodic neighbours), so each (tap, channel, sample) takes two
// vec4 loads where `forward` takes four scalar ones (one where the tap's offset along the row
// is 0). Each output's sum runs over the branches, taps and channels in the order the
// one-site entry points take it, so the results are bitwise theirs. (Holding a row's three
// blocks for every channel, to load each once, measured slower for 8 channels on lavapipe:
// the per-channel arrays are indexed by a loop the compiler does not unroll.)
//
// `rows[(block * BR + br) * TAPS + t]`: the vec4 index of the block at the thread's position
// along the last axis in the row that holds branch br's tap t (the tap's offset on the other
// axes). XSPAN bit br: branch br's taps span the last axis (rows of KX taps, offsets -RX..RX
// along it, row-major as the weights); a branch without it has offset 0 there on every tap.
const XB: u32 = 2u;
const KX: u32 = 3u;
const XSPAN: u32 = 1u;
const RX: u32 = KX / 2u;

@group(0) @binding(16) var<storage, read> rows: array<u32>;
@group(0) @binding(17) var<storage, read> x4: array<vec4<XS>>;
@group(0) @binding(18) var<storage, read_write> y4: array<vec4<YS>>;
@group(0) @binding(19) var<storage, read_write> gx4: array<vec4<XS>>;
@group(0) @binding(20) var<storage, read_write> hb4: array<vec4<YS>>;
@group(0) @binding(21) var<storage, read> hb_in4: array<vec4<XS>>;

// The thread's block and first sample from one flat index over (samples / NB, blocks), so a
// workgroup of a small lattice holds several samples' blocks: (block, first sample).
fn block_and_sample(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> vec2<u32> {
    let id = (wid.y * nwg.x + wid.x) * WG + lid;
    let nblk = p.volume >> 2u;
    // One division per thread, outside every loop.
    let sg = id / nblk;
    return vec2<u32>(id - sg * nblk, sg * NB);
}

// The blocks before and after block c in its row, periodically (bx: the thread's position in
// the row, in blocks).
fn row_prev(c: u32, bx: u32) -> u32 {
    return select(c - 1u, c + XB - 1u, bx == 0u);
}
fn row_next(c: u32, bx: u32) -> u32 {
    return select(c + 1u, c + 1u - XB, bx == XB - 1u);
}

// The checkerboard mask of the 4 sites from site s (s even: the parity alternates along the row).
fn mask4(s: u32) -> vec4<f32> {
    let m = parity_tbl[s] ^ p.parity;
    return vec4<f32>(f32(m), f32(m ^ 1u), f32(m), f32(m ^ 1u));
}

// (a[s..4], b[0..s]) for s in 0..3 (uniform): 4 consecutive values of two adjacent blocks.
fn shift4(a: vec4<f32>, b: vec4<f32>, s: u32) -> vec4<f32> {
    var r = select(a, vec4<f32>(a.yzw, b.x), s == 1u);
    r = select(r, vec4<f32>(a.zw, b.xy), s == 2u);
    return select(r, vec4<f32>(a.w, b.xyz), s == 3u);
}

fn shift4u(a: vec4<u32>, b: vec4<u32>, s: u32) -> vec4<u32> {
    var r = select(a, vec4<u32>(a.yzw, b.x), s == 1u);
    r = select(r, vec4<u32>(a.zw, b.xy), s == 2u);
    return select(r, vec4<u32>(a.w, b.xyz), s == 3u);
}

fn activate4(v: vec4<f32>, act: u32) -> vec4<f32> {
    return vec4<f32>(activate(v.x, act), activate(v.y, act), activate(v.z, act), activate(v.w, act));
}

fn activate_grad4(v: vec4<f32>, act: u32) -> vec4<f32> {
    return vec4<f32>(
        activate_grad(v.x, act),
        activate_grad(v.y, act),
        activate_grad(v.z, act),
        activate_grad(v.w, act)
    );
}

// act' of branch k's output at 4 sites from their sign words.
fn sign_grad4(words: vec4<u32>, k: u32) -> vec4<f32> {
    return vec4<f32>(
        sign_grad(words.x, k),
        sign_grad(words.y, k),
        sign_grad(words.z, k),
        sign_grad(words.w, k)
    );
}

@compute @workgroup_size(WG)
fn forward4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let bs = block_and_sample(wid, nwg, lid);
    let g = bs.x;
    let b0 = bs.y;
    if b0 >= p.batch {
        return;
    }
    let nblk = p.volume >> 2u;
    let bx = g % XB;
    var acc: array<vec4<f32>, NB * COUT>;
    var mean: array<vec4<f32>, NB * COUT>;
    var sb: array<vec4<u32>, NB * WORDS>;
    // Each sample's first block of x.
    var xb: array<u32, NB>;
    for (var j = 0u; j < NB; j++) {
        xb[j] = min(b0 + j, p.batch - 1u) * CIN * nblk;
    }
    for (var br = 0u; br < BR; br++) {
        let wb = br * WSTRIDE;
        for (var co = 0u; co < COUT; co++) {
            let bias = weight(wb + COUT * CIN * TAPS + co);
            for (var j = 0u; j < NB; j++) {
                acc[j * COUT + co] = vec4<f32>(bias);
            }
        }
        let rb = (g * BR + br) * TAPS;
        if ((XSPAN >> br) & 1u) == 1u {
            for (var r = 0u; r < TAPS; r += KX) {
                let c = rows[rb + r];
                let cb = vec3<u32>(row_prev(c, bx), c, row_next(c, bx));
                var mc = vec4<f32>(1.0);
                if IN_MASK == 1u {
                    mc = mask4(c << 2u);
                }
                for (var dx = 0u; dx < KX; dx++) {
                    let t = r + dx;
                    // The tap's 4 values (sites x0 + dx - RX ..) start at element e of the
                    // row's blocks (prev, own, next): block q, component sh.
                    let e = dx + 4u - RX;
                    let q = e >> 2u;
                    let sh = e & 3u;
                    let ia = select(select(cb.x, cb.y, q == 1u), cb.z, q == 2u);
                    let ib = select(cb.y, cb.z, q >= 1u);
                    // The mask alternates along the row: an odd shift swaps its phases.
                    let mk = select(mc, mc.yxwz, (e & 1u) == 1u);
                    for (var ci = 0u; ci < CIN; ci++) {
                        var v: array<vec4<f32>, NB>;
                        for (var j = 0u; j < NB; j++) {
                            let o = xb[j] + ci * nblk;
                            v[j] = mk * shift4(vec4<f32>(x4[o + ia]), vec4<f32>(x4[o + ib]), sh);
                        }
                        let w = wb + ci * TAPS + t;
                        for (var co = 0u; co < COUT; co++) {
                            let wv = vec4<f32>(weight(w + co * (CIN * TAPS)));
                            for (var j = 0u; j < NB; j++) {
                                acc[j * COUT + co] = fma(wv, v[j], acc[j * COUT + co]);
                            }
                        }
                    }
                }
            }
        } else {
            for (var t = 0u; t < TAPS; t++) {
                let c = rows[rb + t];
                var m = vec4<f32>(1.0);
                if IN_MASK == 1u {
                    m = mask4(c << 2u);
                }
                for (var ci = 0u; ci < CIN; ci++) {
                    var v: array<vec4<f32>, NB>;
                    for (var j = 0u; j < NB; j++) {
                        v[j] = m * vec4<f32>(x4[xb[j] + ci * nblk + c]);
                    }
                    let w = wb + ci * TAPS + t;
                    for (var co = 0u; co < COUT; co++) {
                        let wv = vec4<f32>(weight(w + co * (CIN * TAPS)));
                        for (var j = 0u; j < NB; j++) {
                            acc[j * COUT + co] = fma(wv, v[j], acc[j * COUT + co]);
                        }
                    }
                }
            }
        }
        if BR > 1u {
            for (var j = 0u; j < NB; j++) {
                let b = b0 + j;
                for (var co = 0u; co < COUT; co++) {
                    var h = acc[j * COUT + co];
                    if AFTER == 1u {
                        h = activate4(h, ACT);
                    }
                    if br == 0u {
                        mean[j * COUT + co] = h;
                    } else {
                        mean[j * COUT + co] += h;
                    }
                    if KEEP == 1u && b < p.batch {
                        if SIGNS == 1u {
                            let k = br * COUT + co;
                            let bit = vec4<u32>(1u << (k & 31u));
                            sb[j * WORDS + word_of(k)] |= select(vec4<u32>(0u), bit, h > vec4<f32>(0.0));
                        } else {
                            hb4[((br * p.stride) >> 2u) + (b * COUT + co) * nblk + g] = vec4<YS>(h);
                        }
                    }
                }
            }
        }
    }
    for (var j = 0u; j < NB; j++) {
        let b = b0 + j;
        if b < p.batch {
            for (var co = 0u; co < COUT; co++) {
                var out = activate4(acc[j * COUT + co], ACT);
                if BR > 1u {
                    out = mean[j * COUT + co] * INV;
                    if AFTER == 0u {
                        out = activate4(out, ACT);
                    }
                }
                y4[(b * COUT + co) * nblk + g] = vec4<YS>(out);
            }
            if KEEP == 1u && SIGNS == 1u {
                for (var w = 0u; w < WORDS; w++) {
                    bits4[(b * WORDS + w) * nblk + g] = sb[j * WORDS + w];
                }
            }
        }
    }
}

@compute @workgroup_size(WG)
fn backward_input4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let bs = block_and_sample(wid, nwg, lid);
    let g = bs.x;
    let b0 = bs.y;
    if b0 >= p.batch {
        return;
    }
    let nblk = p.volume >> 2u;
    let bx = g % XB;
    var acc: array<vec4<f32>, NB * CIN>;
    // Each sample's first block of gy and of its sign words.
    var gb: array<u32, NB>;
    var sbase: array<u32, NB>;
    for (var j = 0u; j < NB; j++) {
        gb[j] = min(b0 + j, p.batch - 1u) * COUT * nblk;
        sbase[j] = min(b0 + j, p.batch - 1u) * WORDS * nblk;
        for (var ci = 0u; ci < CIN; ci++) {
            acc[j * CIN + ci] = vec4<f32>(0.0);
        }
    }
    for (var br = 0u; br < BR; br++) {
        let wb = br * WSTRIDE;
        let gbr = (br * p.stride) >> 2u;
        // rows[rb - t]: the row of tap TAPS - 1 - t, whose offset is minus tap t's.
        let rb = (g * BR + br) * TAPS + TAPS - 1u;
        if ((XSPAN >> br) & 1u) == 1u {
            for (var r = 0u; r < TAPS; r += KX) {
                let c = rows[rb - r];
                let cb = vec3<u32>(row_prev(c, bx), c, row_next(c, bx));
                for (var dx = 0u; dx < KX; dx++) {
                    let t = r + dx;
                    // Tap t's offset along the row is dx - RX: site x0 + i reads x0 + i + RX - dx,
                    // element RX + 4 - dx + i of the row's blocks (prev, own, next).
                    let e = RX + 4u - dx;
                    let q = e >> 2u;
                    let sh = e & 3u;
                    let ia = select(select(cb.x, cb.y, q == 1u), cb.z, q == 2u);
                    let ib = select(cb.y, cb.z, q >= 1u);
                    var sw: array<vec4<u32>, NB * WORDS>;
                    if SIGNS == 1u {
                        for (var j = 0u; j < NB; j++) {
                            for (var w = 0u; w < WORDS; w++) {
                                let o = sbase[j] + w * nblk;
                                sw[j * WORDS + w] = shift4u(bits4[o + ia], bits4[o + ib], sh);
                            }
                        }
                    }
                    for (var co = 0u; co < COUT; co++) {
                        var gv: array<vec4<f32>, NB>;
                        for (var j = 0u; j < NB; j++) {
                            let o = gbr + gb[j] + co * nblk;
                            gv[j] = shift4(vec4<f32>(gy4[o + ia]), vec4<f32>(gy4[o + ib]), sh);
                            if SIGNS == 1u {
                                let k = br * COUT + co;
                                gv[j] *= sign_grad4(sw[j * WORDS + word_of(k)], k);
                            }
                        }
                        let w = wb + co * (CIN * TAPS) + t;
                        for (var ci = 0u; ci < CIN; ci++) {
                            let wv = vec4<f32>(weight(w + ci * TAPS));
                            for (var j = 0u; j < NB; j++) {
                                acc[j * CIN + ci] = fma(wv, gv[j], acc[j * CIN + ci]);
                            }
                        }
                    }
                }
            }
        } else {
            for (var t = 0u; t < TAPS; t++) {
                let c = rows[rb - t];
                var sw: array<vec4<u32>, NB * WORDS>;
                if SIGNS == 1u {
                    for (var j = 0u; j < NB; j++) {
                        for (var w = 0u; w < WORDS; w++) {
                            sw[j * WORDS + w] = bits4[sbase[j] + w * nblk + c];
                        }
                    }
                }
                for (var co = 0u; co < COUT; co++) {
                    var gv: array<vec4<f32>, NB>;
                    for (var j = 0u; j < NB; j++) {
                        gv[j] = vec4<f32>(gy4[gbr + gb[j] + co * nblk + c]);
                        if SIGNS == 1u {
                            let k = br * COUT + co;
                            gv[j] *= sign_grad4(sw[j * WORDS + word_of(k)], k);
                        }
                    }
                    let w = wb + co * (CIN * TAPS) + t;
                    for (var ci = 0u; ci < CIN; ci++) {
                        let wv = vec4<f32>(weight(w + ci * TAPS));
                        for (var j = 0u; j < NB; j++) {
                            acc[j * CIN + ci] = fma(wv, gv[j], acc[j * CIN + ci]);
                        }
                    }
                }
            }
        }
    }
    for (var j = 0u; j < NB; j++) {
        let b = b0 + j;
        if b < p.batch {
            for (var ci = 0u; ci < CIN; ci++) {
                let i = (b * CIN + ci) * nblk + g;
                let a = acc[j * CIN + ci];
                if MODE == 0u {
                    gx4[i] = vec4<XS>(a);
                } else if MODE == 1u {
                    gx4[i] = vec4<XS>(a * activate_grad4(vec4<f32>(x4[i]), ACT_IN));
                } else if MODE == 2u {
                    gx4[i] = vec4<XS>(vec4<f32>(gx4[i]) + a * mask4(g << 2u));
                } else {
                    let gr = a * INV;
                    if SIGNS_IN == 1u {
                        gx4[i] = vec4<XS>(gr);
                    } else if AFTER == 1u {
                        var k = i;
                        for (var br = 0u; br < BR; br++) {
                            gx4[k] = vec4<XS>(gr * activate_grad4(vec4<f32>(hb_in4[k]), ACT_IN));
                            k += p.stride_in >> 2u;
                        }
                    } else {
                        gx4[i] = vec4<XS>(gr * activate_grad4(vec4<f32>(x4[i]), ACT_IN));
                    }
                }
            }
        }
    }
}
