//! Streams and events: side work ordered against the main queue without blocking the host.
//! The protocol below is what a collective on a communication stream follows; on the CPU
//! every op has finished when it returns, so each step is immediate, but the same generic code
//! runs on every backend (the GPU version, with real side-stream work, is in `cuda.rs`).

use crate::harness::*;
use weft_kernels::*;

/// Main queue: `x = 2`; side stream: waits for it; main queue: waits for the side stream,
/// then `y = 3·x`. Returns `y` as the host sees it after waiting on the last event.
pub fn handoff<B: ElementwiseOps>(be: &B, n: usize) -> Result<HostVec> {
    let mut x = be.alloc(DType::F32, n)?;
    be.fill(B::view_mut(&mut x), 2.0, n)?;
    let side = be.new_stream()?;
    let written = be.record(None)?;
    be.wait(Some(&side), &written)?;
    // A collective would be enqueued on `side` here, reading and writing `x`.
    let done = be.record(Some(&side))?;
    be.wait(None, &done)?;
    let mut y = be.alloc(DType::F32, n)?;
    be.scale_forward(B::view_mut(&mut y), B::view(&x), 3.0, n)?;
    let last = be.record(None)?;
    be.sync_event(&last)?;
    // An event may be waited on again, by any queue.
    be.wait(Some(&side), &written)?;
    be.sync_event(&done)?;
    let mut host = zeros(DType::F32, n);
    be.download(B::view(&y), host.view_mut())?;
    Ok(host)
}

#[test]
fn side_streams_follow_the_events_they_wait_for() {
    let y = handoff(&cpu(), 1000).unwrap();
    assert_eq!(y, HostVec::from(vec![6.0f32; 1000]));
}
