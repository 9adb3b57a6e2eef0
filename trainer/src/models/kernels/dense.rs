//! A dense stride-1 "same" k x k convolution (no bias) as one op: per image, im2col into a
//! scratch buffer and one matrix product with gemm (the kernels candle's own matmul uses). Only
//! the input stays alive for the backward pass, which rebuilds the columns: composed as im2col +
//! matmul, the (C*k*k, H*W) column matrix of every convolution (9x its input for 3x3) was kept
//! for the backward pass, most of the MSRResNet head's memory at full resolution.
//!
//! Per image b: `cols = im2col(x_b)` (C*k*k, HW), `y_b = W cols` with W (O, C*k*k).
//! Backward: `dW += dy_b cols^T`, `dx_b = col2im(W^T dy_b)`. For 1x1 the columns are x_b itself:
//! one matrix product per image each way, and the backward reads and writes x's and dx's memory
//! directly (composed as reshape + broadcast matmul + reshape, each reshape and the broadcast
//! weight were nodes whose gradients candle zero-fills and adds, and the weight's gradient was
//! a (B, O, C) tensor summed over the batch).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::conv::{col2im_plane, f32_slice, im2col_plane};

pub(super) struct DenseConv {
    pub(super) k: usize,
}

/// A row-major matrix operand: `rows x cols` stored as is, or transposed storage.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    /// Stored as the transpose (cols x rows, row-major).
    transposed: bool,
}

/// `dst (m x n) = a (m x k) b (k x n)`, or `dst += ...` with `accumulate`.
fn matmul(dst: &mut [f32], a: Mat, b: Mat, m: usize, n: usize, k: usize, accumulate: bool) {
    debug_assert!(dst.len() >= m * n && a.data.len() >= m * k && b.data.len() >= k * n);
    let (a_rs, a_cs) = if a.transposed { (1, m) } else { (k, 1) };
    let (b_rs, b_cs) = if b.transposed { (1, k) } else { (n, 1) };
    let threads = rayon::current_num_threads();
    let par = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the strides describe the slices' extents checked above; dst does not alias a, b.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.data.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// im2col of one image (C, H, W) into `cols` (C*k*k, H*W), planes in parallel.
fn im2col_image(cols: &mut [f32], img: &[f32], k: usize, h: usize, w: usize) {
    let hw = h * w;
    cols.par_chunks_mut(k * k * hw)
        .zip(img.par_chunks(hw))
        .for_each(|(rows, plane)| im2col_plane(rows, plane, k, h, w));
}

impl CustomOp2 for DenseConv {
    fn name(&self) -> &'static str {
        "ifp-dense-conv"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l1.shape().dims4()?;
        let o = l2.shape().dims4()?.0;
        let x = f32_slice(s1, l1, self.name())?;
        let wt = f32_slice(s2, l2, self.name())?;
        let (k, hw) = (self.k, h * w);
        let ckk = c * k * k;
        // A 1x1 convolution's columns are the image itself.
        let mut cols = if k == 1 {
            Vec::new()
        } else {
            vec![0f32; ckk * hw]
        };
        let mut out = vec![0f32; b * o * hw];
        for (yb, xb) in out.chunks_mut(o * hw).zip(x.chunks(c * hw)) {
            let cols: &[f32] = if k == 1 {
                xb
            } else {
                im2col_image(&mut cols, xb, k, h, w);
                &cols
            };
            let wm = Mat {
                data: wt,
                transposed: false,
            };
            let cm = Mat {
                data: cols,
                transposed: false,
            };
            matmul(yb, wm, cm, o, hw, ckk, false);
        }
        Ok((CpuStorage::F32(out), Shape::from((b, o, h, w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wt: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = x.apply_op3_no_bwd(wt, &grad.contiguous()?, &DenseConvBackward { k: self.k })?;
        let [dx, dw]: [Tensor; 2] = super::unpack(&both, &[x.shape(), wt.shape()])?
            .try_into()
            .map_err(|_| candle_core::Error::Msg("dense conv: two gradients".into()))?;
        Ok((Some(dx), Some(dw)))
    }
}

/// (x, W, dy) -> [dx (B*C*H*W values), dW (O*C*k*k values)].
struct DenseConvBackward {
    k: usize,
}

impl CustomOp3 for DenseConvBackward {
    fn name(&self) -> &'static str {
        "ifp-dense-conv-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, h, w) = l1.shape().dims4()?;
        let o = l2.shape().dims4()?.0;
        let x = f32_slice(s1, l1, self.name())?;
        let wt = f32_slice(s2, l2, self.name())?;
        let dy = f32_slice(s3, l3, self.name())?;
        let (k, hw) = (self.k, h * w);
        let ckk = c * k * k;
        let n = x.len();
        let mut out = vec![0f32; n + o * ckk];
        let (dx, dw) = out.split_at_mut(n);
        // 1x1: the columns are x itself and their gradient is dx itself.
        let scratch = if k == 1 { 0 } else { ckk * hw };
        let mut cols = vec![0f32; scratch];
        let mut dcols = vec![0f32; scratch];
        for (bi, (dxb, xb)) in dx.chunks_mut(c * hw).zip(x.chunks(c * hw)).enumerate() {
            let dyb = &dy[bi * o * hw..][..o * hw];
            // dW (O, Ckk) += dy_b (O, HW) cols^T (HW, Ckk)
            let colsb: &[f32] = if k == 1 {
                xb
            } else {
                im2col_image(&mut cols, xb, k, h, w);
                &cols
            };
            let dym = Mat {
                data: dyb,
                transposed: false,
            };
            let ct = Mat {
                data: colsb,
                transposed: true,
            };
            matmul(dw, dym, ct, o, ckk, hw, bi > 0);
            // dcols (Ckk, HW) = W^T (Ckk, O) dy_b (O, HW), then summed back onto the pixels.
            let wtm = Mat {
                data: wt,
                transposed: true,
            };
            if k == 1 {
                matmul(dxb, wtm, dym, ckk, hw, o, false);
                continue;
            }
            matmul(&mut dcols, wtm, dym, ckk, hw, o, false);
            dxb.par_chunks_mut(hw)
                .zip(dcols.par_chunks(k * k * hw))
                .for_each(|(plane, rows)| col2im_plane(plane, rows, k, h, w));
        }
        Ok((CpuStorage::F32(out), Shape::from(n + o * ckk)))
    }
}
