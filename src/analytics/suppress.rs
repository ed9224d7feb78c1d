//! Small-cell suppression for one release of an aggregate table (pure; issue 12 groundwork).
//!
//! A release publishes cells (one per combination of group keys) and, optionally, margins
//! (sums over groups of cells: a row or column total, a day's total). Every published cell and
//! margin must count at least `k` distinct subjects (**primary suppression**). A suppressed
//! cell must not be recoverable from what is published: with additive measures (counts, sums),
//! the published margins are linear equations over the suppressed cells, and a suppressed cell
//! is recoverable exactly when its unit vector lies in the row space of those equations
//! ([`recoverable`]). **Complementary suppression** suppresses further cells (the smallest in a
//! margin that gives a cell away; the margin itself when nothing is left to suppress in it)
//! until no suppressed cell is recoverable.
//!
//! What is suppressed is published as null, never as a small number.

/// One cell of the release: its distinct subjects and its additive value (e.g. a count).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cell {
    pub subjects: u64,
    pub value: f64,
}

/// A published margin: the sum of `members` (cell indices), with its own distinct subjects
/// (not the sum of its cells': a person may be in several).
#[derive(Debug, Clone, PartialEq)]
pub struct Margin {
    pub members: Vec<usize>,
    pub subjects: u64,
}

/// What a release withholds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Withheld {
    pub cells: Vec<bool>,
    pub margins: Vec<bool>,
}

/// Decide what to withhold so that every published cell and margin counts at least `k`
/// distinct subjects and no withheld cell can be recovered from the published margins.
pub fn suppress(cells: &[Cell], margins: &[Margin], k: u64) -> Withheld {
    let mut w = Withheld {
        cells: cells.iter().map(|c| c.subjects < k).collect(),
        margins: margins.iter().map(|m| m.subjects < k).collect(),
    };
    loop {
        let exposed = recoverable(cells.len(), margins, &w);
        let Some(&cell) = exposed.first() else {
            return w;
        };
        // The published margins through the exposed cell: in the first one that still has an
        // unsuppressed cell, suppress its smallest; if none has, withhold a margin instead.
        let through: Vec<usize> = (0..margins.len())
            .filter(|&g| !w.margins[g] && margins[g].members.contains(&cell))
            .collect();
        let candidate = through.iter().find_map(|&g| {
            margins[g]
                .members
                .iter()
                .copied()
                .filter(|&i| !w.cells[i])
                .min_by(|&a, &b| {
                    (cells[a].subjects, cells[a].value.to_bits(), a).cmp(&(
                        cells[b].subjects,
                        cells[b].value.to_bits(),
                        b,
                    ))
                })
        });
        match candidate {
            Some(i) => w.cells[i] = true,
            None => {
                let g = *through
                    .first()
                    .expect("a recoverable cell lies in a published margin");
                w.margins[g] = true;
            }
        }
    }
}

