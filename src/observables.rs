//! Observables of lattice phi^4 per configuration, and the statistics that put honest errors on
//! chain averages: Wolff's automatic windowing for the integrated autocorrelation time
//! (U. Wolff, Comput. Phys. Commun. 156 (2004) 143), the jackknife over bins for derived
//! quantities, and the acceptance-based autocorrelation time of arXiv 1904.12072.
//!
//! Convention: tau_int = 1/2 + sum_{t>=1} rho(t), so that the error of a mean of N samples is
//! sigma sqrt(2 tau_int / N) (tau_int = 1/2 for independent samples).

use crate::lattice::Lattice;

/// What is measured on one configuration phi (row-major, last axis = time).
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    /// m = (1/V) sum_x phi(x).
    pub m: f64,
    /// (1/V) sum_x phi(x)^2.
    pub phi2: f64,
    /// G(r) = (1/V) sum_y phi(y) phi(y + r mu-hat), averaged over the Nd directions, r = 0..L-1.
    pub g: Vec<f64>,
    /// C(t) = (1/V) sum_{t0} M(t0) M(t0 + t), M(t0) = sum over the time slice t0: the
    /// zero-momentum correlator before subtracting <m>^2 L^(Nd-1).
    pub c: Vec<f64>,
}

impl Measurement {
    pub fn of(lat: &Lattice, phi: &[f32]) -> Measurement {
        let v = lat.volume();
        let l = lat.l;
        let nd = lat.nd;
        let p: Vec<f64> = phi.iter().map(|&x| x as f64).collect();
        let m = p.iter().sum::<f64>() / v as f64;
        let phi2 = p.iter().map(|x| x * x).sum::<f64>() / v as f64;
        // G(r) along each axis: the axis stride is L^(nd-1-mu); wrap within the axis.
        let mut g = vec![0.0; l];
        for mu in 0..nd {
            let stride = l.pow((nd - 1 - mu) as u32);
            for (y, &py) in p.iter().enumerate() {
                let c = (y / stride) % l;
                let base = y - c * stride;
                for (r, gr) in g.iter_mut().enumerate() {
                    let cc = c + r;
                    let cc = if cc >= l { cc - l } else { cc };
                    *gr += py * p[base + cc * stride];
                }
            }
        }
        for gr in &mut g {
            *gr /= (v * nd) as f64;
        }
        // Time-slice sums (the last axis is time).
        let slice = v / l;
        let mut mt = vec![0.0; l];
        for (y, &py) in p.iter().enumerate() {
            mt[y % l] += py;
        }
        let _ = slice;
        let c = (0..l)
            .map(|t| (0..l).map(|t0| mt[t0] * mt[(t0 + t) % l]).sum::<f64>() / v as f64)
            .collect();
        Measurement { m, phi2, g, c }
    }

    /// The primary observables as one vector, in the order of `PRIMARIES` then G(r), then C(t):
    /// |m|, phi^2, m^2, m^4, m, G(0..L), C(0..L).
    pub fn primaries(&self) -> Vec<f64> {
        let m2 = self.m * self.m;
        let mut v = vec![self.m.abs(), self.phi2, m2, m2 * m2, self.m];
        v.extend(&self.g);
        v.extend(&self.c);
        v
    }
}

/// Indices into `Measurement::primaries`.
pub mod idx {
    pub const ABS_M: usize = 0;
    pub const PHI2: usize = 1;
    pub const M2: usize = 2;
    pub const M4: usize = 3;
    pub const M: usize = 4;
    pub const G0: usize = 5;
}

/// Wolff's analysis of one observable.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Autocorr {
    pub mean: f64,
    pub error: f64,
    pub tau_int: f64,
    pub tau_int_error: f64,
    /// The summation window W chosen automatically.
    pub window: usize,
}

