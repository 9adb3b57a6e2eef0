//! `conv.cu`: im2col and col2im against the CPU ops, float32 and bfloat16.

use candle_core::{Device, Tensor};
use half::bf16;
use ifp_trainer::kernels;
use libloading::{Library, Symbol};

use super::{assert_same, build, launch, values};

type Gather<T> = unsafe extern "C" fn(*const T, *mut T, i64, i32, i32, i32, i32);

/// The emulated `ifp_<name>_<suffix>` of conv.cu over `total` outputs.
fn emulated_gather<T: Copy>(
    lib: &Library,
    name: &str,
    src: &[T],
    total: usize,
    fill: T,
    dims: [i32; 4],
) -> Vec<T> {
    let mut out = vec![fill; total];
    // SAFETY: the signature of ifp_im2col_* / ifp_col2im_* in conv.cu; `src` and `out` have
    // the sizes the kernel indexes for `dims` (checked by the callers' shapes).
    unsafe {
        let f: Symbol<Gather<T>> = lib.get(name.as_bytes()).expect("kernel");
        let o = out.as_mut_ptr();
        let [c, h, w, k] = dims;
        launch(lib, || f(src.as_ptr(), o, total as i64, c, h, w, k));
    }
    out
}

#[test]
fn the_im2col_kernels_run_as_the_cpu_kernels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = build("conv", dir.path());
    // Odd sizes, a plane smaller than the 5x5 kernel's reach, and two images.
    for &(b, c, h, w, k) in &[(2, 3, 5, 7, 3), (1, 2, 3, 4, 5), (2, 1, 1, 6, 3)] {
        let x = Tensor::randn(0f32, 1.0, (b, c, h, w), &Device::Cpu).expect("x");
        let xv = candle_core::Var::from_tensor(&x).expect("var");
        let cols = kernels::im2col(xv.as_tensor(), k).expect("cpu im2col");
        let probe = Tensor::randn(0f32, 1.0, cols.shape(), &Device::Cpu).expect("probe");
        let grads = (&cols * &probe)
            .and_then(|t| t.sum_all()?.backward())
            .expect("backward");
        let dims = [c as i32, h as i32, w as i32, k as i32];
        let (xs, ps) = (values(&x), values(&probe));
        let got = emulated_gather(&lib, "ifp_im2col_f32", &xs, ps.len(), f32::NAN, dims);
        assert_same(
            &got,
            &values(&cols),
            &format!("im2col {b}x{c}x{h}x{w} k{k}"),
        );
        let back = emulated_gather(&lib, "ifp_col2im_f32", &ps, xs.len(), f32::NAN, dims);
        let want = values(grads.get(xv.as_tensor()).expect("gradient"));
        assert_same(&back, &want, &format!("col2im {b}x{c}x{h}x{w} k{k}"));

        // bfloat16: a copy, and a float32 sum rounded once.
        let to_bf16 = |v: &[f32]| v.iter().map(|x| bf16::from_f32(*x)).collect::<Vec<_>>();
        let widen = |v: &[bf16]| v.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
        let (xb, pb) = (to_bf16(&xs), to_bf16(&ps));
        let colsb = emulated_gather(&lib, "ifp_im2col_bf16", &xb, ps.len(), bf16::NAN, dims);
        let colsw = emulated_gather(
            &lib,
            "ifp_im2col_f32",
            &widen(&xb),
            ps.len(),
            f32::NAN,
            dims,
        );
        assert_same(&colsb, &to_bf16(&colsw), "bf16 im2col");
        let backb = emulated_gather(&lib, "ifp_col2im_bf16", &pb, xs.len(), bf16::NAN, dims);
        let backw = emulated_gather(
            &lib,
            "ifp_col2im_f32",
            &widen(&pb),
            xs.len(),
            f32::NAN,
            dims,
        );
        assert_same(&backb, &to_bf16(&backw), "bf16 col2im");
    }
}
