//! Where the trainer's CPU work runs: on rayon's pool, which also runs our kernels and the
//! matrix products.

/// Runs `f` on a worker thread of rayon's global pool (inline when already on one).
///
/// A parallel loop started from a thread outside the pool hands its work to the pool and sleeps
/// until it is done, and the pool's threads go to sleep again between ops: a training step has
/// thousands of such loops, and on 2 cores those hand-offs cost about a quarter of a tiny-preset
/// step. Started from a worker, a loop runs its first part on the calling thread while the
/// other workers steal the rest.
///
/// The caller's op settings (autocast, the kernel switch) go with `f`: the worker that runs it
/// may be waiting inside another job's work when it picks `f` up.
pub fn on_workers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let settings = crate::kernels::Settings::current();
    rayon::scope(|_| settings.apply(f))
}

#[cfg(test)]
mod tests {
    use candle_core::DType;

    use super::on_workers;
    use crate::kernels::{amp, Settings};

    #[test]
    fn work_runs_under_its_callers_settings_on_any_thread() {
        // From outside the pool, the worker that runs the closure sees the caller's autocast.
        let seen = amp::autocast(Some(DType::BF16), || on_workers(amp::low_dtype));
        assert_eq!(seen, Some(DType::BF16));
        // A worker busy under one job's autocast runs another job's work under that job's
        // settings, and gets its own back afterwards.
        let (inner, after) = on_workers(|| {
            amp::autocast(Some(DType::BF16), || {
                let plain = amp::autocast(None, Settings::current);
                (plain.apply(amp::low_dtype), amp::low_dtype())
            })
        });
        assert_eq!((inner, after), (None, Some(DType::BF16)));
        assert_eq!(
            amp::low_dtype(),
            None,
            "the caller's own setting is untouched"
        );
    }

    #[test]
    fn the_cuda_switch_travels_with_the_work() {
        use crate::kernels::{cuda_fused, set_cuda_fused};
        let own = cuda_fused();
        set_cuda_fused(!own);
        let seen = on_workers(cuda_fused);
        // Applied on this thread too, a caller's settings are put back afterwards.
        let back = Settings::current();
        set_cuda_fused(own);
        let after = back.apply(cuda_fused);
        assert_eq!((seen, after, cuda_fused()), (!own, !own, own));
    }
}
