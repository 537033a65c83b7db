//! OpenAI-style server-sent events for streaming completions.
//!
//! The chunk layout follows what OpenAI's API sends (and vLLM mirrors): every event is
//! `data: {json}\n\n`; chat streams open with a `delta.role` chunk, then one content chunk per
//! token, then a chunk with an empty delta and the `finish_reason`; with
//! `stream_options.include_usage` a last chunk with empty `choices` carries `usage`; the stream
//! ends with `data: [DONE]\n\n`.
//!
//! The JSON head shared by all chunks of a stream (id, object, created, model) is serialized once;
//! a token chunk is then a few `extend_from_slice` calls into one buffer, and all chunks produced
//! by one engine step for a request go out as one body frame.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::scheduler::{Emitted, FinishReason};
use crate::tokenizer::generated_word;

/// Which OpenAI API a stream belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    /// `/v1/chat/completions`
    Chat,
    /// `/v1/completions`
    Completion,
}

/// Builds the chunks of one stream.
#[derive(Debug, Clone)]
pub struct ChunkWriter {
    kind: ApiKind,
    /// `data: {"id":..,"object":..,"created":..,"model":..,`
    head: Bytes,
}

/// Token usage of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache (vLLM's `prompt_tokens_details`).
    pub cached_tokens: usize,
}

impl Usage {
    /// The OpenAI `usage` object.
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": { "cached_tokens": self.cached_tokens },
        })
    }
}

impl ChunkWriter {
    /// A writer for stream `id` of `model`.
    pub fn new(kind: ApiKind, id: &str, created: u64, model: &str) -> Self {
        let object = match kind {
            ApiKind::Chat => "chat.completion.chunk",
            ApiKind::Completion => "text_completion",
        };
        let head = format!(
            "data: {{\"id\":{},\"object\":\"{object}\",\"created\":{created},\"model\":{},",
            serde_json::Value::from(id),
            serde_json::Value::from(model)
        );
        Self {
            kind,
            head: Bytes::from(head),
        }
    }

    fn choice(&self, buf: &mut BytesMut, text: Option<(&str, &str)>, finish: Option<FinishReason>) {
        buf.extend_from_slice(&self.head);
        buf.extend_from_slice(b"\"choices\":[{\"index\":0,");
        match (self.kind, text) {
            (ApiKind::Chat, Some((sep, word))) => {
                buf.extend_from_slice(b"\"delta\":{\"content\":\"");
                buf.extend_from_slice(sep.as_bytes());
                buf.extend_from_slice(word.as_bytes());
                buf.extend_from_slice(b"\"}");
            }
            (ApiKind::Chat, None) => buf.extend_from_slice(b"\"delta\":{}"),
            (ApiKind::Completion, t) => {
                buf.extend_from_slice(b"\"text\":\"");
                if let Some((sep, word)) = t {
                    buf.extend_from_slice(sep.as_bytes());
                    buf.extend_from_slice(word.as_bytes());
                }
                buf.extend_from_slice(b"\"");
            }
        }
        buf.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(r) => {
                buf.extend_from_slice(b"\"");
                buf.extend_from_slice(r.as_str().as_bytes());
                buf.extend_from_slice(b"\"");
            }
            None => buf.extend_from_slice(b"null"),
        }
        buf.extend_from_slice(b"}]}\n\n");
    }

    /// The opening chunk of a chat stream (`delta: {role: assistant, content: ""}`).
    pub fn role(&self, buf: &mut BytesMut) {
        if self.kind == ApiKind::Chat {
            buf.extend_from_slice(&self.head);
            buf.extend_from_slice(
                b"\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
            );
        }
    }

    /// One token's chunk.
    pub fn token(&self, buf: &mut BytesMut, seed: u64, index: u32) {
        self.choice(buf, Some(generated_word(seed, index)), None);
    }

    /// The chunk carrying `finish_reason`.
    pub fn finish(&self, buf: &mut BytesMut, reason: FinishReason) {
        self.choice(buf, None, Some(reason));
    }

    /// The usage chunk (`choices: []`).
    pub fn usage(&self, buf: &mut BytesMut, usage: Usage) {
        buf.extend_from_slice(&self.head);
        buf.extend_from_slice(b"\"choices\":[],\"usage\":");
        buf.extend_from_slice(usage.to_json().to_string().as_bytes());
        buf.extend_from_slice(b"}\n\n");
    }
}

