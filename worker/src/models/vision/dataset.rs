//! Labelled images decoded into tensors: a dataset's files ([`deephardway::datasets`]
//! reads and checks them without candle) become model input here.
//!
//! Images may be PNG or JPEG of any size: each is resized to the model's square input and
//! scaled to 0..1. A set whose images are all grayscale stays one channel; otherwise every
//! image is read as RGB. A file that is not a readable image is an error naming it.

use std::path::Path;

use anyhow::Context;
use candle_core::{Device, Tensor};
use deephardway::datasets::{self, ImageFile, Source};
use image::{DynamicImage, imageops::FilterType};

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

/// Decodes one image file's bytes, naming `name` in errors (the header is checked first,
/// so an oversized image is refused before its pixels are allocated).
pub fn decode(bytes: &[u8], name: &str) -> anyhow::Result<DynamicImage> {
    datasets::dimensions(bytes, name)?;
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

/// Decodes a dataset's training images and its held-out ones (if any), resized to `size`
/// (0: the first training image's size). A set with any colour image is RGB.
pub fn from_source(source: &Source, size: usize, device: &Device) -> anyhow::Result<(Dataset, Option<Dataset>)> {
    let train = decode_all(&source.train, &source.classes, size, None, device)?;
    let test = if source.test.is_empty() {
        None
    } else {
        Some(decode_all(&source.test, &source.classes, train.shape.size, Some(train.shape.channels), device)?)
    };
    Ok((train, test))
}

/// Loads a folder-per-class dataset (every image in it, whatever its layout: see
/// [`Source`]), resizing to `size` (0: the first image's size).
pub fn load(dir: &Path, size: usize, device: &Device) -> anyhow::Result<Dataset> {
    let source = Source::from_dir(dir)?;
    decode_all(&source.train, &source.classes, size, None, device)
}
