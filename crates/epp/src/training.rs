//! What the picker learns from a response it never carries: Envoy forwards the response's
//! headers and streamed body chunks to the picker when its `ext_proc` filter asks for them
//! (`processing_mode: {response_header_mode: SEND, response_body_mode: STREAMED}`), and a pool
//! with a `predictor` is trained from them as the gateway's `Finish` trains it: TTFT at the
//! first body chunk, TPOT (streams) or the whole latency (whole responses) at the end of the
//! stream, each from the moment of the pick. Without those messages the pick still works; the
//! model just never warms (and the in-flight counts are released when the ext_proc stream
//! ends, as before).

use std::sync::Arc;
use std::time::Instant;

use switchyard_inference::{InferencePicker, Measured, Ticket, TokenEvents, UsageTail};

/// Bytes of a whole (non-streamed) response's end kept to find its `usage`.
const USAGE_TAIL: usize = 4096;

/// A pick whose in-flight tokens are released when the ext_proc stream ends, and whose
/// response trains the pool's predictor.
pub(crate) struct Picked {
    pub(crate) picker: Arc<InferencePicker>,
    pub(crate) index: usize,
    tokens: u32,
    prompt_tokens: u32,
    ticket: Option<Ticket>,
    stream: bool,
    picked_at: Instant,
    first_chunk: Option<Instant>,
    events: TokenEvents,
    output_tokens: u64,
    tail: Option<UsageTail>,
    trained: bool,
}

impl Picked {
    pub(crate) fn new(
        picker: Arc<InferencePicker>,
        index: usize,
        (tokens, prompt_tokens): (u32, u32),
        ticket: Option<Ticket>,
        stream: bool,
    ) -> Self {
        Self {
            picker,
            index,
            tokens,
            prompt_tokens,
            ticket,
            stream,
            picked_at: Instant::now(),
            first_chunk: None,
            events: TokenEvents::default(),
            output_tokens: 0,
            tail: None,
            trained: false,
        }
    }

    /// A chunk of the response body, the last when `end`.
    pub(crate) fn on_body(&mut self, chunk: &[u8], end: bool) {
        if self.ticket.is_none() || self.trained {
            return;
        }
        let now = Instant::now();
        if self.first_chunk.is_none() && !chunk.is_empty() {
            self.first_chunk = Some(now);
            self.picker.prefilled(self.index, self.prompt_tokens);
        }
        if self.stream {
            self.output_tokens += self.events.push(chunk);
        } else {
            self.tail
                .get_or_insert_with(|| UsageTail::new(USAGE_TAIL))
                .push(chunk);
        }
        if end {
            self.train(now);
        }
    }

    fn train(&mut self, end: Instant) {
        self.trained = true;
        let Some(ticket) = &self.ticket else { return };
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let measured = match (self.stream, self.first_chunk) {
            (true, Some(first)) => {
                let n = self.output_tokens;
                let tpot = (n > 1).then(|| ms(end - first) / (n - 1) as f64);
                Measured::Stream {
                    ttft_ms: ms(first - self.picked_at),
                    tpot_ms: tpot,
                }
            }
            (false, Some(_)) => {
                let usage = self.tail.as_mut().and_then(UsageTail::usage);
                let Some(n) = usage.and_then(|u| u32::try_from(u.completion_tokens).ok()) else {
                    return;
                };
                if n == 0 {
                    return;
                }
                Measured::Total {
                    latency_ms: ms(end - self.picked_at),
                    output_tokens: n,
                }
            }
            _ => return,
        };
        self.picker.observe(ticket, measured);
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        if self.ticket.is_some() && self.first_chunk.is_none() {
            self.picker.prefilled(self.index, self.prompt_tokens);
        }
        self.picker
            .finish(self.index, self.tokens, self.ticket.as_ref());
    }
}
