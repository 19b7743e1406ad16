//! Streaming answers on the guarded path: [`GuardedStream`] hands the provider's items through,
//! reads usage from them, and ends the call (settle and `llm.response`, or `llm.error`) when the
//! provider's stream ends or fails; dropping it earlier ends the call as `llm.cancelled`.

use std::pin::Pin;

use futures_core::Stream;
use gov_core::TokenUsage;

use super::{Failure, Flight, Receipt};
use crate::Result;

/// Token counts that may arrive in parts (Anthropic reports input tokens when a stream starts
/// and output tokens as it ends). Later values replace earlier ones field by field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartialUsage {
    /// Input tokens, cached ones included.
    pub input_tokens: Option<u64>,
    /// Output tokens so far (providers report a running total).
    pub output_tokens: Option<u64>,
    /// Of the input tokens, how many were served from the provider's cache.
    pub cached_input_tokens: Option<u64>,
}

impl PartialUsage {
    pub(crate) fn merge(&mut self, other: PartialUsage) {
        self.input_tokens = other.input_tokens.or(self.input_tokens);
        self.output_tokens = other.output_tokens.or(self.output_tokens);
        self.cached_input_tokens = other.cached_input_tokens.or(self.cached_input_tokens);
    }
}

impl From<TokenUsage> for PartialUsage {
    fn from(u: TokenUsage) -> Self {
        Self {
            input_tokens: Some(u.input_tokens),
            output_tokens: Some(u.output_tokens),
            cached_input_tokens: Some(u.cached_input_tokens),
        }
    }
}

/// What a stream item tells the guarded path. Implement it for the item type of a stream
/// given to [`super::GuardClient::guard_stream`]; every method defaults to "nothing".
pub trait StreamChunk {
    /// Usage carried by this item, if any.
    fn usage(&self) -> Option<PartialUsage> {
        None
    }

    /// Why generation stopped, if this item says.
    fn finish_reason(&self) -> Option<&str> {
        None
    }

    /// The model that answers, if this item says.
    fn response_model(&self) -> Option<&str> {
        None
    }
}

type Inner<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Failure>> + Send>>;

/// A streaming answer on the guarded path.
///
/// Read it with [`GuardedStream::next`] until it returns `None`; [`GuardedStream::receipt`]
/// then holds its cost, and the call is settled (in the background by default: see
/// [`super::Llm::settled`]). Dropping it before the end (or dropping the
/// future of a `next` call that is settling the call) records `llm.cancelled` and releases the
/// reservation.
pub struct GuardedStream<T> {
    flight: Option<Flight>,
    inner: Inner<T>,
    receipt: Option<Receipt>,
}

impl<T> std::fmt::Debug for GuardedStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedStream")
            .field("flight", &self.flight)
            .field("receipt", &self.receipt)
            .finish_non_exhaustive()
    }
}

impl<T: StreamChunk> GuardedStream<T> {
    pub(crate) fn new(flight: Flight, inner: Inner<T>) -> Self {
        Self {
            flight: Some(flight),
            inner,
            receipt: None,
        }
    }

    /// The next item; `None` once the stream has ended and the call is settled. A provider
    /// error ends the call as `llm.error` and is returned as [`crate::Error::Provider`].
    pub async fn next(&mut self) -> Option<Result<T>> {
        self.flight.as_ref()?;
        let item = std::future::poll_fn(|cx| self.inner.as_mut().poll_next(cx)).await;
        let flight = self.flight.as_mut()?;
        match item {
            Some(Ok(chunk)) => {
                flight.observe(chunk.usage(), chunk.finish_reason(), chunk.response_model());
                Some(Ok(chunk))
            }
            Some(Err(failure)) => {
                let flight = self.flight.take()?;
                Some(Err(flight.fail(failure).await))
            }
            None => {
                let flight = self.flight.take()?;
                self.receipt = Some(flight.finish(None, None, None).await);
                None
            }
        }
    }

    /// The receipt, once the stream has ended.
    pub fn receipt(&self) -> Option<&Receipt> {
        self.receipt.as_ref()
    }

    /// Whether the call has ended (settled or failed).
    pub fn is_done(&self) -> bool {
        self.flight.is_none()
    }

    /// Reads the stream to its end and returns the items and the receipt.
    pub async fn collect(mut self) -> Result<(Vec<T>, Receipt)> {
        let mut items = Vec::new();
        while let Some(item) = self.next().await {
            items.push(item?);
        }
        match self.receipt.take() {
            Some(r) => Ok((items, r)),
            None => Err(crate::Error::Config(
                "the stream had already ended with an error".into(),
            )),
        }
    }
}
