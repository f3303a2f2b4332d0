//! A model request: rows checked and queued (or an input object waited for), or texts
//! tokenized off the async threads and queued in as many batches as they need (a request
//! larger than one batch is split, and its answer joined); then the answer's rows turned
//! into the outputs the request wants.

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;

use ndarray::{Array2, Axis};
use prism_kernels::encoder::TokenizeError;
use prism_protocol::DType;

use super::{Count, Deadline, InferenceError, Wanted};
use crate::codec::{self, AnswerOutput, AnswerValue, DecodeError, Input, Source, invalid, shape, signature};
use crate::serving::{Deployment, Io, Rows, ServeError};
use crate::state::{AppState, Served};
use crate::store::Settles;

type Rows2 = Pin<Box<dyn Future<Output = Result<Array2<f32>, InferenceError>> + Send>>;

/// A model's rows are queued (or will be, once their input object is ready); `output`
/// yields the answer's rows. `rows`: how many, when known already.
pub(super) struct ModelWork {
    deployment: Arc<Deployment>,
    rows: Option<usize>,
    /// The tokens of an encoder's texts.
    pub(super) tokens: Option<usize>,
    output: Rows2,
}

pub(super) async fn begin(
    state: &AppState,
    d: &Arc<Deployment>,
    request: codec::Request,
) -> Result<ModelWork, InferenceError> {
    match &d.signature.io {
        Io::Rows(io) => rows(state, d, io, request.inputs),
        Io::Text { .. } => texts(d, request).await,
    }
}

fn rows(
    state: &AppState,
    d: &Arc<Deployment>,
    io: &prism_config::RowsIo,
    inputs: Vec<Input>,
) -> Result<ModelWork, InferenceError> {
    let deployment = Arc::clone(d);
    let d = Arc::clone(d);
    Ok(match signature::model_input(&d.spec, io, inputs)? {
        Source::Inline(a) => {
            let rows = Some(a.nrows());
            let queued = d.submit(Rows::Owned(a))?;
            ModelWork {
                deployment,
                rows,
                tokens: None,
                output: Box::pin(async move { Ok(d.answer(queued).await?) }),
            }
        }
        Source::Object(r) => {
            // An unknown object is refused now; a pending one is waited for by the work
            // (the output of async work chained in).
            let info = state.store.info(r)?;
            let rows = info.shape.as_ref().and_then(|s| s.first().copied());
            let store = Arc::clone(&state.store);
            let io = io.clone();
            ModelWork {
                deployment,
                rows,
                tokens: None,
                output: Box::pin(async move {
                    let lease = store.get(r, None).await?;
                    // A large object is checked (and converted) off the async workers.
                    let rows = if lease.meta.bytes() > 1 << 20 {
                        let d = Arc::clone(&d);
                        tokio::task::spawn_blocking(move || signature::object_rows(&d.spec, &io, lease, true))
                            .await
                            .map_err(|e| InferenceError::Internal(format!("reading the input object stopped: {e}")))??
                    } else {
                        signature::object_rows(&d.spec, &io, lease, true)?
                    };
                    Ok(d.infer(rows).await?)
                }),
            }
        }
    })
}

