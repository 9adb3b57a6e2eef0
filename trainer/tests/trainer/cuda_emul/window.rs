//! `window.cu`: the window partition and reverse against the CPU op, float32 and bfloat16, and
//! the reverse with the LeWin block's residual added, with its windows' gradient (float32).

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

/// (windows, x, scales, out, total, C, win, shift, H, W)
type ReverseAdd = unsafe extern "C" fn(
    *const f32,
    *const f32,
    *const f32,
    *mut f32,
    i64,
    i64,
    i32,
    i32,
    i32,
    i32,
);
/// (dy, scales, out, total, C, win, shift, H, W)
type PartitionScaled =
    unsafe extern "C" fn(*const f32, *const f32, *mut f32, i64, i64, i32, i32, i32, i32);

/// The reverse with the residual added and its windows' gradient: the CPU op's values and
/// gradients bit for bit, with per-image scales (one dropped) and with ones (no scales).
#[test]
fn the_window_reverse_add_kernels_run_as_the_cpu_op() {
    use candle_core::Var;
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = build("window", dir.path());
    // SAFETY: the signatures of these kernels in window.cu.
    let (reverse_add, partition_scaled) = unsafe {
        (
            lib.get::<ReverseAdd>(b"ifp_window_reverse_add_f32")
                .expect("reverse add"),
            lib.get::<PartitionScaled>(b"ifp_window_partition_scaled_f32")
                .expect("partition scaled"),
        )
    };
    for &(b, h, w, c, win, s) in &[(3, 6, 9, 5, 3, 1), (2, 8, 4, 2, 2, 0), (1, 4, 6, 3, 2, 7)] {
        let what = format!("b{b} {h}x{w} c{c} win{win} shift{s}");
        let grid = kernels::WindowGrid {
            win,
            shift: s,
            h,
            w,
        };
        let nw = (h / win) * (w / win);
        let var = |shape: (usize, usize, usize)| {
            Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &Device::Cpu).expect("randn"))
                .expect("var")
        };
        let (windows, x) = (var((b * nw, win * win, c)), var((b, h * w, c)));
        let dy = Tensor::randn(0f32, 1.0, (b, h * w, c), &Device::Cpu).expect("dy");
        let drawn: Vec<f32> = (0..b).map(|i| [1.25, 0.0, 1.0 / 0.9][i % 3]).collect();
        for scales in [Some(drawn.as_slice()), None] {
            let y = kernels::window_reverse_add(windows.as_tensor(), x.as_tensor(), scales, grid)
                .expect("cpu");
            let grads = (&y * &dy)
                .and_then(|t| t.sum_all()?.backward())
                .expect("backward");
            let dwin = values(grads.get(windows.as_tensor()).expect("windows' gradient"));
            let ones = vec![1f32; b];
            let sp = scales.unwrap_or(&ones).as_ptr();
            let (ws, xs, gs) = (
                values(windows.as_tensor()),
                values(x.as_tensor()),
                values(&dy),
            );
            let (mut got, mut got_dw) = (vec![f32::NAN; xs.len()], vec![f32::NAN; ws.len()]);
            let (total, c64) = (xs.len() as i64, c as i64);
            let [wi, si, hi, wd] = [win, s, h, w].map(|v| v as i32);
            // SAFETY: windows and out/dy hold the same b * H * W * C values, the scales b.
            unsafe {
                let (op, dwp) = (got.as_mut_ptr(), got_dw.as_mut_ptr());
                let (wp, xp, gp) = (ws.as_ptr(), xs.as_ptr(), gs.as_ptr());
                launch(&lib, || {
                    reverse_add(wp, xp, sp, op, total, c64, wi, si, hi, wd)
                });
                launch(&lib, || {
                    partition_scaled(gp, sp, dwp, total, c64, wi, si, hi, wd)
                });
            }
            let what = format!("{what} scales {scales:?}");
            assert_same(&got, &values(&y), &format!("reverse add {what}"));
            assert_same(&got_dw, &dwin, &format!("windows' gradient {what}"));
        }
    }
}
