//! The stack of blocks between a model's input layers and its head: the residual stream of
//! every block boundary, the blocks' saved activations (or one shared set when recomputing),
//! the gradient scratch, and the RoPE table.

use super::block::{Block, BlockActs, BlockGrads, BlockSpec, Shared};
use super::{r, w, Alloc, Par, Weights};
use crate::Result;
use weft_kernels::{Backend, Ops};

pub struct Trunk<B: Backend> {
    pub blocks: Vec<Block>,
    /// `L+1 × (B, T, C)`: `inputs[l]` feeds block `l`; `inputs[L]` is the trunk's output.
    inputs: Vec<B::Buffer>,
    /// One per block, or a single set re-filled in backward when recomputing.
    acts: Vec<BlockActs<B>>,
    grads: BlockGrads<B>,
    recompute: bool,
    cos: B::Buffer, // (T, HD/2) of the cp rank's token positions
    sin: B::Buffer, // (T, HD/2)
    pub par: Par<B>,
}

impl<B: Ops> Trunk<B> {
    /// `cos`/`sin`: the RoPE table `(T, HD/2)` of the cp rank's tokens in f64 (narrowed here
    /// to the model dtype, or to f32 under bf16 as the kernels' contract asks).
    pub(crate) fn new(
        al: &Alloc<'_, B>,
        blocks: Vec<Block>,
        recompute: bool,
        (cos, sin): (&[f64], &[f64]),
        par: Par<B>,
    ) -> Result<Self> {
        let s: BlockSpec = blocks[0].spec;
        let n = s.sp_rows() * s.c;
        let inputs = (0..=blocks.len()).map(|_| al.buf(n)).collect::<Result<_>>()?;
        let sets = if recompute { 1 } else { blocks.len() };
        let acts = (0..sets).map(|_| BlockActs::new(al, &s)).collect::<Result<_>>()?;
        let table = |v: &[f64]| -> Result<B::Buffer> {
            let mut b = al.stat(v.len())?;
            super::upload_f64(al.be, v, w::<B>(&mut b))?;
            Ok(b)
        };
        Ok(Trunk {
            grads: BlockGrads::new(al, &s)?,
            blocks,
            inputs,
            acts,
            recompute,
            cos: table(cos)?,
            sin: table(sin)?,
            par,
        })
    }

    /// Elements [`Trunk::new`] allocates for `depth` blocks of `s` (counted without
    /// allocating): the residual boundaries, saved activations, gradient scratch and the RoPE
    /// table of the cp rank's `s.t` tokens, as `(values, statistics)` (the table is kept
    /// like statistics: f32 under bf16).
    pub(crate) fn elems(s: &BlockSpec, depth: usize, recompute: bool) -> (f64, f64) {
        let sets = if recompute { 1 } else { depth } as f64;
        let (acts, stats) = super::acts::act_elems(s);
        let values =
            (depth + 1) as f64 * s.sp_rows() as f64 * s.c as f64 + sets * acts + super::acts::grad_elems(s);
        (values, sets * stats + 2.0 * s.t as f64 * (s.hd / 2) as f64)
    }

    /// The residual stream entering block 0 `(B, T/tp, C)` (this rank's tokens), for the
    /// input layers to write.
    pub fn input_mut(&mut self) -> B::Mut<'_> {
        w::<B>(&mut self.inputs[0])
    }
    /// The residual stream entering block 0.
    pub fn input(&self) -> B::Ref<'_> {
        r::<B>(&self.inputs[0])
    }
    /// The trunk's output `(B, T, C)`.
    pub fn output(&self) -> B::Ref<'_> {
        r::<B>(self.inputs.last().expect("L+1 boundaries"))
    }

    fn run_block(&mut self, be: &B, p: B::Ref<'_>, l: usize, cond: Option<B::Ref<'_>>) -> Result<()> {
        let Trunk {
            blocks,
            inputs,
            acts,
            grads,
            recompute,
            cos,
            sin,
            par,
        } = self;
        let (head, tail) = inputs.split_at_mut(l + 1);
        let a = &mut acts[if *recompute { 0 } else { l }];
        let sh = Shared {
            cos: r::<B>(cos),
            sin: r::<B>(sin),
            cond,
            par,
        };
        blocks[l].forward(be, p, r::<B>(&head[l]), w::<B>(&mut tail[0]), a, grads, &sh)
    }

    /// Block `l` is unit `l + 1` of the weights (unit 0 holds the input layers).
    pub fn forward(&mut self, be: &B, wt: &mut dyn Weights<B>, cond: Option<B::Ref<'_>>) -> Result<()> {
        let n = self.blocks.len();
        for l in 0..n {
            if l + 1 < n {
                wt.prefetch(be, l + 2)?;
            }
            let p = wt.get(be, l + 1)?;
            self.run_block(be, p, l, cond)?;
            wt.release(be, l + 1)?;
        }
        Ok(())
    }

    /// `dres`: on entry `d output`, on exit `d input`. `dcond` accumulates `d silu(c)`.
    pub fn backward(
        &mut self,
        be: &B,
        wt: &mut dyn Weights<B>,
        dres: &mut B::Buffer,
        cond: Option<B::Ref<'_>>,
        mut dcond: Option<&mut B::Buffer>,
    ) -> Result<()> {
        for l in (0..self.blocks.len()).rev() {
            if l > 0 {
                wt.prefetch(be, l)?;
            }
            let (p, mut dp) = wt.get_mut(be, l + 1)?;
            if self.recompute {
                // Re-run the block from its saved input (rewrites its output with the same bits).
                self.run_block(be, p, l, cond)?;
            }
            let Trunk {
                blocks,
                inputs,
                acts,
                grads,
                recompute,
                cos,
                sin,
                par,
            } = self;
            let a = &acts[if *recompute { 0 } else { l }];
            let sh = Shared {
                cos: r::<B>(cos),
                sin: r::<B>(sin),
                cond,
                par,
            };
            let dc = dcond.as_deref_mut();
            blocks[l].backward(be, p, B::rb(&mut dp), r::<B>(&inputs[l]), dres, a, grads, &sh, dc)?;
            drop(dp);
            wt.grads_done(be, l + 1)?;
            wt.release(be, l + 1)?;
        }
        Ok(())
    }

    pub fn flops(&self) -> f64 {
        self.blocks.iter().map(|b| b.spec.flops()).sum()
    }
}
