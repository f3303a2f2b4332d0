//! The V2 wire and the domain, both ways, as pure functions: no I/O, no async, no HTTP
//! framework. Every protocol adapter decodes into a [`Request`] here and writes an
//! [`Answer`] from here, so a V2 rule (a parameter, a message, an encoding) is written
//! once.
//!
//! * [`request`]: a body (JSON header, binary part) into a [`Request`], generic over what
//!   is served;
//! * [`signature`]: a request's inputs checked against what it is sent to (a model's
//!   `[-1, features]` input, a pipeline's declared tensors);
//! * [`tensor`]: tensors between JSON values, little-endian bytes and `f32`;
//! * [`response`]: an [`Answer`] into a V2 response, JSON or binary.
//!
//! Every refusal is a [`DecodeError`] that names the input and says what was expected
//! and what came.

pub mod grpc;
pub mod request;
pub mod response;
pub mod signature;
pub mod tensor;

pub use request::{Input, InputValue, Request, RequestedOutput, Tensor, Values};
pub use response::{Answer, AnswerOutput, AnswerValue, Encoded, Written, written};
pub use signature::Source;

use prism_protocol::ErrorKind;

use crate::store::Failure;

/// Why a request cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Malformed, or asking for what cannot be: a message naming the field.
    #[error("{0}")]
    Invalid(String),
    /// A tensor whose shape does not fit what it is sent to.
    #[error("{0}")]
    Shape(String),
    #[error("Content-Encoding `{0}` is not supported; send the request body uncompressed")]
    UnsupportedEncoding(String),
    #[error("the request body is larger than the server's limit of {limit} bytes (server.max_request_bytes)")]
    TooLarge { limit: usize },
    #[error(
        "the object is {size} bytes, larger than the server's limit of {limit} bytes for one object (object_store.max_object_bytes)"
    )]
    ObjectTooLarge { size: u64, limit: usize },
    #[error(
        "the request body did not arrive within {0:?} (server.body_read_timeout_s); send it faster or raise the limit"
    )]
    BodyTimeout(std::time::Duration),
}

impl DecodeError {
    /// The kind an object keeps when the work that should produce it was refused so.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DecodeError::Shape(_) => ErrorKind::ShapeError,
            _ => ErrorKind::InvalidInput,
        }
    }

    /// What an object keeps when the work that should produce it was refused so.
    pub fn failure(&self) -> Failure {
        Failure {
            kind: self.kind(),
            message: self.to_string(),
            attempts: 1,
        }
    }
}

/// A malformed request: the one constructor of [`DecodeError::Invalid`].
pub(crate) fn invalid(message: impl Into<String>) -> DecodeError {
    DecodeError::Invalid(message.into())
}

/// A tensor that does not fit: the one constructor of [`DecodeError::Shape`].
pub(crate) fn shape(message: impl Into<String>) -> DecodeError {
    DecodeError::Shape(message.into())
}
