//! The shapes a self-test runs at: small ones for CI (`--quick`, seconds on a laptop CPU), and
//! the shapes a GPU trains at.

use serde::Serialize;

/// The accuracy shapes (every op runs on the CPU in f64 too, so they stay moderate) and the
/// throughput shapes.
#[derive(Clone, Debug, Serialize)]
pub struct Sizes {
    /// `quick` or `full`.
    pub profile: &'static str,
    /// Tokens of a layer (`N` of the row-wise ops, `M` of the matmuls).
    pub rows: usize,
    /// Model width `C`.
    pub c: usize,
    /// MLP hidden width.
    pub hidden: usize,
    /// Vocabulary of the loss and embedding.
    pub vocab: usize,
    /// Batch of the conditioning (AdaLN) and attention.
    pub batch: usize,
    /// Attention: tokens, query heads, key/value heads, head dim.
    pub t: usize,
    pub nh: usize,
    pub nkv: usize,
    pub hd: usize,
    /// Video `(T, H, W, C)` cut into `2×2×2` patches.
    pub video: [usize; 4],
    /// Elements of the optimizer's flat range.
    pub flat: usize,
    /// The reference square bf16 GEMM: `peak × peak × peak`.
    pub peak: usize,
    /// Rows (tokens) of the transformer-layer GEMMs, and the divisor of their widths.
    pub gemm_rows: usize,
    pub gemm_shrink: usize,
    /// Attention throughput: sequence lengths, tokens per batch (B = tokens / T, at least 1),
    /// query heads, head dim.
    pub attn_t: Vec<usize>,
    pub attn_tokens: usize,
    pub attn_heads: usize,
    pub attn_hd: usize,
    /// Minimum measuring time per throughput case, in milliseconds.
    pub min_ms: u64,
}

impl Sizes {
    /// Small shapes: the whole suite in seconds on a CPU.
    pub fn quick() -> Self {
        Sizes {
            profile: "quick",
            rows: 64,
            c: 128,
            hidden: 352,
            vocab: 512,
            batch: 2,
            t: 64,
            nh: 4,
            nkv: 2,
            hd: 128,
            video: [4, 8, 8, 4],
            flat: 4096,
            peak: 256,
            gemm_rows: 128,
            gemm_shrink: 32,
            attn_t: vec![128, 256],
            attn_tokens: 256,
            attn_heads: 2,
            attn_hd: 128,
            min_ms: 20,
        }
    }

    /// The shapes a GPU trains at: GEMMs of Llama-3-8B and DiT-XL layers over 8192 tokens,
    /// against an 8192³ bf16 GEMM; attention at T = 4k–32k with head dim 128 and 16 heads over
    /// 16k tokens per batch (the flash-attention benchmark's setting).
    pub fn full() -> Self {
        Sizes {
            profile: "full",
            rows: 512,
            c: 1024,
            hidden: 2816,
            vocab: 8192,
            batch: 2,
            t: 512,
            nh: 8,
            nkv: 2,
            hd: 128,
            video: [8, 16, 16, 8],
            flat: 1 << 20,
            peak: 8192,
            gemm_rows: 8192,
            gemm_shrink: 1,
            attn_t: vec![4096, 8192, 16384, 32768],
            attn_tokens: 16384,
            attn_heads: 16,
            attn_hd: 128,
            min_ms: 300,
        }
    }
}