/// Wolff's automatic windowing (S = 1.5) on R replicas (independent chains) of one observable.
/// Gamma(t) is averaged over replicas; W minimises the sum of the statistical and the
/// truncation error of tau_int.
pub fn wolff(replicas: &[&[f64]]) -> Autocorr {
    let s_param = 1.5;
    let n: usize = replicas.iter().map(|r| r.len()).sum();
    let nmin = replicas.iter().map(|r| r.len()).min().unwrap_or(0);
    let mean = replicas.iter().flat_map(|r| r.iter()).sum::<f64>() / n as f64;
    let gamma = |t: usize| -> f64 {
        let mut s = 0.0;
        let mut cnt = 0usize;
        for r in replicas {
            if r.len() > t {
                for i in 0..r.len() - t {
                    s += (r[i] - mean) * (r[i + t] - mean);
                }
                cnt += r.len() - t;
            }
        }
        if cnt == 0 { 0.0 } else { s / cnt as f64 }
    };
    let g0 = gamma(0);
    if g0 <= 0.0 || n < 2 {
        return Autocorr {
            mean,
            error: 0.0,
            tau_int: 0.5,
            tau_int_error: 0.0,
            window: 0,
        };
    }
    let mut sum = g0;
    let mut gammas = vec![g0];
    let mut window = 0;
    let mut tau = 0.5;
    for w in 1..nmin.max(2) / 2 {
        let gw = gamma(w);
        gammas.push(gw);
        sum += 2.0 * gw;
        let tau_w = (sum / (2.0 * g0)).max(0.5 + 1e-12);
        // tau_W as Wolff defines it from tau_int: S / ln((2 tau + 1) / (2 tau - 1)).
        let tau_exp = if tau_w <= 0.5 {
            1e-12
        } else {
            s_param / ((2.0 * tau_w + 1.0) / (2.0 * tau_w - 1.0)).ln()
        };
        let g = (-(w as f64) / tau_exp).exp() - tau_exp / (w as f64 * n as f64).sqrt();
        tau = tau_w;
        window = w;
        if g < 0.0 {
            break;
        }
    }
    // Bias correction of Gamma for the estimated mean (Wolff eq. 49).
    let cw = g0 + 2.0 * gammas[1..=window.min(gammas.len() - 1)].iter().sum::<f64>();
    let corrected = cw * (1.0 + (2.0 * window as f64 + 1.0) / n as f64);
    let tau_int = (corrected / (2.0 * g0)).max(0.5);
    let _ = tau;
    let variance = g0;
    let error = (2.0 * tau_int * variance / n as f64).sqrt();
    let tau_int_error = tau_int * (2.0 * (2.0 * window as f64 + 1.0) / n as f64).sqrt();
    Autocorr {
        mean,
        error,
        tau_int,
        tau_int_error,
        window,
    }
}

/// The jackknife over `n_bins` consecutive bins (per replica) of the rows of `data`
/// (one row of primaries per configuration): the estimate and error of f(means).
/// Bins at least as long as 2 tau_int make the bins nearly independent.
pub fn jackknife(replicas: &[Vec<Vec<f64>>], bin: usize, f: &dyn Fn(&[f64]) -> f64) -> (f64, f64) {
    let bin = bin.max(1);
    let width = replicas
        .iter()
        .find_map(|r| r.first().map(|x| x.len()))
        .unwrap_or(0);
    // Bin sums.
    let mut bins: Vec<(Vec<f64>, usize)> = Vec::new();
    for r in replicas {
        for chunk in r.chunks(bin) {
            if chunk.len() < bin && !bins.is_empty() {
                continue; // a short tail bin would weigh wrongly
            }
            let mut s = vec![0.0; width];
            for row in chunk {
                for (a, b) in s.iter_mut().zip(row) {
                    *a += b;
                }
            }
            bins.push((s, chunk.len()));
        }
    }
    let nb = bins.len();
    let mut total = vec![0.0; width];
    let mut count = 0usize;
    for (s, c) in &bins {
        for (a, b) in total.iter_mut().zip(s) {
            *a += b;
        }
        count += c;
    }
    let full: Vec<f64> = total.iter().map(|t| t / count as f64).collect();
    let est = f(&full);
    if nb < 2 {
        return (est, f64::NAN);
    }
    let loo: Vec<f64> = bins
        .iter()
        .map(|(s, c)| {
            let m: Vec<f64> = total
                .iter()
                .zip(s)
                .map(|(t, x)| (t - x) / (count - c) as f64)
                .collect();
            f(&m)
        })
        .collect();
    let mean_loo = loo.iter().sum::<f64>() / nb as f64;
    let var = loo.iter().map(|x| (x - mean_loo).powi(2)).sum::<f64>() * (nb - 1) as f64 / nb as f64;
    // Bias-corrected estimate.
    (nb as f64 * est - (nb - 1) as f64 * mean_loo, var.sqrt())
}

