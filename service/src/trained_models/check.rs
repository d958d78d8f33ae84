//! A published model's files, checked before anything is stored: classify jobs on any
//! worker will load them, so a model that cannot load, or loads as something other than
//! what the registry says, must never be registered.
//!
//! - `config.json` parses as the worker writes it (`{"architecture", "input", "classes"}`)
//!   and describes a network a worker can build (1 or 3 channels, sizes within limits);
//! - its classes are at least two, distinct and non-empty, and equal the dataset's classes
//!   when the job trained on an uploaded dataset that still exists;
//! - the description sent beside the files says the same (architecture, hidden sizes,
//!   input size, channels, labels; a validation accuracy in 0..=1);
//! - `model.safetensors` parses (header, offsets, every tensor's byte size agrees with
//!   its dtype and shape, and the tensors cover the file exactly), holds exactly the
//!   tensors the network has, each F32 (as workers write them) of the right shape (the
//!   last layer's output is one per class), with finite values.
//!
//! Each failure is INVALID_ARGUMENT naming the field (`config`, `weights`, `model.…`).

use deephardway::{
    errors::invalid_field,
    train::{Architecture, check_network},
    v1::TrainedModel,
};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use tonic::Status;

/// `config.json`, as the worker's `ModelConfig` writes it.
#[derive(Debug, Deserialize)]
struct Config {
    architecture: Architecture,
    input: InputShape,
    classes: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct InputShape {
    channels: usize,
    size: usize,
}

/// Checks a model's files and description (see the module's comment); `dataset_classes`
/// are the classes of the dataset it was trained on, when known.
pub fn model_files(
    description: &TrainedModel,
    config: &[u8],
    weights: &[u8],
    dataset_classes: Option<&[String]>,
) -> Result<(), Status> {
    let config: Config = serde_json::from_slice(config).map_err(|e| invalid_field("config", format!("{e}")))?;
    check_config(&config, dataset_classes)?;
    check_description(description, &config)?;
    check_weights(weights, &expected_tensors(&config))
}

fn check_config(config: &Config, dataset_classes: Option<&[String]>) -> Result<(), Status> {
    let InputShape { channels, size } = config.input;
    if channels != 1 && channels != 3 {
        return Err(invalid_field("config", format!("input.channels is {channels}; only 1 or 3")));
    }
    if size == 0 {
        return Err(invalid_field("config", "input.size is 0"));
    }
    check_network(&config.architecture, size).map_err(|v| invalid_field("config", v.to_string()))?;
    let classes = &config.classes;
    if classes.len() < 2 {
        return Err(invalid_field("config", format!("{} classes; a classifier needs at least 2", classes.len())));
    }
    let distinct: std::collections::HashSet<&String> = classes.iter().collect();
    if distinct.len() != classes.len() || classes.iter().any(|c| c.is_empty()) {
        return Err(invalid_field("config", "the classes must be distinct and non-empty"));
    }
    if let Some(expected) = dataset_classes
        && expected != classes.as_slice()
    {
        return Err(invalid_field("config", format!("the classes {classes:?} are not the dataset's {expected:?}")));
    }
    Ok(())
}

fn check_description(description: &TrainedModel, config: &Config) -> Result<(), Status> {
    let (architecture, hidden_sizes) = config.architecture.to_proto();
    if description.architecture != architecture as i32 || description.hidden_sizes != hidden_sizes {
        return Err(invalid_field("model.architecture", "does not match config.json"));
    }
    if description.input_size as usize != config.input.size || description.channels as usize != config.input.channels {
        return Err(invalid_field("model.input_size", "input_size or channels do not match config.json"));
    }
    if description.labels != config.classes {
        return Err(invalid_field("model.labels", "are not config.json's classes"));
    }
    if !(0.0..=1.0).contains(&description.validation_accuracy) {
        return Err(invalid_field(
            "model.validation_accuracy",
            format!("is {}; must be within 0 to 1", description.validation_accuracy),
        ));
    }
    Ok(())
}

/// The tensors a worker's network of this configuration has (names and shapes), as
/// candle-nn names them: `linear` weights are `(out, in)`, `conv2d` weights
/// `(out, in, 3, 3)`, biases `(out)`.
fn expected_tensors(config: &Config) -> Vec<(String, Vec<usize>)> {
    let InputShape { channels, size } = config.input;
    let classes = config.classes.len();
    let mut tensors = Vec::new();
    let mut layer = |name: &str, weight: Vec<usize>| {
        tensors.push((format!("{name}.bias"), vec![weight[0]]));
        tensors.push((format!("{name}.weight"), weight));
    };
    match &config.architecture {
        Architecture::Mlp { hidden } => {
            let mut width = channels * size * size;
            for (i, &h) in hidden.iter().enumerate() {
                layer(&format!("fc{i}"), vec![h, width]);
                width = h;
            }
            layer("out", vec![classes, width]);
        }
        Architecture::Cnn => {
            let side = size / 4;
            layer("conv0", vec![16, channels, 3, 3]);
            layer("conv1", vec![32, 16, 3, 3]);
            layer("fc0", vec![64, 32 * side * side]);
            layer("out", vec![classes, 64]);
        }
    }
    tensors
}

fn check_weights(weights: &[u8], expected: &[(String, Vec<usize>)]) -> Result<(), Status> {
    let bad = |why: String| invalid_field("weights", why);
    // Parses the header and checks every tensor's size against its dtype and shape, and
    // that the tensors cover the rest of the file exactly.
    let file = SafeTensors::deserialize(weights).map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
    if file.len() != expected.len() {
        return Err(bad(format!("{} tensors; the network in config.json has {}", file.len(), expected.len())));
    }
    for (name, shape) in expected {
        let tensor =
            file.tensor(name).map_err(|_| bad(format!("no tensor {name:?}, which config.json's network has")))?;
        if tensor.dtype() != Dtype::F32 {
            return Err(bad(format!("tensor {name:?} is {:?}; workers write F32", tensor.dtype())));
        }
        if tensor.shape() != shape.as_slice() {
            return Err(bad(format!(
                "tensor {name:?} has shape {:?}; config.json's network needs {shape:?}",
                tensor.shape()
            )));
        }
        let finite = tensor.data().chunks_exact(4).all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite());
        if !finite {
            return Err(bad(format!("tensor {name:?} holds values that are not finite numbers")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use deephardway::v1;

    fn config(classes: &[&str]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "architecture": {"kind": "mlp", "hidden": [3]},
            "input": {"channels": 1, "size": 2},
            "classes": classes,
        }))
        .unwrap()
    }

    fn description(classes: &[&str]) -> TrainedModel {
        TrainedModel {
            architecture: v1::Architecture::Mlp as i32,
            hidden_sizes: vec![3],
            input_size: 2,
            channels: 1,
            labels: classes.iter().map(|c| c.to_string()).collect(),
            validation_accuracy: 0.5,
            ..Default::default()
        }
    }

    /// A safetensors file of F32 tensors filled with `value`.
    fn weights(tensors: &[(&str, Vec<usize>)], value: f32) -> Vec<u8> {
        let data: Vec<Vec<u8>> =
            tensors.iter().map(|(_, shape)| value.to_le_bytes().repeat(shape.iter().product::<usize>())).collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .zip(&data)
            .map(|((name, shape), bytes)| {
                (name.to_string(), safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap())
            })
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    fn mlp(classes: usize) -> Vec<(&'static str, Vec<usize>)> {
        vec![
            ("fc0.weight", vec![3, 4]),
            ("fc0.bias", vec![3]),
            ("out.weight", vec![classes, 3]),
            ("out.bias", vec![classes]),
        ]
    }

    fn field(result: Result<(), Status>) -> String {
        let status = result.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        deephardway::errors::violations(&status).remove(0).field
    }

    #[test]
    fn a_model_that_fits_its_config_and_dataset_passes() {
        let classes = ["cat", "dog"].map(String::from);
        let ok = model_files(
            &description(&["cat", "dog"]),
            &config(&["cat", "dog"]),
            &weights(&mlp(2), 0.1),
            Some(&classes),
        );
        ok.unwrap();
    }

    #[test]
    fn forged_files_are_refused_by_field() {
        let (d, c) = (description(&["cat", "dog"]), config(&["cat", "dog"]));
        assert_eq!(field(model_files(&d, &c, b"NOT SAFETENSORS", None)), "weights");
        assert_eq!(field(model_files(&d, b"{", &weights(&mlp(2), 0.1), None)), "config");
        // The last layer has 3 outputs for 2 labels.
        assert_eq!(field(model_files(&d, &c, &weights(&mlp(3), 0.1), None)), "weights");
        assert_eq!(field(model_files(&d, &c, &weights(&mlp(2), f32::NAN), None)), "weights");
        assert_eq!(field(model_files(&d, &c, &weights(&mlp(2)[..3], 0.1), None)), "weights");
        // A header whose sizes disagree with the data.
        let mut short = weights(&mlp(2), 0.1);
        short.truncate(short.len() - 4);
        assert_eq!(field(model_files(&d, &c, &short, None)), "weights");
        // Labels that are not the dataset's, or not the config's.
        let dataset = ["bird", "dog"].map(String::from);
        assert_eq!(field(model_files(&d, &c, &weights(&mlp(2), 0.1), Some(&dataset))), "config");
        assert_eq!(field(model_files(&description(&["a", "b"]), &c, &weights(&mlp(2), 0.1), None)), "model.labels");
        assert_eq!(
            field(model_files(&description(&["cat"]), &config(&["cat"]), &weights(&mlp(1), 0.1), None)),
            "config"
        );
    }

    #[test]
    fn the_cnn_has_its_layers() {
        let config = Config {
            architecture: Architecture::Cnn,
            input: InputShape { channels: 3, size: 8 },
            classes: vec!["a".into(), "b".into()],
        };
        let names: Vec<(String, Vec<usize>)> = expected_tensors(&config);
        assert!(names.contains(&("fc0.weight".into(), vec![64, 32 * 2 * 2])));
        assert!(names.contains(&("out.bias".into(), vec![2])));
        assert_eq!(names.len(), 8);
    }
}