/// Texts for an encoder: tokenized on a blocking thread, then queued in as few batches as
/// `max_batch_size` and `max_batch_tokens` allow.
async fn texts(d: &Arc<Deployment>, request: codec::Request) -> Result<ModelWork, InferenceError> {
    let names: Vec<&str> = d.signature.inputs.iter().map(|t| t.name.as_str()).collect();
    let texts = signature::text_input(d.name(), &names, request.inputs)?;
    let text_input = names[0].to_owned();
    let tokenizer = d.tokenizer().ok_or_else(|| ServeError::NotReady(d.name().to_owned()))?;
    let truncate = request.truncate;
    let tokens = tokio::task::spawn_blocking(move || {
        let t: Vec<&str> = texts.texts.iter().map(String::as_str).collect();
        let p: Option<Vec<&str>> = texts.pairs.as_ref().map(|p| p.iter().map(String::as_str).collect());
        tokenizer.encode(&t, p.as_deref(), truncate)
    })
    .await
    .map_err(|e| InferenceError::Internal(format!("tokenizing stopped: {e}")))?
    .map_err(|e| tokenize_refusal(&text_input, e))?;
    let (rows, total) = (tokens.texts(), tokens.total());
    let b = &d.spec.batching;
    let parts = split(&tokens.lengths, b.max_batch_size, b.max_batch_tokens);
    if parts.len() > b.max_queue_size {
        // A queue that can never hold them all: retrying would not help (503 would say it
        // might).
        return Err(invalid(format!(
            "input `{text_input}`: {rows} texts make {} batches, more than the model's queue holds (max_queue_size {}); send fewer texts a request",
            parts.len(),
            b.max_queue_size
        ))
        .into());
    }
    let queued = if parts.len() == 1 {
        vec![d.submit(tokens)?]
    } else {
        parts
            .into_iter()
            .map(|r| d.submit(tokens.slice(r)))
            .collect::<Result<Vec<_>, _>>()?
    };
    let deployment = Arc::clone(d);
    let d = Arc::clone(d);
    Ok(ModelWork {
        deployment,
        rows: Some(rows),
        tokens: Some(total),
        output: Box::pin(async move {
            let answers = futures::future::join_all(queued.into_iter().map(|q| d.answer(q))).await;
            let parts = answers.into_iter().collect::<Result<Vec<_>, _>>()?;
            if parts.len() == 1 {
                return Ok(parts.into_iter().next().expect("one part"));
            }
            let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
            Ok(ndarray::concatenate(Axis(0), &views).expect("every part has the model's width"))
        }),
    })
}

fn tokenize_refusal(input: &str, e: TokenizeError) -> DecodeError {
    match e {
        TokenizeError::TooLong { .. } => shape(format!("input `{input}`: {e}")),
        TokenizeError::Failed { .. } | TokenizeError::Empty { .. } => invalid(format!("input `{input}`: {e}")),
    }
}

/// Consecutive texts (by their token counts) cut into parts of at most `max_rows` texts
/// and `max_tokens` padded tokens (texts × the longest); a text longer than `max_tokens`
/// alone cannot be (the model's limit is checked against `max_tokens` at load).
fn split(lengths: &[usize], max_rows: usize, max_tokens: usize) -> Vec<Range<usize>> {
    let mut parts = Vec::new();
    let (mut start, mut longest) = (0, 0);
    for (i, &len) in lengths.iter().enumerate() {
        let widest = longest.max(len);
        let rows = i + 1 - start;
        if rows > 1 && (rows > max_rows || rows * widest > max_tokens) {
            parts.push(start..i);
            start = i;
            longest = len;
        } else {
            longest = widest;
        }
    }
    if start < lengths.len() {
        parts.push(start..lengths.len());
    }
    parts
}

/// The classifier label of each row of `logits`: the name of its largest logit.
fn labels(logits: &Array2<f32>, names: &[String]) -> Vec<String> {
    logits
        .rows()
        .into_iter()
        .map(|row| {
            let best = row
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
            names.get(best.0).cloned().unwrap_or_default()
        })
        .collect()
}