/// The withheld cells whose value the published margins determine (given the published
/// cells), in index order. Gaussian elimination over the withheld cells.
pub fn recoverable(n_cells: usize, margins: &[Margin], w: &Withheld) -> Vec<usize> {
    let unknowns: Vec<usize> = (0..n_cells).filter(|&i| w.cells[i]).collect();
    if unknowns.is_empty() {
        return Vec::new();
    }
    let col = |cell: usize| unknowns.iter().position(|&u| u == cell);
    // Equations: one per published margin, over the withheld cells it contains.
    let mut rows: Vec<Vec<f64>> = margins
        .iter()
        .enumerate()
        .filter(|(g, _)| !w.margins[*g])
        .map(|(_, m)| {
            let mut r = vec![0.0; unknowns.len()];
            for &c in &m.members {
                if let Some(j) = col(c) {
                    r[j] += 1.0;
                }
            }
            r
        })
        .filter(|r| r.iter().any(|&x| x != 0.0))
        .collect();
    // Reduced row echelon form.
    let mut pivots: Vec<usize> = Vec::new();
    let mut top = 0;
    for j in 0..unknowns.len() {
        let Some(p) = (top..rows.len()).max_by(|&a, &b| {
            rows[a][j]
                .abs()
                .partial_cmp(&rows[b][j].abs())
                .expect("finite")
        }) else {
            break;
        };
        if rows[p][j].abs() < 1e-9 {
            continue;
        }
        rows.swap(top, p);
        let pv = rows[top][j];
        for x in rows[top].iter_mut() {
            *x /= pv;
        }
        for r in 0..rows.len() {
            if r != top && rows[r][j].abs() > 1e-12 {
                let f = rows[r][j];
                let (a, b) = if r < top {
                    let (lo, hi) = rows.split_at_mut(top);
                    (&mut lo[r], &hi[0])
                } else {
                    let (lo, hi) = rows.split_at_mut(r);
                    (&mut hi[0], &lo[top])
                };
                for (x, y) in a.iter_mut().zip(b.iter()) {
                    *x -= f * y;
                }
            }
        }
        pivots.push(j);
        top += 1;
    }
    // e_j is in the row space exactly when, in RREF, some row is e_j: its pivot is j and every
    // other entry is zero.
    let mut out = Vec::new();
    for (r, &j) in pivots.iter().enumerate() {
        if rows[r]
            .iter()
            .enumerate()
            .all(|(c, &x)| c == j || x.abs() < 1e-9)
        {
            out.push(unknowns[j]);
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(subjects: u64) -> Cell {
        Cell {
            subjects,
            value: subjects as f64,
        }
    }

    /// An r × c table with row and column margins (and the grand total when `total`).
    fn grid(
        r: usize,
        c: usize,
        subjects: impl Fn(usize, usize) -> u64,
        total: bool,
    ) -> (Vec<Cell>, Vec<Margin>) {
        let cells: Vec<Cell> = (0..r * c).map(|i| cell(subjects(i / c, i % c))).collect();
        let sum = |m: &[usize]| m.iter().map(|&i| cells[i].subjects).sum::<u64>();
        let mut margins = Vec::new();
        for i in 0..r {
            let members: Vec<usize> = (0..c).map(|j| i * c + j).collect();
            margins.push(Margin {
                subjects: sum(&members),
                members,
            });
        }
        for j in 0..c {
            let members: Vec<usize> = (0..r).map(|i| i * c + j).collect();
            margins.push(Margin {
                subjects: sum(&members),
                members,
            });
        }
        if total {
            let members: Vec<usize> = (0..r * c).collect();
            margins.push(Margin {
                subjects: sum(&members),
                members,
            });
        }
        (cells, margins)
    }

    #[test]
    fn one_small_cell_in_a_row_with_a_total_takes_a_second_one_with_it() {
        let (cells, mut margins) = grid(1, 3, |_, j| [3, 40, 50][j], false);
        margins.truncate(1); // the row's total only (a 1-row table's column totals are its cells)
        // Without complementary suppression, 3 = total − 40 − 50.
        let primary = Withheld {
            cells: vec![true, false, false],
            margins: vec![false; margins.len()],
        };
        assert_eq!(recoverable(3, &margins, &primary), vec![0]);
        let w = suppress(&cells, &margins, 10);
        assert_eq!(
            w.cells,
            vec![true, true, false],
            "the smallest other cell goes too"
        );
        assert!(recoverable(3, &margins, &w).is_empty());
    }

    #[test]
    fn a_bridge_between_two_suppressed_rectangles_is_recoverable() {
        // Two 2×2 rectangles of withheld cells joined by one cell: every row and column holds
        // two withheld cells, yet the joining cell is determined by the margins.
        let (_, margins) = grid(4, 4, |_, _| 50, false);
        let mut cells = vec![false; 16];
        for i in [0, 1, 4, 5, 10, 11, 14, 15, 6] {
            cells[i] = true;
        }
        // Row 1 then holds 4, 5, 6 and column 2 holds 6, 10, 14.
        let w = Withheld {
            cells,
            margins: vec![false; margins.len()],
        };
        assert_eq!(recoverable(16, &margins, &w), vec![6]);
    }

    /// Property: over random small tables with row, column and grand totals, every published
    /// cell and margin counts ≥ k subjects and no withheld cell is recoverable.
    #[test]
    fn random_tables_publish_nothing_small_and_nothing_recoverable() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for case in 0..400 {
            let r = 1 + (next() % 5) as usize;
            let c = 1 + (next() % 5) as usize;
            let k = 2 + next() % 10;
            let values: Vec<u64> = (0..r * c).map(|_| next() % 30).collect();
            let (cells, margins) = grid(r, c, |i, j| values[i * c + j], case % 2 == 0);
            let w = suppress(&cells, &margins, k);
            for (i, cl) in cells.iter().enumerate() {
                assert!(
                    w.cells[i] || cl.subjects >= k,
                    "case {case}: small cell {i} published"
                );
            }
            for (g, m) in margins.iter().enumerate() {
                assert!(
                    w.margins[g] || m.subjects >= k,
                    "case {case}: small margin {g} published"
                );
            }
            let exposed = recoverable(cells.len(), &margins, &w);
            assert!(
                exposed.is_empty(),
                "case {case}: {exposed:?} recoverable ({r}×{c}, k {k}, {values:?})"
            );
            // Independent check by brute force for tiny tables: moving one withheld cell by
            // +1 and some other withheld cells to compensate must keep every published margin
            // — i.e. each withheld cell has a non-trivial kernel vector through it.
            if r * c <= 6 {
                assert!(
                    kernel_through_each(&cells, &margins, &w),
                    "case {case}: a withheld cell is pinned"
                );
            }
        }
    }

    /// For each withheld cell, some integer change in {-1, 0, 1} of the withheld cells, not
    /// zero on it, leaves every published margin unchanged.
    fn kernel_through_each(cells: &[Cell], margins: &[Margin], w: &Withheld) -> bool {
        let hidden: Vec<usize> = (0..cells.len()).filter(|&i| w.cells[i]).collect();
        let n = hidden.len();
        let mut free = vec![false; n];
        let mut v = vec![0i64; n];
        let total = 3usize.pow(n as u32);
        for code in 1..total {
            let mut x = code;
            for d in v.iter_mut() {
                *d = (x % 3) as i64 - 1;
                x /= 3;
            }
            let keeps = margins.iter().enumerate().all(|(g, m)| {
                w.margins[g]
                    || m.members
                        .iter()
                        .filter_map(|c| hidden.iter().position(|h| h == c))
                        .map(|j| v[j])
                        .sum::<i64>()
                        == 0
            });
            if keeps {
                for j in 0..n {
                    if v[j] != 0 {
                        free[j] = true;
                    }
                }
            }
        }
        free.iter().all(|&f| f)
    }
}
