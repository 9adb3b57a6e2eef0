//! Where the trainer's CPU work runs: on rayon's pool, which also runs our kernels and the
//! matrix products.

/// Runs `f` on a worker thread of rayon's global pool (inline when already on one).
///
/// A parallel loop started from a thread outside the pool hands its work to the pool and sleeps
/// until it is done, and the pool's threads go to sleep again between ops: a training step has
/// thousands of such loops, and on 2 cores those hand-offs cost about a quarter of a tiny-preset
/// step. Started from a worker, a loop runs its first part on the calling thread while the
/// other workers steal the rest.
pub fn on_workers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}