/// The acceptance-based integrated autocorrelation time of arXiv 1904.12072: for an
/// independence Metropolis chain, rho(t) is the probability of t consecutive rejections,
/// estimated from the chain; tau = 1/2 + sum_t rho(t).
pub fn tau_acceptance(accepted: &[bool]) -> f64 {
    tau_acceptance_replicas(&[accepted])
}

/// `tau_acceptance` over independent chains of one flow: rho(t) estimated from the runs of
/// rejections of every chain together.
pub fn tau_acceptance_replicas(replicas: &[&[bool]]) -> f64 {
    // runs[r][i] = length of the run of rejections ending at step i of chain r.
    let runs: Vec<Vec<usize>> = replicas
        .iter()
        .map(|accepted| {
            let mut runs = vec![0usize; accepted.len()];
            for i in 0..accepted.len() {
                runs[i] = if accepted[i] {
                    0
                } else if i > 0 {
                    runs[i - 1] + 1
                } else {
                    1
                };
            }
            runs
        })
        .collect();
    let longest = replicas.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut tau = 0.5;
    for t in 1..longest {
        // Steps i+1..i+t all rejected <=> the run ending at i+t is at least t long.
        let (mut hits, mut pairs) = (0usize, 0usize);
        for r in runs.iter().filter(|r| r.len() > t) {
            hits += r[t..].iter().filter(|&&x| x >= t).count();
            pairs += r.len() - t;
        }
        if hits == 0 {
            break;
        }
        tau += hits as f64 / pairs as f64;
    }
    tau
}

/// Whether independent chains of one observable agree with each other: each chain's mean and
/// Wolff error against the mean of all, chi^2 = sum_r ((mean_r - mean) / error_r)^2 on R - 1
/// degrees of freedom, and its Q value (the probability of a chi^2 at least this large). Wolff
/// (2004) recommends this check of replicas; a Q below about 0.01 says the chains disagree more
/// than their errors allow (a chain not in equilibrium, errors too small, or a bad shard).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Consistency {
    pub chi2: f64,
    pub dof: usize,
    pub q: f64,
}

pub fn replica_consistency(replicas: &[&[f64]]) -> Consistency {
    let all = wolff(replicas);
    let chi2 = replicas
        .iter()
        .map(|r| {
            let a = wolff(&[r]);
            ((a.mean - all.mean) / a.error).powi(2)
        })
        .sum::<f64>();
    let dof = replicas.len().saturating_sub(1);
    Consistency {
        chi2,
        dof,
        q: if dof == 0 {
            1.0
        } else {
            gamma_q(dof as f64 / 2.0, chi2 / 2.0)
        },
    }
}

/// The regularised upper incomplete gamma function Q(a, x) = Gamma(a, x) / Gamma(a): the series
/// for x < a + 1, Lentz's continued fraction above (Numerical Recipes, section 6.2).
pub fn gamma_q(a: f64, x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 1.0;
    }
    let ln_prefactor = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        let (mut term, mut sum, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..1000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-16 {
                break;
            }
        }
        1.0 - sum * ln_prefactor.exp()
    } else {
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..1000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < 1e-16 {
                break;
            }
        }
        ln_prefactor.exp() * h
    }
}

/// ln Gamma(x) for x > 0 (Lanczos, g = 7, n = 9; relative error below 1e-15).
pub fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection.
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let mut s = C[0];
    for (i, c) in C.iter().enumerate().skip(1) {
        s += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + s.ln()
}

/// Effective mass m_eff(t) = arccosh[(C(t-1) + C(t+1)) / (2 C(t))] for t = 1..L-2
/// (NaN where the argument is below 1).
pub fn effective_mass(c: &[f64]) -> Vec<f64> {
    (1..c.len().saturating_sub(1))
        .map(|t| {
            let a = (c[t - 1] + c[t + 1]) / (2.0 * c[t]);
            if a >= 1.0 { a.acosh() } else { f64::NAN }
        })
        .collect()
}

