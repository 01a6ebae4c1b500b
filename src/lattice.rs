//! The periodic hypercubic lattice: site numbering (row-major, last axis fastest) and the
//! lookup tables the shaders index instead of doing integer division and modulo.

/// An Nd-dimensional periodic lattice of extent `l` in every direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lattice {
    pub nd: usize,
    pub l: usize,
}

impl Lattice {
    pub fn new(nd: usize, l: usize) -> Self {
        assert!((1..=4).contains(&nd) && l >= 1, "lattice Nd={nd} L={l}");
        Lattice { nd, l }
    }

    /// Number of sites, L^Nd.
    pub fn volume(&self) -> usize {
        self.l.pow(self.nd as u32)
    }

    /// The shape as an array of extents, e.g. [8, 8].
    pub fn shape(&self) -> Vec<usize> {
        vec![self.l; self.nd]
    }

    /// Coordinates of a site (row-major: the last axis varies fastest).
    pub fn coords(&self, site: usize) -> Vec<usize> {
        let mut c = vec![0; self.nd];
        let mut s = site;
        for d in (0..self.nd).rev() {
            c[d] = s % self.l;
            s /= self.l;
        }
        c
    }

    pub fn site(&self, coords: &[usize]) -> usize {
        coords.iter().fold(0, |acc, &c| acc * self.l + c)
    }

    /// The site at `site + offset`, wrapping periodically.
    pub fn shift(&self, site: usize, offset: &[i64]) -> usize {
        let l = self.l as i64;
        let c: Vec<usize> = self
            .coords(site)
            .iter()
            .zip(offset)
            .map(|(&c, &o)| (c as i64 + o).rem_euclid(l) as usize)
            .collect();
        self.site(&c)
    }

    /// The offsets of a k^Nd window, row-major over the kernel axes, each in -(k/2)..=k/2:
    /// the order of PyTorch's [.., .., k, k] weights. Tap t and tap k^Nd-1-t are opposite.
    pub fn tap_offsets(&self, k: usize) -> Vec<Vec<i64>> {
        let taps = k.pow(self.nd as u32);
        let half = (k / 2) as i64;
        (0..taps)
            .map(|t| {
                let mut o = vec![0i64; self.nd];
                let mut r = t;
                for d in (0..self.nd).rev() {
                    o[d] = (r % k) as i64 - half;
                    r /= k;
                }
                o
            })
            .collect()
    }

    /// `parity[site]` = (sum of coordinates) mod 2. The checkerboard of parity p is
    /// `parity[site] ^ p`, with 1 = frozen.
    pub fn parity_table(&self) -> Vec<u32> {
        (0..self.volume())
            .map(|s| (self.coords(s).iter().sum::<usize>() % 2) as u32)
            .collect()
    }

    /// `hop[(site * Nd + mu) * 2]` = site + mu-hat, `hop[(site * Nd + mu) * 2 + 1]` = site - mu-hat.
    pub fn hop_table(&self) -> Vec<u32> {
        let mut t = Vec::with_capacity(self.volume() * 2 * self.nd);
        for s in 0..self.volume() {
            for mu in 0..self.nd {
                let mut o = vec![0i64; self.nd];
                o[mu] = 1;
                t.push(self.shift(s, &o) as u32);
                o[mu] = -1;
                t.push(self.shift(s, &o) as u32);
            }
        }
        t
    }

    /// The checkerboard mask of a coupling of `parity`, as 0/1 floats (1 = frozen).
    pub fn mask(&self, parity: u32) -> Vec<f64> {
        self.parity_table()
            .iter()
            .map(|&p| (p ^ parity) as f64)
            .collect()
    }
}
