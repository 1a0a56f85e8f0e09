//! Layout moves on CPU.

use super::{with_float, CpuBackend, Real};
use crate::ops::{check, ShapeOps, SwapDims, ACTIVATION_FLOATS};
use crate::{HostMut, HostRef, Result};
use rayon::prelude::*;

pub fn swap_axes<T: Real>(out: &mut [T], x: &[T], d: SwapDims) {
    let n = d.inner;
    if n == 0 {
        return;
    }
    // Output row j (of B) holds A blocks of `inner`: block i comes from x[i][j].
    out.par_chunks_mut(d.a * n).enumerate().for_each(|(j, row)| {
        for (i, dst) in row.chunks_mut(n).enumerate() {
            let s = (i * d.b + j) * n;
            dst.copy_from_slice(&x[s..s + n]);
        }
    });
}

impl ShapeOps for CpuBackend {
    fn swap_axes(&self, out: HostMut<'_>, x: HostRef<'_>, d: SwapDims) -> Result<()> {
        let dt = check::swap_axes(ACTIVATION_FLOATS, &out, &x, &d)?;
        with_float!(dt, [out, x], T => swap_axes::<T>(T::get_mut(out), T::get(x), d));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backend, HostVec};

    #[test]
    fn swap_is_a_transpose_of_blocks_and_its_inverse_undoes_it() {
        let be = CpuBackend::new();
        let d = SwapDims { a: 3, b: 2, inner: 2 };
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let mut y = HostVec::from(vec![0f32; 12]);
        be.swap_axes(CpuBackend::view_mut(&mut y), (&x).into(), d)
            .unwrap();
        // x[i][j] = (i·2 + j)·2 + (0, 1); y[j][i] = x[i][j].
        assert_eq!(
            y,
            HostVec::from(vec![0f32, 1., 4., 5., 8., 9., 2., 3., 6., 7., 10., 11.])
        );
        let mut z = HostVec::from(vec![0f32; 12]);
        be.swap_axes(CpuBackend::view_mut(&mut z), CpuBackend::view(&y), d.inverse())
            .unwrap();
        assert_eq!(z, HostVec::from(x));
        let err = be.swap_axes(
            CpuBackend::view_mut(&mut z),
            CpuBackend::view(&y),
            SwapDims { a: 5, ..d },
        );
        assert!(err.unwrap_err().to_string().contains("swap_axes"));
    }
}
