//! `window.cu`: the window partition and reverse against the CPU op, float32 and bfloat16.

use candle_core::{Device, Tensor};
use half::bf16;
use ifp_trainer::kernels;
use libloading::{Library, Symbol};

use super::{assert_same, build, launch, values};

type Shuffle<T> = unsafe extern "C" fn(*const T, *mut T, i64, i64, i32, i32, i32, i32, i32);

/// The emulated `ifp_window_<suffix>` of window.cu on `src` (rows of `c` values).
fn emulated<T: Copy>(
    lib: &Library,
    name: &str,
    src: &[T],
    c: usize,
    fill: T,
    args: [i32; 5],
) -> Vec<T> {
    let mut out = vec![fill; src.len()];
    // SAFETY: the signature of ifp_window_* in window.cu; `out` has `src`'s size, which the
    // kernel reads and writes for the image these arguments describe (checked by the callers).
    unsafe {
        let f: Symbol<Shuffle<T>> = lib.get(name.as_bytes()).expect("kernel");
        let o = out.as_mut_ptr();
        let [win, s, h, w, reverse] = args;
        let (total, c) = (src.len() as i64, c as i64);
        launch(lib, || f(src.as_ptr(), o, total, c, win, s, h, w, reverse));
    }
    out
}

#[test]
fn the_window_kernels_run_as_the_cpu_op() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = build("window", dir.path());
    // (batch, H, W, channels, window, shift): shifted, not, non-square, shift past the side.
    for &(b, h, w, c, win, s) in &[(2, 6, 9, 5, 3, 1), (1, 8, 4, 2, 2, 0), (1, 4, 6, 3, 2, 7)] {
        let x = Tensor::randn(0f32, 1.0, (b, h * w, c), &Device::Cpu).expect("x");
        let grid = kernels::WindowGrid {
            win,
            shift: s,
            h,
            w,
        };
        let windows = kernels::window_partition(&x, grid).expect("cpu partition");
        let back = kernels::window_reverse(&windows, grid).expect("cpu reverse");
        let what = format!("b{b} {h}x{w} c{c} win{win} shift{s}");
        let (xs, ws) = (values(&x), values(&windows));
        let dims = |reverse: i32| [win as i32, s as i32, h as i32, w as i32, reverse];
        let got = emulated(&lib, "ifp_window_f32", &xs, c, f32::NAN, dims(0));
        assert_same(&got, &ws, &format!("partition {what}"));
        let got = emulated(&lib, "ifp_window_f32", &ws, c, f32::NAN, dims(1));
        assert_same(&got, &values(&back), &format!("reverse {what}"));

        // bfloat16: the same permutation of the same bits.
        let to_bf16 = |v: &[f32]| v.iter().map(|x| bf16::from_f32(*x)).collect::<Vec<_>>();
        let got = emulated(
            &lib,
            "ifp_window_bf16",
            &to_bf16(&xs),
            c,
            bf16::NAN,
            dims(0),
        );
        assert_same(&got, &to_bf16(&ws), &format!("bf16 partition {what}"));
        let got = emulated(
            &lib,
            "ifp_window_bf16",
            &to_bf16(&ws),
            c,
            bf16::NAN,
            dims(1),
        );
        assert_same(&got, &to_bf16(&xs), &format!("bf16 reverse {what}"));
    }
}
