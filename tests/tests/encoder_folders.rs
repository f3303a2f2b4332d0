//! Encoder folders against sentence-transformers and transformers: the answers computed by
//! them (tests/encoders/make_fixtures.py) for small random BERTs of several shapes; the
//! same text alone and in any batch; refusals that name the file and the key.
//! In process, without a server (tests/tests/encoders.rs serves them over HTTP, and
//! all-MiniLM-L6-v2 too).

use std::path::{Path, PathBuf};

use prism_kernels::CpuDevice;
use prism_kernels::encoder::{Encoder, EncoderError, Overrides, Pooling, Task, TokenizeError};
use prism_tests::{encoder_fixtures, matrix, strings};
use serde_json::Value;

fn fixtures() -> PathBuf {
    encoder_fixtures()
}

fn reference(folder: &Path) -> Value {
    prism_tests::json_file(&folder.join("reference.json"))
}

/// The largest `|got - want|`, row by row.
fn max_diff(got: &ndarray::Array2<f32>, want: &[Vec<f32>]) -> f32 {
    assert_eq!(got.nrows(), want.len(), "rows");
    got.rows()
        .into_iter()
        .zip(want)
        .flat_map(|(g, w)| {
            assert_eq!(g.len(), w.len(), "width");
            g.iter().zip(w).map(|(a, b)| (a - b).abs()).collect::<Vec<_>>()
        })
        .fold(0.0, f32::max)
}

/// Runs a fixture folder through the encoder and checks it against its reference: whole
/// batch, each text alone, on 1 and 2 threads; token counts and the refusal of long texts.
fn check_folder(name: &str, tolerance: f32) -> Encoder {
    let folder = fixtures().join(name);
    let r = reference(&folder);
    let encoder = Encoder::load(&folder, &Overrides::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let limit = r["max_seq_length"].as_u64().unwrap() as usize;
    assert_eq!(encoder.config().max_seq_length, limit, "{name}: max_seq_length");
    let texts = strings(&r["texts"]);
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let pairs = r.get("pairs").map(strings);
    let pairs: Option<Vec<&str>> = pairs.as_ref().map(|p| p.iter().map(String::as_str).collect());
    let want = matrix(r.get("embeddings").or(r.get("logits")).unwrap());
    let tokens = encoder.tokenizer().encode(&texts, pairs.as_deref(), true).unwrap();
    for (i, n) in r["tokens"].as_array().unwrap().iter().enumerate() {
        let n = n.as_u64().unwrap() as usize;
        assert_eq!(tokens.lengths[i], n.min(limit), "{name}: text {i}'s tokens");
        let one = [texts[i]];
        let pair = pairs.as_ref().map(|p| [p[i]]);
        let whole = encoder.tokenizer().encode(&one, pair.as_ref().map(|p| &p[..]), false);
        if n > limit {
            assert_eq!(
                whole.unwrap_err(),
                TokenizeError::TooLong {
                    index: 0,
                    tokens: n,
                    limit
                }
            );
        } else {
            assert_eq!(whole.unwrap().lengths, vec![n]);
        }
    }
    for threads in [1, 2] {
        let device = CpuDevice::new(threads).unwrap();
        let batch = encoder.forward(&device, &tokens);
        let d = max_diff(&batch, &want);
        eprintln!("{name}, {threads} thread(s): max |got - reference| = {d:e}");
        assert!(
            d <= tolerance,
            "{name}, {threads} thread(s): differs from the reference by {d}"
        );
        // Alone, each text gets the answer it gets in the batch.
        for i in 0..texts.len() {
            let alone = encoder.forward(&device, &tokens.slice(i..i + 1));
            let d = max_diff(&alone, &[batch.row(i).to_vec()]);
            assert!(d <= 1e-5, "{name}: text {i} alone differs from the batch by {d}");
        }
    }
    encoder
}

#[test]
fn mean_pooling_and_normalize_in_the_current_layout() {
    let e = check_folder("tiny-mean", 1e-5);
    assert_eq!(
        e.config().task,
        Task::Embedding {
            pooling: Pooling::Mean,
            normalize: true
        }
    );
}

#[test]
fn cls_pooling_in_the_older_layout_with_the_tokenizer_s_limit() {
    let e = check_folder("tiny-cls", 1e-5);
    assert_eq!(
        e.config().task,
        Task::Embedding {
            pooling: Pooling::Cls,
            normalize: false
        }
    );
}

#[test]
fn a_classifier_answers_logits_with_its_labels() {
    let e = check_folder("tiny-classifier", 1e-5);
    assert_eq!(e.labels(), ["negative", "neutral", "positive"]);
    assert_eq!(e.output_width(), 3);
}

#[test]
fn a_cross_encoder_scores_pairs() {
    let e = check_folder("tiny-cross-encoder", 1e-5);
    assert_eq!(e.labels(), ["LABEL_0"]);
}

/// A copy of fixture `name` with `edit` applied to its files.
fn edited(name: &str, edit: impl FnOnce(&Path)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join(name), dir.path());
    edit(dir.path());
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn set_json(file: &Path, key: &str, value: Value) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    v[key] = value;
    std::fs::write(file, serde_json::to_string(&v).unwrap()).unwrap();
}

