//! Image panels: the sample strips of training and fine-tuning, a comparison's showcase and the
//! submission form's preview all lay images side by side on white with these.

use super::image::{Image, CHANNELS};

/// `panels` left to right on white, `gap` pixels apart, each centred vertically in the tallest;
/// values clamped to [0, 1].
pub fn row(panels: &[&Image], gap: usize) -> Image {
    let h = panels.iter().map(|p| p.height).max().unwrap_or(0);
    let width =
        panels.iter().map(|p| p.width).sum::<usize>() + gap * panels.len().saturating_sub(1);
    let mut out = Image::filled(width, h, 1.0);
    let mut x0 = 0;
    for p in panels {
        let y0 = (h - p.height) / 2;
        for c in 0..CHANNELS {
            let plane = p.plane(c);
            for y in 0..p.height {
                let dst = c * width * h + (y0 + y) * width + x0;
                for (d, s) in out.data[dst..dst + p.width]
                    .iter_mut()
                    .zip(&plane[y * p.width..(y + 1) * p.width])
                {
                    *d = s.clamp(0.0, 1.0);
                }
            }
        }
        x0 += p.width + gap;
    }
    out
}

/// `panels` top to bottom on white, `gap` pixels apart, each at the left of the widest.
pub fn column(panels: &[&Image], gap: usize) -> Image {
    let w = panels.iter().map(|p| p.width).max().unwrap_or(0);
    let height =
        panels.iter().map(|p| p.height).sum::<usize>() + gap * panels.len().saturating_sub(1);
    let mut out = Image::filled(w, height, 1.0);
    let mut y0 = 0;
    for p in panels {
        for c in 0..CHANNELS {
            let plane = p.plane(c);
            for y in 0..p.height {
                let dst = c * w * height + (y0 + y) * w;
                out.data[dst..dst + p.width]
                    .copy_from_slice(&plane[y * p.width..(y + 1) * p.width]);
            }
        }
        y0 += p.height + gap;
    }
    out
}

/// `img` contrast-stretched: its values mapped linearly so the smallest is 0 and the largest 1,
/// one range for all channels so colours keep their balance. Noise reconstructions span a
/// narrow range and look like flat grey squares otherwise. A flat image is left as it is.
pub fn stretch(img: &Image) -> Image {
    let (lo, hi) = img
        .data
        .iter()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| {
            (a.min(*v), b.max(*v))
        });
    // Also a tile with no finite value (lo > hi): nothing to stretch.
    if hi - lo <= 1e-6 || !lo.is_finite() {
        return img.clone();
    }
    Image {
        width: img.width,
        height: img.height,
        data: img.data.iter().map(|v| (v - lo) / (hi - lo)).collect(),
    }
}

/// `img` scaled to `w` x `h` by nearest neighbour, so small crops and masks stay crisp.
pub fn scale_nearest(img: &Image, w: usize, h: usize) -> Image {
    let mut data = Vec::with_capacity(CHANNELS * w * h);
    for c in 0..CHANNELS {
        let plane = img.plane(c);
        for y in 0..h {
            let sy = (y * img.height / h).min(img.height - 1);
            for x in 0..w {
                let sx = (x * img.width / w).min(img.width - 1);
                data.push(plane[sy * img.width + sx]);
            }
        }
    }
    Image {
        width: w,
        height: h,
        data,
    }
}

