//! 16-bit arguments on the CPU, done once for every op: each bf16 (or f16) view of a call is
//! widened to an f32 working copy (exact), the f32 kernel runs, and each written view is
//! rounded back to its dtype once, to nearest even — what a GPU kernel that loads bf16,
//! computes in f32 and stores bf16 does. Written views are widened with their current contents,
//! so an accumulating output (`+=`) adds in f32 and is rounded once. f32 and f64 views pass
//! through untouched (statistics and f32 parameter gradients of a bf16 call are written in
//! place).

use crate::{bf16_to_f32, f32_to_bf16_rne, DType, HostMut, HostRef};
use half::f16;

/// Widen any float view to f32 (exact for the 16-bit types).
pub(crate) fn widen(v: HostRef<'_>) -> Vec<f32> {
    match v {
        HostRef::F32(s) => s.to_vec(),
        HostRef::BF16(s) => s.iter().map(|&x| bf16_to_f32(x)).collect(),
        HostRef::F16(s) => s.iter().map(|x| x.to_f32()).collect(),
        HostRef::F64(s) => s.iter().map(|&x| x as f32).collect(),
        other => unreachable!("dtype {} passed the argument checks", other.dtype()),
    }
}

/// Store f32 values into a float view, rounding to nearest even.
pub(crate) fn narrow(src: &[f32], dst: HostMut<'_>) {
    match dst {
        HostMut::F32(d) => d.copy_from_slice(src),
        HostMut::BF16(d) => d.iter_mut().zip(src).for_each(|(d, &s)| *d = f32_to_bf16_rne(s)),
        HostMut::F16(d) => d.iter_mut().zip(src).for_each(|(d, &s)| *d = f16::from_f32(s)),
        HostMut::F64(d) => d.iter_mut().zip(src).for_each(|(d, &s)| *d = s as f64),
        other => unreachable!("dtype {} passed the argument checks", other.dtype()),
    }
}

fn is_16bit(dt: DType) -> bool {
    matches!(dt, DType::BF16 | DType::F16)
}

/// A read argument: an f32 copy of a 16-bit view, or the view itself.
pub(crate) struct WideRef<'a> {
    orig: HostRef<'a>,
    copy: Option<Vec<f32>>,
}

/// A written argument: an f32 copy of a 16-bit view (with its contents), rounded back into the
/// view by [`Wide::finish`]; or the view itself.
pub(crate) struct WideMut<'a> {
    orig: HostMut<'a>,
    copy: Option<Vec<f32>>,
}

/// A view that can be given to an f32 kernel.
pub(crate) trait Widen {
    type Wide: Wide;
    fn widen(self) -> Self::Wide;
}

/// The working copy of a view: what the kernel reads or writes, then stores back.
pub(crate) trait Wide {
    type View<'s>
    where
        Self: 's;
    /// The f32 (or untouched f32/f64) view the kernel uses.
    fn view(&mut self) -> Self::View<'_>;
    /// Round a written copy back into its view (nothing for read arguments).
    fn finish(self);
}

impl<'a> Widen for HostRef<'a> {
    type Wide = WideRef<'a>;
    fn widen(self) -> WideRef<'a> {
        let copy = is_16bit(self.dtype()).then(|| widen(self));
        WideRef { orig: self, copy }
    }
}

impl<'a> Widen for HostMut<'a> {
    type Wide = WideMut<'a>;
    fn widen(self) -> WideMut<'a> {
        let copy = is_16bit(self.dtype()).then(|| widen(self.as_ref()));
        WideMut { orig: self, copy }
    }
}

impl<V: Widen> Widen for Option<V> {
    type Wide = Option<V::Wide>;
    fn widen(self) -> Option<V::Wide> {
        self.map(Widen::widen)
    }
}

impl Wide for WideRef<'_> {
    type View<'s>
        = HostRef<'s>
    where
        Self: 's;
    fn view(&mut self) -> HostRef<'_> {
        match &self.copy {
            Some(c) => HostRef::F32(c),
            None => self.orig,
        }
    }
    fn finish(self) {}
}

impl Wide for WideMut<'_> {
    type View<'s>
        = HostMut<'s>
    where
        Self: 's;
    fn view(&mut self) -> HostMut<'_> {
        match &mut self.copy {
            Some(c) => HostMut::F32(c),
            None => self.orig.rb(),
        }
    }
    fn finish(self) {
        if let Some(c) = self.copy {
            narrow(&c, self.orig);
        }
    }
}

impl<W: Wide> Wide for Option<W> {
    type View<'s>
        = Option<W::View<'s>>
    where
        Self: 's;
    fn view(&mut self) -> Option<W::View<'_>> {
        self.as_mut().map(Wide::view)
    }
    fn finish(self) {
        if let Some(w) = self {
            w.finish();
        }
    }
}

/// Runs `$body` with `$T` bound to the Rust type the call computes in: `f32` or `f64` as
/// [`with_real`](super::with_real), and `f32` for 16-bit activations, with every view listed
/// (read or written, plain or optional) replaced by its f32 working copy for the body and the
/// written ones rounded back after it. Every float view the body touches must be listed.
macro_rules! with_float {
    ($dt:expr, [$($v:ident),* $(,)?], $T:ident => $body:expr) => {
        match $dt {
            $crate::DType::BF16 | $crate::DType::F16 => {
                $(let mut $v = $crate::cpu::widen::Widen::widen($v);)*
                let r = {
                    $(let $v = $crate::cpu::widen::Wide::view(&mut $v);)*
                    type $T = f32;
                    $body
                };
                $($crate::cpu::widen::Wide::finish($v);)*
                r
            }
            _ => $crate::cpu::with_real!($dt, $T => $body),
        }
    };
}
pub(crate) use with_float;