/// Waits for the answer's rows and writes the outputs the request wants: the model's
/// rows (sent, or kept in the store), and a classifier's labels.
pub(super) async fn complete(
    state: &AppState,
    work: ModelWork,
    wanted: &[Wanted],
) -> Result<Vec<AnswerOutput>, InferenceError> {
    let d = work.deployment;
    let mut values = Some(work.output.await?);
    let names = match &d.signature.io {
        Io::Text { labels, .. } => labels.as_slice(),
        Io::Rows(_) => &[],
    };
    // Labels first: they read the logits that the numeric output then takes.
    let mut strings = wanted
        .iter()
        .any(|w| w.datatype == DType::Bytes)
        .then(|| labels(values.as_ref().expect("not taken yet"), names));
    let mut outputs = Vec::with_capacity(wanted.len());
    for w in wanted {
        let value = if w.datatype == DType::Bytes {
            AnswerValue::Strings(strings.take().expect("one BYTES output"))
        } else {
            let values = values.take().expect("one numeric output");
            if w.flags.by_ref {
                let shape = vec![values.nrows() as i64, values.ncols() as i64];
                let object_ref = state
                    .store
                    .put_array(values.into_dyn(), w.datatype, state.store.client_owner())
                    .await?;
                AnswerValue::Ref {
                    object_ref,
                    datatype: w.datatype,
                    shape,
                    accepted: false,
                }
            } else {
                AnswerValue::Rows {
                    values,
                    datatype: w.datatype,
                }
            }
        };
        outputs.push(AnswerOutput {
            name: w.name.clone(),
            binary: w.flags.binary,
            value,
        });
    }
    Ok(outputs)
}

/// `async`: the rows land in a pending object of the numeric output (the only one an
/// async request may want), counted when the work ends.
pub(super) fn accept(
    state: &Arc<AppState>,
    target: Served,
    work: ModelWork,
    wanted: Vec<Wanted>,
    deadline: Deadline,
    count: Count,
) -> Result<Vec<AnswerOutput>, InferenceError> {
    let store = Arc::clone(&state.store);
    let ModelWork {
        deployment,
        rows,
        output,
        ..
    } = work;
    let w = wanted
        .into_iter()
        .next()
        .expect("a request wants an output; async ones a numeric one (checked)");
    let object_ref = match store.create_pending(store.client_owner()) {
        Ok(r) => r,
        Err(e) => return count.finish(Err(e.into())),
    };
    let datatype = w.datatype;
    state.tasks.background.spawn(async move {
        let _settles = Settles::new(Arc::clone(&store), object_ref, "the inference");
        let result = match deadline.bound(&target, output).await {
            // A result the store cannot hold fails the object and is counted so.
            Ok(y) => store
                .fulfil_array(object_ref, y.into_dyn(), datatype)
                .await
                .map_err(InferenceError::from),
            Err(e) => {
                store.fail(object_ref, e.failure());
                Err(e)
            }
        };
        let _ = count.finish(result);
    });
    let width = deployment
        .signature
        .output(&w.name)
        .and_then(|t| t.shape.get(1).copied())
        .unwrap_or(-1);
    Ok(vec![AnswerOutput {
        name: w.name,
        binary: w.flags.binary,
        value: AnswerValue::Ref {
            object_ref,
            datatype,
            shape: vec![rows.map_or(-1, |n| n as i64), width],
            accepted: true,
        },
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_split_by_rows_and_by_padded_tokens() {
        assert_eq!(split(&[3, 3, 3], 2, 100), vec![0..2, 2..3]);
        assert_eq!(
            split(&[4, 4, 9, 2], 10, 16),
            vec![0..2, 2..3, 3..4],
            "3 × 9 > 16, 9 + 2: 2 × 9 > 16"
        );
        assert_eq!(split(&[5], 1, 5), vec![0..1]);
        assert_eq!(split(&[1, 1, 1, 1], 8, 4), vec![0..4]);
        assert!(split(&[], 4, 4).is_empty());
    }

    #[test]
    fn a_label_is_its_largest_logit_s_name() {
        let logits = ndarray::array![[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]];
        let names = ["neg".to_owned(), "neu".to_owned(), "pos".to_owned()];
        assert_eq!(labels(&logits, &names), vec!["neu", "neg"]);
    }

    #[test]
    fn a_text_too_long_is_refused_naming_its_tokens_and_the_limit() {
        let e = tokenize_refusal(
            "TEXT",
            TokenizeError::TooLong {
                index: 2,
                tokens: 300,
                limit: 256,
            },
        );
        assert_eq!(e.kind(), prism_config::ErrorKind::ShapeError);
        assert!(
            e.to_string()
                .starts_with("input `TEXT`: text 2 has 300 tokens, more than the model's limit of 256"),
            "{e}"
        );
    }
}