/// Exact free-field values (lambda = 0, m2 > 0; S = sum (grad phi)^2 + m2 phi^2, covariance
/// (2K)^-1 with K = -Laplacian + m2).
pub mod free {
    use crate::lattice::Lattice;
    use std::f64::consts::PI;

    fn momenta(lat: &Lattice) -> Vec<Vec<f64>> {
        (0..lat.volume())
            .map(|k| {
                lat.coords(k)
                    .iter()
                    .map(|&n| 2.0 * PI * n as f64 / lat.l as f64)
                    .collect()
            })
            .collect()
    }

    fn khat2(q: &[f64]) -> f64 {
        q.iter().map(|&qm| 4.0 * (qm / 2.0).sin().powi(2)).sum()
    }

    /// G(r) along an axis: (1/V) sum_q cos(q_0 r) / (2 (k^2 + m2)); G(0) = <phi^2>.
    pub fn g(lat: &Lattice, m2: f64) -> Vec<f64> {
        let v = lat.volume() as f64;
        let qs = momenta(lat);
        (0..lat.l)
            .map(|r| {
                qs.iter()
                    .map(|q| (q[0] * r as f64).cos() / (2.0 * (khat2(q) + m2)))
                    .sum::<f64>()
                    / v
            })
            .collect()
    }

    /// log Z = (V/2) ln pi - (1/2) sum_q ln(k^2 + m2).
    pub fn log_z(lat: &Lattice, m2: f64) -> f64 {
        let v = lat.volume() as f64;
        0.5 * v * PI.ln()
            - 0.5
                * momenta(lat)
                    .iter()
                    .map(|q| (khat2(q) + m2).ln())
                    .sum::<f64>()
    }

    /// <m^2> = G summed over all separations / V = 1 / (2 m2 V) (only q = 0 survives).
    pub fn m2_mean(lat: &Lattice, m2: f64) -> f64 {
        1.0 / (2.0 * m2 * lat.volume() as f64)
    }
}

/// Everything `sample` and `hmc` report about a set of chains of measurements.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    /// Measurements (per chain, after burn-in) the averages use.
    pub samples: usize,
    pub abs_m: Autocorr,
    pub phi2: Autocorr,
    pub chi2: Autocorr,
    /// Derived (jackknife): (mean, error).
    pub ising_energy: (f64, f64),
    pub binder: (f64, f64),
    /// G(r) along the axes (connected: <m>^2 subtracted), r = 0..L-1, with errors.
    pub g: Vec<(f64, f64)>,
    /// Zero-momentum correlator C(t) and effective mass, with errors (jackknife).
    pub c: Vec<(f64, f64)>,
    pub m_eff: Vec<(f64, f64)>,
    /// Jackknife bin size used (at least 2 tau_int of the slowest primary observable).
    pub bin: usize,
}

