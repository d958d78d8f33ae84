//! A trained classifier on disk (`config.json` + `model.safetensors`) and in use.

use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use image::DynamicImage;

use super::{
    dataset,
    network::{ModelConfig, Network, check},
    training::Trained,
};

/// A classifier ready to label images.
pub struct Classifier {
    pub config: ModelConfig,
    network: Network,
    device: Device,
}

/// One image's label and the probability of every class.
#[derive(Debug, Clone)]
pub struct Prediction {
    pub label: String,
    pub probabilities: Vec<(String, f32)>,
}

impl Classifier {
    /// Writes a trained network to `dir`: its configuration and its weights.
    pub fn save(trained: &Trained, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&trained.config)?)?;
        trained.vars.save(dir.join("model.safetensors")).context("cannot write the weights")?;
        Ok(())
    }

    /// Reads a classifier written by [`Classifier::save`].
    pub fn load(dir: &Path, device: &Device) -> anyhow::Result<Self> {
        let config: ModelConfig = serde_json::from_slice(
            &std::fs::read(dir.join("config.json")).with_context(|| format!("{}: no config.json", dir.display()))?,
        )
        .with_context(|| format!("{}: config.json", dir.display()))?;
        check(&config).map_err(anyhow::Error::msg)?;
        let weights = dir.join("model.safetensors");
        // SAFETY: a mapped file must not change while mapped. A trained model's files
        // are written once (by `save`, or into the artifact cache, which renames a
        // complete download into place and never rewrites it); the mapping is read-only.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device) }
            .with_context(|| format!("cannot load {}", weights.display()))?;
        let network = Network::new(&config, vb).context("the weights do not fit the configuration")?;
        Ok(Classifier { config, network, device: device.clone() })
    }

    pub fn from_trained(trained: Trained, device: &Device) -> Self {
        Classifier { config: trained.config, network: trained.network, device: device.clone() }
    }

    /// Labels encoded images (PNG or JPEG), each with a name for errors.
    pub fn classify(&self, images: &[(&str, &[u8])]) -> anyhow::Result<Vec<Prediction>> {
        let decoded =
            images.iter().map(|(name, bytes)| dataset::decode(bytes, name)).collect::<anyhow::Result<Vec<_>>>()?;
        self.label(&decoded)
    }

    /// Labels decoded images of any size (each is resized to the network's input).
    pub fn label(&self, images: &[DynamicImage]) -> anyhow::Result<Vec<Prediction>> {
        let shape = self.config.input;
        let mut data = Vec::with_capacity(images.len() * shape.features());
        for image in images {
            data.extend(dataset::pixels(image, shape));
        }
        let batch = Tensor::from_vec(data, (images.len(), shape.channels, shape.size, shape.size), &self.device)?;
        self.predict(&batch)
    }

    /// The fraction of a dataset's images labelled correctly (its classes must be this
    /// classifier's, in the same order).
    pub fn accuracy(&self, dataset: &dataset::Dataset) -> anyhow::Result<f64> {
        anyhow::ensure!(dataset.classes == self.config.classes, "the dataset's classes are not the model's");
        let predictions = self.predict(&dataset.images)?;
        let labels = dataset.labels.to_vec1::<u32>()?;
        let correct = predictions.iter().zip(&labels).filter(|(p, l)| p.label == dataset.classes[**l as usize]).count();
        Ok(correct as f64 / labels.len() as f64)
    }

    /// Labels already decoded images, `(n, channels, size, size)`.
    pub fn predict(&self, images: &Tensor) -> anyhow::Result<Vec<Prediction>> {
        let probabilities = self.network.probabilities(images)?.to_vec2::<f32>()?;
        Ok(probabilities
            .into_iter()
            .map(|row| {
                let best = row.iter().enumerate().fold(0, |b, (i, p)| if *p > row[b] { i } else { b });
                Prediction {
                    label: self.config.classes[best].clone(),
                    probabilities: self.config.classes.iter().cloned().zip(row).collect(),
                }
            })
            .collect())
    }
}