/// The log-magnitude spectrum of square `img`, as the IFP masks see it: `log(1 + |F|)` of each
/// channel's 2-D DFT, averaged over channels, zero frequency at the centre (numpy's `fftshift`),
/// in grey stretched over the range of every frequency but zero (clipped to white). With `removed` (the mask in the same shifted layout, 1 = kept,
/// 0 = removed), the removed frequencies are tinted red, so the tile shows what the corruption
/// took away and how much of it the reconstruction brought back.
pub fn spectrum(img: &Image, removed: Option<&[f32]>) -> Image {
    use rustfft::num_complex::Complex;
    let (w, h) = (img.width, img.height);
    let mut planner = rustfft::FftPlanner::<f32>::new();
    let (row_fft, col_fft) = (planner.plan_fft_forward(w), planner.plan_fft_forward(h));
    let mut mag = vec![0f32; w * h];
    let mut buf = vec![Complex::new(0f32, 0.0); w * h];
    let mut col = vec![Complex::new(0f32, 0.0); h];
    for c in 0..CHANNELS {
        for (b, v) in buf.iter_mut().zip(img.plane(c)) {
            *b = Complex::new(*v, 0.0);
        }
        for row in buf.chunks_exact_mut(w.max(1)) {
            row_fft.process(row);
        }
        for x in 0..w {
            for (y, v) in col.iter_mut().enumerate() {
                *v = buf[y * w + x];
            }
            col_fft.process(&mut col);
            for (y, v) in col.iter().enumerate() {
                // fftshift: frequency index k lands at (k + n/2) mod n.
                let (sy, sx) = ((y + h / 2) % h, (x + w / 2) % w);
                mag[sy * w + sx] += (1.0 + v.norm()).ln() / CHANNELS as f32;
            }
        }
    }
    // The zero frequency (the mean) outweighs the rest by orders of magnitude: the grey scale
    // spans the other frequencies, and the centre is clipped to white.
    let dc = (h / 2) * w + w / 2;
    let (lo, hi) = mag
        .iter()
        .enumerate()
        .filter(|(i, v)| *i != dc && v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), (_, v)| {
            (a.min(*v), b.max(*v))
        });
    let span = if hi - lo > 1e-6 { hi - lo } else { 1.0 };
    let lo = if lo.is_finite() { lo } else { 0.0 };
    let g: Vec<f32> = mag
        .iter()
        .map(|v| ((v - lo) / span).clamp(0.0, 1.0))
        .collect();
    let mut data = Vec::with_capacity(CHANNELS * w * h);
    for c in 0..CHANNELS {
        data.extend(g.iter().enumerate().map(|(i, v)| {
            match removed.and_then(|m| m.get(i)) {
                // Half grey, half red.
                Some(m) if *m < 0.5 => 0.5 * v + if c == 0 { 0.5 } else { 0.0 },
                _ => *v,
            }
        }));
    }
    Image {
        width: w,
        height: h,
        data,
    }
}

/// The per-pixel error `|a - b|`, averaged over channels, as a heat map (black, red, yellow,
/// white) scaled to the largest error; identical images give black.
pub fn error_map(a: &Image, b: &Image) -> Image {
    let n = a.width * a.height;
    let mut err = vec![0f32; n];
    for c in 0..CHANNELS {
        for ((e, x), y) in err.iter_mut().zip(a.plane(c)).zip(b.plane(c)) {
            *e += (x - y).abs() / CHANNELS as f32;
        }
    }
    let max = err
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0f32, f32::max);
    let scale = if max > 0.0 { 3.0 / max } else { 0.0 };
    let mut data = Vec::with_capacity(CHANNELS * n);
    for c in 0..CHANNELS {
        data.extend(err.iter().map(|e| (e * scale - c as f32).clamp(0.0, 1.0)));
    }
    Image {
        width: a.width,
        height: a.height,
        data,
    }
}

