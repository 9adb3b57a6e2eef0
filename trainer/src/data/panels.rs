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
