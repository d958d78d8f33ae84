//! Labelled image sets, one folder per class, decoded into tensors.
//!
//! Images may be PNG or JPEG of any size: each is resized to the model's square input and
//! scaled to 0..1. A set whose images are all grayscale stays one channel; otherwise every
//! image is read as RGB. A file that is not a readable image is an error naming it.

use std::path::Path;

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};
use image::{DynamicImage, imageops::FilterType};

use super::source::{ImageFile, Source};

/// Limits on what one dataset may hold.
pub const MAX_IMAGES: usize = 100_000;
pub const MAX_CLASSES: usize = 1_000;
pub const MAX_IMAGE_SIDE: u32 = 8_192;

/// How images become model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InputShape {
    pub channels: usize,
    /// Images are resized to `size × size`.
    pub size: usize,
}

impl InputShape {
    pub fn features(&self) -> usize {
        self.channels * self.size * self.size
    }
}

/// A decoded dataset: `images` is `(n, channels, size, size)` in 0..1, `labels` `(n,)`
/// indices into `classes`.
pub struct Dataset {
    pub classes: Vec<String>,
    pub shape: InputShape,
    pub images: Tensor,
    pub labels: Tensor,
    /// Each image's name (its path in the dataset), for messages.
    pub files: Vec<String>,
}

/// Reads an image's format and size from its header, naming `name` in errors.
pub fn dimensions(bytes: &[u8], name: &str) -> anyhow::Result<(u32, u32)> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .with_context(|| format!("{name}: cannot read"))?;
    let (width, height) = reader.into_dimensions().with_context(|| format!("{name}: not a PNG or JPEG image"))?;
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        bail!("{name}: {width}×{height} pixels; at most {MAX_IMAGE_SIDE} on a side");
    }
    Ok((width, height))
}

/// Decodes one image file's bytes, naming `name` in errors.
pub fn decode(bytes: &[u8], name: &str) -> anyhow::Result<DynamicImage> {
    dimensions(bytes, name)?;
    image::load_from_memory(bytes).with_context(|| format!("{name}: not a readable PNG or JPEG image"))
}
/// An image as model input: resized, `(channels, size, size)` values in 0..1.
pub fn pixels(image: &DynamicImage, shape: InputShape) -> Vec<f32> {
    let size = shape.size as u32;
    let resized = if image.width() == size && image.height() == size {
        image.clone()
    } else {
        image.resize_exact(size, size, FilterType::Triangle)
    };
    let (plane, channels) = (shape.size * shape.size, shape.channels);
    let mut out = vec![0f32; channels * plane];
    if channels == 1 {
        for (i, p) in resized.to_luma8().pixels().enumerate() {
            out[i] = p.0[0] as f32 / 255.0;
        }
    } else {
        for (i, p) in resized.to_rgb8().pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = p.0[c] as f32 / 255.0;
            }
        }
    }
    out
}

/// Decodes labelled image files into a dataset: resized to `size` (0: the first image's
/// size), with `channels` (None: 3 if any image has colour, else 1).
pub fn decode_all(
    files: &[ImageFile],
    classes: &[String],
    size: usize,
    channels: Option<usize>,
    device: &Device,
) -> anyhow::Result<Dataset> {
    anyhow::ensure!(!files.is_empty(), "no images");
    let decoded: Vec<DynamicImage> = files.iter().map(|f| decode(&f.bytes, &f.name)).collect::<anyhow::Result<_>>()?;
    let channels = channels.unwrap_or(if decoded.iter().any(|i| i.color().has_color()) { 3 } else { 1 });
    let size = if size == 0 { decoded[0].width().max(decoded[0].height()) as usize } else { size };
    let shape = InputShape { channels, size };
    let mut data = Vec::with_capacity(decoded.len() * shape.features());
    for image in &decoded {
        data.extend(pixels(image, shape));
    }
    let images = Tensor::from_vec(data, (decoded.len(), channels, size, size), device)?;
    let labels = Tensor::from_vec(files.iter().map(|f| f.class).collect::<Vec<u32>>(), files.len(), device)?;
    Ok(Dataset {
        classes: classes.to_vec(),
        shape,
        images,
        labels,
        files: files.iter().map(|f| f.name.clone()).collect(),
    })
}

/// Loads a folder-per-class dataset (every image in it, whatever its layout: see
/// [`Source`]), resizing to `size` (0: the first image's size).
pub fn load(dir: &Path, size: usize, device: &Device) -> anyhow::Result<Dataset> {
    let source = Source::from_dir(dir)?;
    decode_all(&source.train, &source.classes, size, None, device)
}
