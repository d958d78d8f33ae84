//! What the models did between two heartbeats: batch sizes, key-value cache in use,
//! training images. Runners record into their [`Activity`]; the connection takes it at
//! each heartbeat and sends it to the service, which turns it into the fleet's metrics
//! (`deephardway_batch_size`, `deephardway_kv_cache_tokens`,
//! `deephardway_training_images_total`, each labelled with the worker and model).
//!
//! Recording is a short lock on a small map, once per batch or training step: nothing
//! next to the cost of the batch itself.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use deephardway::worker::v1::{BatchSizeCount, ModelActivity};

#[derive(Default)]
pub struct Activity {
    models: Mutex<HashMap<String, Tally>>,
}

#[derive(Default)]
struct Tally {
    batch_sizes: BTreeMap<u32, u64>,
    kv_cache_tokens: u64,
    training_images: u64,
}

impl Activity {
    /// `model` ran a batch of `size` items.
    pub fn batch(&self, model: &str, size: usize) {
        self.with(model, |t| *t.batch_sizes.entry(size as u32).or_default() += 1);
    }

    /// `model`'s caches hold `tokens` tokens now.
    pub fn kv_cache_tokens(&self, model: &str, tokens: usize) {
        self.with(model, |t| t.kv_cache_tokens = tokens as u64);
    }

    /// Training `model` went through `images` more images.
    pub fn trained(&self, model: &str, images: usize) {
        self.with(model, |t| t.training_images += images as u64);
    }

    /// What happened since the last call. Gauges (the cache) stay; counts start again.
    /// A model with nothing left to say is forgotten.
    pub fn take(&self) -> Vec<ModelActivity> {
        let mut models = self.models.lock().expect("activity lock");
        let taken = models
            .iter_mut()
            .map(|(model, tally)| ModelActivity {
                model: model.clone(),
                batch_sizes: std::mem::take(&mut tally.batch_sizes)
                    .into_iter()
                    .map(|(size, count)| BatchSizeCount { size, count })
                    .collect(),
                kv_cache_tokens: tally.kv_cache_tokens,
                training_images: std::mem::take(&mut tally.training_images),
            })
            .collect();
        models.retain(|_, tally| tally.kv_cache_tokens > 0);
        taken
    }

    fn with(&self, model: &str, update: impl FnOnce(&mut Tally)) {
        let mut models = self.models.lock().expect("activity lock");
        match models.get_mut(model) {
            Some(tally) => update(tally),
            None => update(models.entry(model.to_string()).or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_start_again_at_each_take_and_the_cache_gauge_stays() {
        let activity = Activity::default();
        activity.batch("m", 4);
        activity.batch("m", 4);
        activity.batch("m", 1);
        activity.kv_cache_tokens("m", 300);
        activity.trained("cats", 64);
        let mut taken = activity.take();
        taken.sort_by(|a, b| a.model.cmp(&b.model));
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[0].model, "cats");
        assert_eq!(taken[0].training_images, 64);
        let m = &taken[1];
        let sizes: Vec<_> = m.batch_sizes.iter().map(|b| (b.size, b.count)).collect();
        assert_eq!(sizes, [(1, 1), (4, 2)]);
        assert_eq!(m.kv_cache_tokens, 300);

        // Only the gauge is left to report, and only for the model that still caches.
        let again = activity.take();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].model.as_str(), again[0].kv_cache_tokens), ("m", 300));
        assert!(again[0].batch_sizes.is_empty());
        activity.kv_cache_tokens("m", 0);
        assert_eq!(activity.take().len(), 1, "the drop to 0 is reported once");
        assert!(activity.take().is_empty());
    }
}
