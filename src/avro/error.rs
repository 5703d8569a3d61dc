//! The codec's errors, each saying whose fault it is: the record's (dead-letter it), the
//! registry's right now (keep the record, retry later), or the setup's (an operator must act).

use crate::domain::{RejectedContext, Rejection};

/// A schema registry request that did not give an answer the codec can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// No answer, a timeout, a 5xx, 408 or 429: the same request may succeed later.
    #[error("schema registry unavailable ({operation}): {reason}")]
    Unavailable {
        operation: &'static str,
        reason: String,
    },
    /// The registry answered no (401/403 credentials, 404 subject, 409 incompatible schema,
    /// 422 invalid schema): asking again will not change it until an operator acts.
    #[error("schema registry refused {operation} (HTTP {status}): {reason}")]
    Refused {
        operation: &'static str,
        status: u16,
        reason: String,
    },
    /// The registry answered with something the codec cannot use (a schema that does not
    /// parse, an answer without an id).
    #[error("schema registry answer to {operation} is unusable: {reason}")]
    Invalid {
        operation: &'static str,
        reason: String,
    },
    /// The client could not be built (bad CA or identity file, bad URL).
    #[error("schema registry client: {0}")]
    Setup(String),
}

impl RegistryError {
    /// True when the same call may succeed later without anyone acting.
    pub fn is_retriable(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }

    /// A short label for metrics.
    pub fn class(&self) -> &'static str {
        match self {
            RegistryError::Unavailable { .. } => "registry_unavailable",
            RegistryError::Refused { .. } => "registry_refused",
            RegistryError::Invalid { .. } => "registry_invalid",
            RegistryError::Setup(_) => "registry_setup",
        }
    }
}

/// An output record that could not be encoded. Nothing was produced: the caller keeps the
/// record (and its offsets) and either retries or stops.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The writer schema's id could not be had: see [`RegistryError::is_retriable`].
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The value does not fit the writer schema (a number out of `int` range, a symbol the
    /// latest registered schema lacks). Permanent for this record.
    #[error("{record} does not fit schema id {schema_id}: {reason}")]
    Value {
        record: &'static str,
        schema_id: u32,
        reason: String,
    },
}

impl EncodeError {
    pub fn is_retriable(&self) -> bool {
        matches!(self, EncodeError::Registry(e) if e.is_retriable())
    }

    /// A short label for metrics.
    pub fn class(&self) -> &'static str {
        match self {
            EncodeError::Registry(e) => e.class(),
            EncodeError::Value { .. } => "invalid_value",
        }
    }
}

/// An input record that could not be turned into the contract's JSON shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The record is bad (class and reason): dead-letter it.
    #[error("{0}")]
    Rejected(Rejection),
    /// Not the record's fault: keep it and retry later (or stop, when not retriable).
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl DecodeError {
    /// A short label for metrics: the rejection class or the registry error's class.
    pub fn class(&self) -> &'static str {
        match self {
            DecodeError::Rejected(r) => r.class.as_str(),
            DecodeError::Registry(e) => e.class(),
        }
    }
}

/// A launch record that did not become a [`crate::domain::LaunchRequest`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LaunchDecodeError {
    /// Dead-letter the record and publish `REJECTED`, keyed and labelled by `context` (what
    /// could be read of the record's request_id, action and metadata).
    #[error("{rejection}")]
    Rejected {
        rejection: Rejection,
        context: RejectedContext,
    },
    /// Not the record's fault: keep it (do not commit its offset) and retry later.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl From<Rejection> for DecodeError {
    fn from(r: Rejection) -> Self {
        DecodeError::Rejected(r)
    }
}

/// An Avro error's message with its causes, for a reason a human reads.
pub(crate) fn avro_reason(e: &apache_avro::Error) -> String {
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !reason.contains(&text) {
            reason.push_str(": ");
            reason.push_str(&text);
        }
        source = s.source();
    }
    reason
}