impl Summary {
    /// `chains[r][i]` = primaries of configuration i of chain r.
    pub fn of(lat: &Lattice, chains: &[Vec<Vec<f64>>]) -> Summary {
        let l = lat.l;
        let v = lat.volume() as f64;
        let slice = (lat.volume() / l) as f64;
        let samples: usize = chains.iter().map(|c| c.len()).sum();
        let series = |k: usize, scale: f64| -> Vec<Vec<f64>> {
            chains
                .iter()
                .map(|c| c.iter().map(|row| scale * row[k]).collect())
                .collect()
        };
        let analyse = |k: usize, scale: f64| {
            let s = series(k, scale);
            let refs: Vec<&[f64]> = s.iter().map(|x| x.as_slice()).collect();
            wolff(&refs)
        };
        let abs_m = analyse(idx::ABS_M, 1.0);
        let phi2 = analyse(idx::PHI2, 1.0);
        let chi2 = analyse(idx::M2, v);
        // Bins long enough for the slowest primary (G(r) and C(t) included).
        let width = chains
            .iter()
            .find_map(|c| c.first().map(|r| r.len()))
            .unwrap_or(0);
        let tau_max = (0..width)
            .map(|k| analyse(k, 1.0).tau_int)
            .fold(0.5f64, f64::max);
        let per_chain = chains.iter().map(|c| c.len()).min().unwrap_or(0);
        // Bins of at least 2 tau_int, and at least 20 of them where the chains allow.
        let bin = ((2.0 * tau_max).ceil() as usize)
            .max(1)
            .min((per_chain / 20).max(1));
        let jk = |f: &dyn Fn(&[f64]) -> f64| jackknife(chains, bin, f);
        let g0 = idx::G0;
        let c0 = idx::G0 + l;
        let ising_energy = jk(&|m| m[g0 + 1.min(l - 1)] - m[idx::M] * m[idx::M]);
        let binder = jk(&|m| 1.0 - m[idx::M4] / (3.0 * m[idx::M2] * m[idx::M2]));
        let g = (0..l)
            .map(|r| jk(&|m| m[g0 + r] - m[idx::M] * m[idx::M]))
            .collect();
        let c = (0..l)
            .map(|t| jk(&|m| m[c0 + t] - slice * m[idx::M] * m[idx::M]))
            .collect();
        let m_eff = (1..l.saturating_sub(1))
            .map(|t| {
                jk(&|m| {
                    let cc = |s: usize| m[c0 + s] - slice * m[idx::M] * m[idx::M];
                    let a = (cc(t - 1) + cc(t + 1)) / (2.0 * cc(t));
                    if a >= 1.0 { a.acosh() } else { f64::NAN }
                })
            })
            .collect();
        Summary {
            samples,
            abs_m,
            phi2,
            chi2,
            ising_energy,
            binder,
            g,
            c,
            m_eff,
            bin,
        }
    }

    /// The `observables` and `correlator` objects of `sample --json` (see README).
    pub fn json(&self) -> (serde_json::Value, serde_json::Value) {
        use serde_json::json;
        let pair = |a: &Autocorr| json!([a.mean, a.error]);
        let obs = json!({
            "abs_m": pair(&self.abs_m),
            "phi2": pair(&self.phi2),
            "chi2": pair(&self.chi2),
            "ising_energy": [self.ising_energy.0, self.ising_energy.1],
            "binder": [self.binder.0, self.binder.1],
            "tau_int": {
                "abs_m": self.abs_m.tau_int,
                "phi2": self.phi2.tau_int,
                "chi2": self.chi2.tau_int,
            },
            "G": self.g.iter().map(|x| x.0).collect::<Vec<_>>(),
            "G_err": self.g.iter().map(|x| x.1).collect::<Vec<_>>(),
        });
        let corr = json!({
            "t": (0..self.c.len()).collect::<Vec<_>>(),
            "C": self.c.iter().map(|x| x.0).collect::<Vec<_>>(),
            "C_err": self.c.iter().map(|x| x.1).collect::<Vec<_>>(),
            "m_eff": self.m_eff.iter().map(|x| x.0).collect::<Vec<_>>(),
            "m_eff_err": self.m_eff.iter().map(|x| x.1).collect::<Vec<_>>(),
        });
        (obs, corr)
    }

    /// Seconds per sample times 2 tau_int: the cost of one independent measurement.
    pub fn cost_json(&self, seconds_per_sample: f64) -> serde_json::Value {
        let c = |a: &Autocorr| seconds_per_sample * 2.0 * a.tau_int;
        serde_json::json!({ "abs_m": c(&self.abs_m), "phi2": c(&self.phi2), "chi2": c(&self.chi2) })
    }

    pub fn print_cost(&self, seconds_per_sample: f64) {
        let c = |a: &Autocorr| seconds_per_sample * 2.0 * a.tau_int;
        println!(
            "cost per independent sample (s x 2 tau_int): |m| {:.3e}, phi^2 {:.3e}, chi_2 {:.3e}",
            c(&self.abs_m),
            c(&self.phi2),
            c(&self.chi2)
        );
    }

