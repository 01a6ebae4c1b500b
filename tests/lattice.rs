//! The lattice tables the shaders index, against hand-computed neighbours.

use gomaflow_wgpu::flow::Taps;
use gomaflow_wgpu::lattice::Lattice;

#[test]
fn row_major_sites() {
    let l = Lattice::new(2, 4);
    assert_eq!(l.volume(), 16);
    assert_eq!(l.coords(6), vec![1, 2]); // 6 = 1 * 4 + 2: the last axis is fastest
    assert_eq!(l.site(&[3, 1]), 13);
    assert_eq!(Lattice::new(4, 3).volume(), 81);
}

#[test]
fn periodic_hops() {
    let l = Lattice::new(2, 4);
    let hop = l.hop_table();
    // Site 0 = (0, 0): +x0 -> (1, 0) = 4, -x0 -> (3, 0) = 12, +x1 -> (0, 1) = 1, -x1 -> (0, 3) = 3.
    assert_eq!(&hop[0..4], &[4, 12, 1, 3]);
    // Site 15 = (3, 3): +x0 -> (0, 3) = 3, -x0 -> (2, 3) = 11, +x1 -> (3, 0) = 12, -x1 -> (3, 2) = 14.
    assert_eq!(&hop[60..64], &[3, 11, 12, 14]);
}

#[test]
fn conv_taps() {
    let l = Lattice::new(2, 4);
    let t = Taps::Window { k: 3 }.table(&l);
    // Site 5 = (1, 1): the 3x3 window row-major from offset (-1, -1).
    assert_eq!(&t[45..54], &[0, 1, 2, 4, 5, 6, 8, 9, 10]);
    // Site 0 wraps on both axes.
    assert_eq!(&t[0..9], &[15, 12, 13, 3, 0, 1, 7, 4, 5]);
    // Tap t and tap 8 - t are opposite: shifting by one and back returns.
    let offs = l.tap_offsets(3);
    for (a, b) in offs.iter().zip(offs.iter().rev()) {
        assert!(a.iter().zip(b).all(|(x, y)| x == &-y));
    }
    // 1D, k = 5, L = 6: site 0 sees 4, 5, 0, 1, 2.
    assert_eq!(
        &Taps::Window { k: 5 }.table(&Lattice::new(1, 6))[0..5],
        &[4, 5, 0, 1, 2]
    );
}

#[test]
fn checkerboard() {
    let l = Lattice::new(2, 4);
    let m0 = l.mask(0);
    let m1 = l.mask(1);
    // (0,0) has even parity: frozen under parity 1, active under parity 0.
    assert_eq!((m0[0], m1[0]), (0.0, 1.0));
    assert_eq!((m0[1], m1[1]), (1.0, 0.0));
    // Each mask freezes half the sites, and the two are complementary.
    assert_eq!(m0.iter().sum::<f64>(), 8.0);
    assert!(m0.iter().zip(&m1).all(|(a, b)| a + b == 1.0));
    // Every neighbour of a frozen site is active: the checkerboard closes across the boundary.
    let hop = l.hop_table();
    for s in 0..16 {
        for h in &hop[s * 4..s * 4 + 4] {
            assert_ne!(m0[s], m0[*h as usize]);
        }
    }
}

/// The branches of a combinational convolution: every r-subset of the axes, in lexicographic
/// order, each a window k along its axes; the r = 1 windows together are the Laplacian's cross.
#[test]
fn axis_windows() {
    let axes = |nd, r| -> Vec<Vec<usize>> {
        Taps::branches(nd, 3, r)
            .into_iter()
            .map(|t| match t {
                Taps::Axes { axes, .. } => axes,
                _ => unreachable!(),
            })
            .collect()
    };
    assert_eq!(axes(2, 1), vec![vec![0], vec![1]]);
    assert_eq!(axes(3, 2), vec![vec![0, 1], vec![0, 2], vec![1, 2]]);
    assert_eq!(
        axes(4, 2),
        vec![
            vec![0, 1],
            vec![0, 2],
            vec![0, 3],
            vec![1, 2],
            vec![1, 3],
            vec![2, 3]
        ]
    );
    assert_eq!(axes(4, 3).len(), 4);
    assert_eq!(axes(4, 1).len(), 4);

    // 3D, k = 3, axes {0, 2}: nine offsets, row-major over axes 0 then 2, zero on axis 1;
    // tap t and tap 8 - t opposite.
    let t = Taps::Axes {
        k: 3,
        axes: vec![0, 2],
    };
    let offs = t.offsets(3);
    assert_eq!((t.count(3), t.row(), t.shape(3)), (9, 3, vec![3, 3]));
    assert_eq!(offs[0], vec![-1, 0, -1]);
    assert_eq!(offs[1], vec![-1, 0, 0]);
    assert_eq!(offs[3], vec![0, 0, -1]);
    for (a, b) in offs.iter().zip(offs.iter().rev()) {
        assert!(a.iter().zip(b).all(|(x, y)| x == &-y));
    }
    // Its table: site 5 = (0, 1, 1) of a 4^3 lattice sees (3, 1, 0) first = 52.
    let l = Lattice::new(3, 4);
    assert_eq!(t.table(&l)[5 * 9], 52);

    // The r = 1 windows of 4D: the centre and the 8 nearest neighbours, the Laplacian's cross.
    let mut cross: Vec<Vec<i64>> = Taps::branches(4, 3, 1)
        .iter()
        .flat_map(|b| b.offsets(4))
        .collect();
    cross.sort();
    cross.dedup();
    assert_eq!(cross.len(), 9);
    assert!(
        cross
            .iter()
            .all(|o| o.iter().map(|d| d.abs()).sum::<i64>() <= 1)
    );
}
