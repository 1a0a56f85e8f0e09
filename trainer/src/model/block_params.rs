//! Where a block's tensors live: registration of a block's parameters in the [`Layout`] (names,
//! shapes, roles, initialization) and their offsets relative to the block's unit.

use super::spec::BlockSpec;
use crate::layout::{Init, Layout, Role, TpSplit};
use std::ops::Range;

/// Where a block's tensors live in its unit (offsets relative to the block's start).
#[derive(Clone, Debug)]
pub struct BlockParams {
    pub norm1: Option<Range<usize>>,
    pub norm2: Option<Range<usize>>,
    pub wq: Range<usize>,
    pub wk: Range<usize>,
    pub wv: Range<usize>,
    pub bq: Option<Range<usize>>,
    pub bk: Option<Range<usize>>,
    pub bv: Option<Range<usize>>,
    pub q_norm: Option<Range<usize>>,
    pub k_norm: Option<Range<usize>>,
    pub wo: Range<usize>,
    pub bo: Option<Range<usize>>,
    pub w1: Range<usize>,
    pub b1: Option<Range<usize>>,
    pub w2: Range<usize>,
    pub b2: Option<Range<usize>>,
    /// The six AdaLN chunks' weights `(C, C)` and biases `(C)`, in the order
    /// shift1, scale1, gate1, shift2, scale2, gate2.
    pub ada_w: Vec<Range<usize>>,
    pub ada_b: Vec<Range<usize>>,
}

fn split(r: &Range<usize>, parts: &[usize]) -> Vec<Range<usize>> {
    let mut start = r.start;
    parts
        .iter()
        .map(|&n| {
            start += n;
            start - n..start
        })
        .collect()
}

impl BlockParams {
    /// Add block `i`'s tensors to `l` (as one block range) and return where they are,
    /// relative to the block's start. `depth` scales the GPT's residual output projections by
    /// `1/√(2·depth)`.
    pub fn register(l: &mut Layout, i: usize, s: &BlockSpec, depth: usize) -> BlockParams {
        let start = l.next_offset();
        Self::add(l, i, s, depth).rebased(start)
    }

    fn rebased(self, start: usize) -> BlockParams {
        let o = |r: Option<Range<usize>>| r.map(|r| super::rebase(&r, start));
        let v = |r: Vec<Range<usize>>| r.iter().map(|r| super::rebase(r, start)).collect();
        BlockParams {
            norm1: o(self.norm1),
            norm2: o(self.norm2),
            wq: super::rebase(&self.wq, start),
            wk: super::rebase(&self.wk, start),
            wv: super::rebase(&self.wv, start),
            bq: o(self.bq),
            bk: o(self.bk),
            bv: o(self.bv),
            q_norm: o(self.q_norm),
            k_norm: o(self.k_norm),
            wo: super::rebase(&self.wo, start),
            bo: o(self.bo),
            w1: super::rebase(&self.w1, start),
            b1: o(self.b1),
            w2: super::rebase(&self.w2, start),
            b2: o(self.b2),
            ada_w: v(self.ada_w),
            ada_b: v(self.ada_b),
        }
    }

    fn add(l: &mut Layout, i: usize, s: &BlockSpec, depth: usize) -> BlockParams {
        l.block(|l| {
            let p = format!("blocks.{i}");
            let (c, hd) = (s.c, s.hd);
            let fan = |n: usize| Init::Normal(1.0 / (n as f64).sqrt());
            let resid = if s.adaln {
                1.0
            } else {
                1.0 / (2.0 * depth as f64).sqrt()
            };
            let vec = |l: &mut Layout, name: String, n: usize, init| l.add(name, &[n], Role::Vector, init);
            let norm1 = (!s.adaln).then(|| vec(l, format!("{p}.norm1.weight"), c, Init::Ones));
            // Local sizes: heads and hidden units are this tp rank's share.
            let qkv_rows = (s.nh + 2 * s.nkv) * hd;
            let qkv_split = TpSplit::Rows(vec![s.nh * hd, s.nkv * hd, s.nkv * hd]);
            let qkv = l.add_split(
                format!("{p}.attn.qkv.weight"),
                &[qkv_rows, c],
                Role::Hidden,
                fan(c),
                qkv_split.clone(),
            );
            let qkv_b = s.bias.then(|| {
                let name = format!("{p}.attn.qkv.bias");
                l.add_split(name, &[qkv_rows], Role::Vector, Init::Zeros, qkv_split)
            });
            let (q_norm, k_norm) = if s.qk_norm {
                (
                    Some(vec(l, format!("{p}.attn.q_norm.weight"), hd, Init::Ones)),
                    Some(vec(l, format!("{p}.attn.k_norm.weight"), hd, Init::Ones)),
                )
            } else {
                (None, None)
            };
            let nq = s.nh * hd;
            let wo_init = Init::Normal(resid / ((nq * s.tp) as f64).sqrt());
            let wo = l.add_split(
                format!("{p}.attn.out.weight"),
                &[c, nq],
                Role::Hidden,
                wo_init,
                TpSplit::Cols,
            );
            let bo = s
                .bias
                .then(|| vec(l, format!("{p}.attn.out.bias"), c, Init::Zeros));
            let norm2 = (!s.adaln).then(|| vec(l, format!("{p}.norm2.weight"), c, Init::Ones));
            let f1 = s.fc1_out();
            let f1_split = TpSplit::Rows(vec![s.hidden; f1 / s.hidden]);
            let w1 = l.add_split(
                format!("{p}.mlp.fc1.weight"),
                &[f1, c],
                Role::Hidden,
                fan(c),
                f1_split.clone(),
            );
            let b1 = s.bias.then(|| {
                let name = format!("{p}.mlp.fc1.bias");
                l.add_split(name, &[f1], Role::Vector, Init::Zeros, f1_split)
            });
            let w2_init = Init::Normal(resid / ((s.hidden * s.tp) as f64).sqrt());
            let w2 = l.add_split(
                format!("{p}.mlp.fc2.weight"),
                &[c, s.hidden],
                Role::Hidden,
                w2_init,
                TpSplit::Cols,
            );
            let b2 = s
                .bias
                .then(|| vec(l, format!("{p}.mlp.fc2.bias"), c, Init::Zeros));
            let (ada_w, ada_b) = if s.adaln {
                let aw = l.add(
                    format!("{p}.adaln.weight"),
                    &[6 * c, c],
                    Role::Hidden,
                    Init::Zeros,
                );
                let ab = l.add(format!("{p}.adaln.bias"), &[6 * c], Role::Vector, Init::Zeros);
                (split(&aw, &[c * c; 6]), split(&ab, &[c; 6]))
            } else {
                (vec![], vec![])
            };
            let qkv_parts = split(&qkv, &[nq * c, s.nkv * hd * c, s.nkv * hd * c]);
            let qkv_b_parts = qkv_b.map(|b| split(&b, &[nq, s.nkv * hd, s.nkv * hd]));
            let bpart = |i: usize| qkv_b_parts.as_ref().map(|v| v[i].clone());
            BlockParams {
                norm1,
                norm2,
                wq: qkv_parts[0].clone(),
                wk: qkv_parts[1].clone(),
                wv: qkv_parts[2].clone(),
                bq: bpart(0),
                bk: bpart(1),
                bv: bpart(2),
                q_norm,
                k_norm,
                wo,
                bo,
                w1,
                b1,
                w2,
                b2,
                ada_w,
                ada_b,
            }
        })
    }
}