    /// A readable table.
    pub fn print(&self) {
        let a = |name: &str, x: &Autocorr| {
            println!(
                "  {name:<14} {:>12.6} ± {:<10.6} tau_int {:>6.2} ± {:.2}",
                x.mean, x.error, x.tau_int, x.tau_int_error
            )
        };
        let d = |name: &str, x: (f64, f64)| {
            println!("  {name:<14} {:>12.6} ± {:<10.6} (jackknife)", x.0, x.1)
        };
        println!("observables over {} measurements:", self.samples);
        a("<|m|>", &self.abs_m);
        a("<phi^2>", &self.phi2);
        a("chi_2 = V<m^2>", &self.chi2);
        d("Ising energy", self.ising_energy);
        d("Binder U", self.binder);
        println!(
            "  {:>3} {:>13} {:>11} {:>10} {:>9}",
            "t", "C(t)", "error", "m_eff", "error"
        );
        for (t, (c, e)) in self.c.iter().enumerate() {
            let me = if t >= 1 { self.m_eff.get(t - 1) } else { None };
            match me {
                Some((m, me)) => println!("  {t:>3} {c:>13.6} {e:>11.6} {m:>10.5} {me:>9.5}"),
                None => println!("  {t:>3} {c:>13.6} {e:>11.6}"),
            }
        }
    }
}

/// The Pareto shape k of the upper tail of the importance weights w = exp(logw) (Vehtari,
/// Simpson, Gelman, Yao, Gabry, "Pareto smoothed importance sampling", arXiv 1507.02646): a
/// generalised Pareto distribution is fitted to the largest M = min(N/5, 3 sqrt N) weights by
/// Zhang and Stephens' (2009) estimator. Above about 0.7 the weights' variance is effectively
/// infinite: independence-MH and reweighted estimates converge too slowly for their error bars
/// to be trusted, whatever the ESS and acceptance. Below 0.5 all is well.
pub fn pareto_k(logw: &[f64]) -> f64 {
    let n = logw.len();
    if n < 20 {
        return f64::NAN;
    }
    let mut lw: Vec<f64> = logw.iter().copied().filter(|x| x.is_finite()).collect();
    lw.sort_by(f64::total_cmp);
    let n = lw.len();
    let m = ((0.2 * n as f64).ceil() as usize).min((3.0 * (n as f64).sqrt()).ceil() as usize);
    if m < 5 || m >= n {
        return f64::NAN;
    }
    let max = lw[n - 1];
    let cutoff = (lw[n - m - 1] - max).exp();
    // Exceedances over the cutoff, ascending (scaled by the largest weight; k is scale-free).
    let x: Vec<f64> = lw[n - m..]
        .iter()
        .map(|l| (l - max).exp() - cutoff)
        .collect();
    if x[m - 1] <= 0.0 {
        return f64::NAN;
    }
    // Zhang & Stephens: a weighted average over a grid of theta = b.
    let (prior_bs, prior_k) = (3.0, 10.0);
    let m_est = 30 + (m as f64).sqrt() as usize;
    let quart = x[((m as f64 / 4.0 + 0.5) as usize).max(1) - 1].max(f64::MIN_POSITIVE);
    let b: Vec<f64> = (1..=m_est)
        .map(|j| {
            (1.0 - (m_est as f64 / (j as f64 - 0.5)).sqrt()) / (prior_bs * quart) + 1.0 / x[m - 1]
        })
        .collect();
    let k_of = |bj: f64| x.iter().map(|xi| (-bj * xi).ln_1p()).sum::<f64>() / m as f64;
    let len_scale: Vec<f64> = b
        .iter()
        .map(|&bj| {
            let k = k_of(bj);
            m as f64 * ((-bj / k).ln() - k - 1.0)
        })
        .collect();
    let weights: Vec<f64> = len_scale
        .iter()
        .map(|li| 1.0 / len_scale.iter().map(|lj| (lj - li).exp()).sum::<f64>())
        .collect();
    let total: f64 = weights.iter().filter(|w| w.is_finite()).sum();
    let b_post: f64 = b
        .iter()
        .zip(&weights)
        .filter(|(_, w)| w.is_finite())
        .map(|(bj, w)| bj * w / total)
        .sum();
    let k = k_of(b_post);
    // Weakly informative prior towards 0.5, as in PSIS.
    (m as f64 * k + prior_k * 0.5) / (m as f64 + prior_k)
}