fn refusal(dir: &Path, overrides: &Overrides) -> String {
    match Encoder::load(dir, overrides) {
        Ok(_) => panic!("expected a refusal"),
        Err(e) => {
            assert!(
                matches!(e, EncoderError::Config { .. } | EncoderError::Tensor { .. }),
                "{e:?}"
            );
            e.to_string()
        }
    }
}

#[test]
fn what_cannot_be_served_is_refused_with_the_file_the_key_and_the_value() {
    let d = edited("tiny-mean", |d| {
        set_json(
            &d.join("config.json"),
            "architectures",
            serde_json::json!(["RobertaModel"]),
        )
    });
    let e = refusal(d.path(), &Overrides::default());
    assert!(
        e.contains("config.json: architectures: `RobertaModel` is not supported"),
        "{e}"
    );

    let d = edited("tiny-mean", |d| {
        set_json(&d.join("config.json"), "hidden_act", serde_json::json!("swish"))
    });
    let e = refusal(d.path(), &Overrides::default());
    assert!(e.contains("config.json: hidden_act: `swish` is not supported"), "{e}");

    let d = edited("tiny-mean", |d| {
        set_json(
            &d.join("1_Pooling/config.json"),
            "pooling_mode",
            serde_json::json!("weightedmean"),
        )
    });
    let e = refusal(d.path(), &Overrides::default());
    assert!(
        e.contains("1_Pooling/config.json: pooling_mode: `weightedmean` is not supported"),
        "{e}"
    );

    let d = edited("tiny-cls", |d| {
        set_json(
            &d.join("1_Pooling/config.json"),
            "pooling_mode_mean_tokens",
            serde_json::json!(true),
        )
    });
    let e = refusal(d.path(), &Overrides::default());
    assert!(e.contains("2 modes are set (cls, mean)"), "{e}");

    let d = edited("tiny-mean", |d| std::fs::remove_file(d.join("modules.json")).unwrap());
    let e = refusal(d.path(), &Overrides::default());
    assert!(
        e.contains("modules.json: (file): not found") && e.contains("set `pooling`"),
        "{e}"
    );
    // ... unless the deployment file says how to pool.
    let pooled = Overrides {
        pooling: Some(Pooling::Cls),
        ..Overrides::default()
    };
    let e = Encoder::load(d.path(), &pooled).unwrap();
    assert_eq!(
        e.config().task,
        Task::Embedding {
            pooling: Pooling::Cls,
            normalize: false
        }
    );

    let d = edited("tiny-mean", |d| {
        set_json(&d.join("config.json"), "hidden_size", serde_json::json!(32))
    });
    let e = refusal(d.path(), &Overrides::default());
    assert!(e.contains("model.safetensors: tensor `embeddings.word_embeddings.weight` has shape [400, 64], config.json implies [400, 32]"), "{e}");

    let long = Overrides {
        max_seq_length: Some(65),
        ..Overrides::default()
    };
    let e = refusal(&fixtures().join("tiny-mean"), &long);
    assert!(
        e.contains("max_seq_length 65 is longer than the model's 64 positions"),
        "{e}"
    );
    let tiny = Overrides {
        max_seq_length: Some(3),
        ..Overrides::default()
    };
    let e = refusal(&fixtures().join("tiny-cross-encoder"), &tiny);
    assert!(
        e.contains("tokenizer.json: max_seq_length: 3 tokens leave no room for text"),
        "{e}"
    );
    let short = Overrides {
        max_seq_length: Some(8),
        ..Overrides::default()
    };
    assert_eq!(
        Encoder::load(&fixtures().join("tiny-mean"), &short)
            .unwrap()
            .config()
            .max_seq_length,
        8
    );
}
