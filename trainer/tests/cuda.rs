//! The models on the CUDA backend. That `Dit<CudaBackend>`, `Gpt<CudaBackend>` and the
//! training loop on CUDA compile is checked by building this file with `--features cuda`
//! (`CudaBackend: Ops`); running them needs an NVIDIA GPU, so those tests are `#[ignore]`d:
//! `cargo test -p weft-trainer --features cuda -- --ignored gpu_`.

#[cfg(any(feature = "cuda", feature = "cuda-12"))]
mod gpu {
    use crate::common::*;
    use weft_kernels::cuda::CudaBackend;
    use weft_kernels::{Backend, CpuBackend, DType};
    use weft_parallel::Comm;
    use weft_trainer::model::{Dit, Gpt};
    use weft_trainer::train::{train_rank_on, RankOutcome, TrainOptions};
    use weft_trainer::{Config, Result};

    /// The training loop, instantiated on CUDA (what a CUDA `train_rank` runs).
    pub fn train_on_cuda(
        cfg: &Config,
        be: &CudaBackend,
        control: &dyn Comm<CpuBackend>,
        data: &dyn Comm<CudaBackend>,
    ) -> Result<RankOutcome> {
        train_rank_on::<CudaBackend>(cfg, be, control, data, TrainOptions::default())
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: cargo test -p weft-trainer --features cuda -- --ignored gpu_"]
    fn gpu_dit_and_gpt_build_on_cuda() {
        let be = CudaBackend::new(0).expect("this test needs a CUDA GPU");
        for dt in [DType::F32, DType::BF16] {
            Dit::<CudaBackend>::new(&be, &tiny_dit(), 2, dt, false).unwrap();
            Gpt::<CudaBackend>::new(&be, &tiny_gpt(), 2, dt, false).unwrap();
        }
        be.synchronize().unwrap();
        // The loop is generic over the backend; naming its CUDA instance keeps it compiled.
        let _ = train_on_cuda as fn(_, _, _, _) -> _;
    }
}
