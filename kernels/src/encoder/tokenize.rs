//! Text into token ids, as sentence-transformers does it: the folder's `tokenizer.json`
//! (the `tokenizers` crate), whitespace stripped from each text, its own padding and
//! truncation switched off, and truncation at the model's `max_seq_length` instead
//! (counting `[CLS]` and `[SEP]`; the longer text of a pair first).

use std::path::Path;

use tokenizers::{PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::EncoderError;

/// Token ids of a batch of texts, packed one text after the other (no padding).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// Each text's token count, in order; they sum to `ids.len()`.
    pub lengths: Vec<usize>,
}

impl Tokens {
    pub fn texts(&self) -> usize {
        self.lengths.len()
    }

    /// Tokens of all the texts.
    pub fn total(&self) -> usize {
        self.ids.len()
    }

    /// The texts `range` of this batch, as a batch of their own.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Tokens {
        let start: usize = self.lengths[..range.start].iter().sum();
        let len: usize = self.lengths[range.clone()].iter().sum();
        Tokens {
            ids: self.ids[start..start + len].to_vec(),
            type_ids: self.type_ids[start..start + len].to_vec(),
            lengths: self.lengths[range].to_vec(),
        }
    }

    /// Appends `other`'s texts after this batch's.
    pub fn extend(&mut self, other: &Tokens) {
        self.ids.extend_from_slice(&other.ids);
        self.type_ids.extend_from_slice(&other.type_ids);
        self.lengths.extend_from_slice(&other.lengths);
    }
}

/// Why texts cannot be tokenized.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenizeError {
    /// `truncate = false` and text `index` is longer than the model takes.
    #[error(
        "text {index} has {tokens} tokens, more than the model's limit of {limit} (max_seq_length); shorten it or allow truncation"
    )]
    TooLong { index: usize, tokens: usize, limit: usize },
    #[error("text {index}: the tokenizer failed: {reason}")]
    Failed { index: usize, reason: String },
    /// The tokenizer made no token of text `index` (a tokenizer without `[CLS]`/`[SEP]`
    /// given an empty text).
    #[error("text {index} has no tokens; send some text")]
    Empty { index: usize },
}

/// A folder's tokenizer, set up as sentence-transformers uses it.
#[derive(Clone)]
pub struct TextTokenizer {
    /// Truncates at `max_len`.
    truncating: Tokenizer,
    /// Truncates nothing, to tell a text's whole length.
    whole: Tokenizer,
    max_len: usize,
    lowercase: bool,
}

impl TextTokenizer {
    /// `tokenizer.json` under `dir`; `vocab_size` is the model's, which every id must fit.
    pub fn load(dir: &Path, max_len: usize, lowercase: bool, vocab_size: usize) -> Result<Self, EncoderError> {
        let path = dir.join("tokenizer.json");
        let fail = |key: &str, reason: String| EncoderError::Config {
            file: path.clone(),
            key: key.to_owned(),
            reason,
        };
        let mut whole = Tokenizer::from_file(&path).map_err(|e| fail("(file)", format!("cannot load: {e}")))?;
        whole.with_padding(None);
        whole
            .with_truncation(None)
            .map_err(|e| fail("truncation", e.to_string()))?;
        // Every id the tokenizer can give must index the model's embeddings.
        if let Some((token, id)) = whole.get_vocab(true).into_iter().max_by_key(|(_, id)| *id)
            && id as usize >= vocab_size
        {
            return Err(fail(
                "model.vocab",
                format!("token {token:?} has id {id}, past the model's vocab_size of {vocab_size}"),
            ));
        }
        // The limit counts `[CLS]` and `[SEP]`: it must leave room for text, even in a pair.
        let specials = whole.get_post_processor().map_or(0, |p| p.added_tokens(true));
        if max_len <= specials {
            return Err(fail(
                "max_seq_length",
                format!("{max_len} tokens leave no room for text beside the {specials} special tokens of a pair"),
            ));
        }
        let mut truncating = whole.clone();
        truncating
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| fail("truncation", e.to_string()))?;
        Ok(TextTokenizer {
            truncating,
            whole,
            max_len,
            lowercase,
        })
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Tokenizes `texts` (each paired with `pairs[i]` for a cross-encoder). With
    /// `truncate`, a text longer than the limit is cut to it; without, it is refused.
    pub fn encode(&self, texts: &[&str], pairs: Option<&[&str]>, truncate: bool) -> Result<Tokens, TokenizeError> {
        let mut tokens = Tokens::default();
        for (index, text) in texts.iter().enumerate() {
            let prepare = |t: &str| {
                let t = t.trim();
                if self.lowercase { t.to_lowercase() } else { t.to_owned() }
            };
            let first = prepare(text);
            let second = pairs.map(|p| prepare(p[index]));
            let tokenizer = if truncate { &self.truncating } else { &self.whole };
            let encoded = match second {
                Some(second) => tokenizer.encode((first, second), true),
                None => tokenizer.encode(first, true),
            }
            .map_err(|e| TokenizeError::Failed {
                index,
                reason: e.to_string(),
            })?;
            let n = encoded.get_ids().len();
            if n == 0 {
                return Err(TokenizeError::Empty { index });
            }
            if !truncate && n > self.max_len {
                return Err(TokenizeError::TooLong {
                    index,
                    tokens: n,
                    limit: self.max_len,
                });
            }
            tokens.ids.extend_from_slice(encoded.get_ids());
            tokens.type_ids.extend_from_slice(encoded.get_type_ids());
            tokens.lengths.push(n);
        }
        Ok(tokens)
    }
}