/// The terminating event.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// Error that aborts a stream (the connection is closed without a proper end).
#[derive(Debug)]
pub struct StreamAborted(pub &'static str);

impl std::fmt::Display for StreamAborted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for StreamAborted {}

/// Response body of a streaming request: turns engine events into SSE frames.
#[derive(Debug)]
pub struct SseBody {
    rx: UnboundedReceiver<Emitted>,
    writer: ChunkWriter,
    seed: u64,
    sent: u32,
    prompt_tokens: usize,
    include_usage: bool,
    drop_after: Option<u32>,
    queued: VecDeque<Bytes>,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Streaming,
    /// Send what is queued, then end.
    Ending,
    /// Send what is queued, then fail (fault injection).
    Dropping,
}

impl SseBody {
    /// A stream fed by `rx`. `drop_after` closes the connection after that many tokens.
    pub fn new(
        rx: UnboundedReceiver<Emitted>,
        writer: ChunkWriter,
        seed: u64,
        prompt_tokens: usize,
        include_usage: bool,
        drop_after: Option<u32>,
    ) -> Self {
        Self {
            rx,
            writer,
            seed,
            sent: 0,
            prompt_tokens,
            include_usage,
            drop_after,
            queued: VecDeque::new(),
            state: State::Streaming,
        }
    }

    fn on_event(&mut self, ev: Emitted) {
        let mut buf = BytesMut::with_capacity(512);
        if self.sent == 0 {
            // Like vLLM, the role chunk goes out with the first token, not before it, so
            // "time to first chunk" is still time to first token.
            self.writer.role(&mut buf);
        }
        while self.sent < ev.generated {
            self.writer.token(&mut buf, self.seed, self.sent);
            self.sent += 1;
            if self.drop_after.is_some_and(|n| self.sent >= n) {
                self.queued.push_back(buf.freeze());
                self.state = State::Dropping;
                return;
            }
        }
        if let Some(reason) = ev.finish {
            self.writer.finish(&mut buf, reason);
            if self.include_usage {
                let usage = Usage {
                    prompt_tokens: self.prompt_tokens,
                    completion_tokens: self.sent as usize,
                    cached_tokens: ev.cached_tokens,
                };
                self.writer.usage(&mut buf, usage);
            }
            buf.extend_from_slice(DONE);
            self.state = State::Ending;
        }
        self.queued.push_back(buf.freeze());
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = StreamAborted;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamAborted>>> {
        loop {
            if let Some(b) = self.queued.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            match self.state {
                State::Ending => return Poll::Ready(None),
                State::Dropping => {
                    return Poll::Ready(Some(Err(StreamAborted(
                        "stream dropped by fault injection",
                    ))))
                }
                State::Streaming => {}
            }
            match self.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(ev)) => self.on_event(ev),
                Poll::Ready(None) => {
                    return Poll::Ready(Some(Err(StreamAborted("engine stopped"))))
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Ending && self.queued.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_valid_json_events() {
        let w = ChunkWriter::new(ApiKind::Chat, "chatcmpl-1", 5, "m\"x");
        let mut buf = BytesMut::new();
        w.role(&mut buf);
        w.token(&mut buf, 1, 0);
        w.token(&mut buf, 1, 1);
        w.finish(&mut buf, FinishReason::Length);
        w.usage(
            &mut buf,
            Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
                cached_tokens: 0,
            },
        );
        let text = std::str::from_utf8(&buf).unwrap();
        let events: Vec<serde_json::Value> = text
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
            .collect();
        assert_eq!(events.len(), 5);
        assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(events[0]["model"], "m\"x");
        assert_eq!(events[3]["choices"][0]["finish_reason"], "length");
        assert_eq!(events[4]["usage"]["total_tokens"], 5);
        let c = ChunkWriter::new(ApiKind::Completion, "cmpl-1", 5, "m");
        let mut buf = BytesMut::new();
        c.role(&mut buf);
        assert!(buf.is_empty());
        c.token(&mut buf, 1, 3);
        let v: serde_json::Value = serde_json::from_str(
            std::str::from_utf8(&buf)
                .unwrap()
                .trim()
                .strip_prefix("data: ")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(v["object"], "text_completion");
        assert!(v["choices"][0]["text"].as_str().unwrap().starts_with(' '));
    }

    #[tokio::test]
    async fn role_chunk_leaves_with_first_token_and_stream_ends_with_done() {
        use http_body_util::BodyExt;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let writer = ChunkWriter::new(ApiKind::Chat, "c", 1, "m");
        let mut body = SseBody::new(rx, writer, 3, 10, true, None);
        tx.send(Emitted {
            generated: 1,
            finish: None,
            cached_tokens: 0,
        })
        .unwrap();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let first = std::str::from_utf8(&first).unwrap();
        assert!(
            first.contains("\"role\":\"assistant\"") && first.contains("\"delta\":{\"content\":\""),
            "{first}"
        );
        tx.send(Emitted {
            generated: 2,
            finish: Some(FinishReason::Length),
            cached_tokens: 0,
        })
        .unwrap();
        let last = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(last.ends_with(DONE));
        assert!(std::str::from_utf8(&last)
            .unwrap()
            .contains("\"completion_tokens\":2"));
        assert!(body.frame().await.is_none());
    }
}