/// `img` centred on a white `w` x `h` cell (which must hold it).
pub fn centred(img: &Image, w: usize, h: usize) -> Image {
    let mut out = Image::filled(w, h, 1.0);
    let (x0, y0) = ((w - img.width) / 2, (h - img.height) / 2);
    for c in 0..CHANNELS {
        for y in 0..img.height {
            let src = &img.plane(c)[y * img.width..(y + 1) * img.width];
            let dst = c * w * h + (y0 + y) * w + x0;
            out.data[dst..dst + img.width].copy_from_slice(src);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flat grey image with one bright row: a vertical frequency sweep along the centre column.
    fn striped(n: usize) -> Image {
        let mut img = Image::filled(n, n, 0.5);
        for c in 0..CHANNELS {
            for x in 0..n {
                img.data[c * n * n + x] = 1.0;
            }
        }
        img
    }

    #[test]
    fn a_spectrum_puts_zero_frequency_at_the_centre_and_tints_what_the_mask_removed() {
        let n = 8;
        // A flat image has only the zero frequency: one white pixel at (n/2, n/2).
        let flat = spectrum(&Image::filled(n, n, 0.5), None);
        let centre = (n / 2) * n + n / 2;
        assert_eq!(flat.plane(0)[centre], 1.0);
        assert_eq!(flat.plane(0).iter().filter(|v| **v > 0.0).count(), 1);
        // A bright row has energy at every vertical frequency, none off the centre column.
        let rows = spectrum(&striped(n), None);
        for y in 0..n {
            for x in 0..n {
                let v = rows.plane(1)[y * n + x];
                assert_eq!(v > 0.0, x == n / 2, "({x}, {y}): {v}");
            }
        }
        // Removed frequencies are red: red above green there, grey elsewhere.
        let mut mask = vec![1f32; n * n];
        mask[centre] = 0.0;
        let tinted = spectrum(&striped(n), Some(&mask));
        assert!(tinted.plane(0)[centre] > tinted.plane(1)[centre]);
        let kept = centre + n;
        assert_eq!(tinted.plane(0)[kept], tinted.plane(1)[kept]);
    }

    #[test]
    fn an_error_map_is_black_where_images_agree_and_white_at_the_largest_error() {
        let a = Image::filled(2, 1, 0.5);
        let mut b = a.clone();
        for c in 0..CHANNELS {
            b.data[c * 2 + 1] = 0.9;
        }
        let e = error_map(&a, &b);
        let px = |i: usize| [0, 1, 2].map(|c| e.plane(c)[i]);
        assert_eq!(px(0), [0.0, 0.0, 0.0]);
        assert_eq!(px(1), [1.0, 1.0, 1.0]);
        assert!(error_map(&a, &a).data.iter().all(|v| *v == 0.0));
    }

    #[test]
    fn stretch_spans_zero_to_one_and_leaves_flat_images() {
        let img = Image {
            width: 2,
            height: 1,
            data: vec![0.4, 0.5, 0.45, 0.45, 0.42, 0.48],
        };
        let s = stretch(&img);
        let (lo, hi) = s
            .data
            .iter()
            .fold((1f32, 0f32), |(a, b), v| (a.min(*v), b.max(*v)));
        assert!(
            (lo - 0.0).abs() < 1e-6 && (hi - 1.0).abs() < 1e-6,
            "{:?}",
            s.data
        );
        assert!((s.data[2] - 0.5).abs() < 1e-5, "one range for all channels");
        let flat = Image::filled(2, 2, 0.3);
        assert_eq!(stretch(&flat), flat);
    }

    #[test]
    fn panels_sit_side_by_side_on_white() {
        let a = Image::filled(2, 2, 0.25);
        let b = Image::filled(1, 4, 2.0);
        let r = row(&[&a, &b], 1);
        assert_eq!((r.width, r.height), (4, 4));
        // Row 0: white above `a`, the gap, then `b` clamped to 1; row 1: `a`, gap, `b`.
        assert_eq!(&r.plane(0)[0..4], &[1.0, 1.0, 1.0, 1.0]);
        assert_eq!(&r.plane(0)[4..8], &[0.25, 0.25, 1.0, 1.0]);
        let z = scale_nearest(&a, 4, 4);
        assert!(z.data.iter().all(|v| *v == 0.25));
        let c = centred(&a, 4, 2);
        assert_eq!(&c.plane(0)[0..4], &[1.0, 0.25, 0.25, 1.0]);
    }
}
