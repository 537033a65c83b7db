//! Frames in: connection control, flow control, resets and request bodies.

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Conn, ConnError, Result, MAX_LOCAL_RESETS, RESET_BUDGET, RESET_REFILL_PER_SEC};
use crate::h2_server::core::reset_stream;
use crate::h2_server::frame::{self, Head, Reason, HEADER_LEN};

impl<'a, T: AsyncRead + AsyncWrite + Unpin> Conn<'a, T> {
    pub(super) fn on_frames(&mut self) -> Result {
        if !self.preface {
            if self.rbuf.len() < frame::PREFACE.len() {
                return if frame::PREFACE.starts_with(&self.rbuf) {
                    Ok(())
                } else {
                    Err(ConnError(Reason::PROTOCOL_ERROR, "no connection preface"))
                };
            }
            if &self.rbuf[..frame::PREFACE.len()] != frame::PREFACE {
                return Err(ConnError(Reason::PROTOCOL_ERROR, "no connection preface"));
            }
            self.rbuf.advance(frame::PREFACE.len());
            self.preface = true;
        }
        while !self.failed && self.rbuf.len() >= HEADER_LEN {
            let head = Head::parse(&self.rbuf);
            if head.len > frame::DEFAULT_MAX_FRAME {
                return Err(ConnError(
                    Reason::FRAME_SIZE_ERROR,
                    "frame over SETTINGS_MAX_FRAME_SIZE",
                ));
            }
            if self.rbuf.len() < HEADER_LEN + head.len {
                self.rbuf.reserve(HEADER_LEN + head.len - self.rbuf.len());
                break;
            }
            self.rbuf.advance(HEADER_LEN);
            let payload = self.rbuf.split_to(head.len).freeze();
            self.on_frame(head, payload)?;
        }
        Ok(())
    }

    fn on_frame(&mut self, head: Head, payload: Bytes) -> Result {
        if !self.settings_seen && head.kind != frame::SETTINGS {
            return Err(ConnError(
                Reason::PROTOCOL_ERROR,
                "first frame is not SETTINGS",
            ));
        }
        if self.block.is_some() && head.kind != frame::CONTINUATION {
            return Err(ConnError(
                Reason::PROTOCOL_ERROR,
                "frame inside a header block",
            ));
        }
        match head.kind {
            frame::DATA => self.on_data(head, payload),
            frame::HEADERS => self.on_headers(head, &payload),
            frame::CONTINUATION => self.on_continuation(head, &payload),
            frame::PRIORITY => {
                if head.stream == 0 {
                    return Err(ConnError(Reason::PROTOCOL_ERROR, "PRIORITY on stream 0"));
                }
                if head.len != 5 {
                    let mut core = self.shared.lock();
                    reset_stream(&mut core, head.stream, Reason::FRAME_SIZE_ERROR);
                }
                Ok(())
            }
            frame::RST_STREAM => self.on_reset(head, &payload),
            frame::SETTINGS => self.on_settings(head, &payload),
            frame::PING => {
                if head.stream != 0 {
                    return Err(ConnError(Reason::PROTOCOL_ERROR, "PING on a stream"));
                }
                if head.len != 8 {
                    return Err(ConnError(Reason::FRAME_SIZE_ERROR, "PING not 8 bytes"));
                }
                if head.has(frame::ACK) {
                    if let Some(k) = &mut self.ping {
                        k.waiting = false;
                    }
                } else {
                    let mut opaque = [0u8; 8];
                    opaque.copy_from_slice(&payload);
                    frame::put_ping(&mut self.shared.lock().out, frame::ACK, opaque);
                }
                Ok(())
            }
            frame::GOAWAY => {
                if head.stream != 0 {
                    return Err(ConnError(Reason::PROTOCOL_ERROR, "GOAWAY on a stream"));
                }
                if head.len < 8 {
                    return Err(ConnError(Reason::FRAME_SIZE_ERROR, "GOAWAY under 8 bytes"));
                }
                // The peer opens nothing more; what runs finishes.
                self.drain();
                Ok(())
            }
            frame::WINDOW_UPDATE => self.on_window_update(head, &payload),
            frame::PUSH_PROMISE => Err(ConnError(
                Reason::PROTOCOL_ERROR,
                "PUSH_PROMISE from a client",
            )),
            // Unknown frame types are ignored (§4.1).
            _ => Ok(()),
        }
    }

    fn on_settings(&mut self, head: Head, payload: &[u8]) -> Result {
        if head.stream != 0 {
            return Err(ConnError(Reason::PROTOCOL_ERROR, "SETTINGS on a stream"));
        }
        if head.has(frame::ACK) {
            if head.len != 0 {
                return Err(ConnError(
                    Reason::FRAME_SIZE_ERROR,
                    "SETTINGS ACK with a payload",
                ));
            }
            return Ok(());
        }
        if !head.len.is_multiple_of(6) {
            return Err(ConnError(
                Reason::FRAME_SIZE_ERROR,
                "SETTINGS not a multiple of 6",
            ));
        }
        self.settings_seen = true;
        let mut core = self.shared.lock();
        for s in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([s[0], s[1]]);
            let value = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
            match id {
                frame::SETTINGS_ENABLE_PUSH if value > 1 => {
                    return Err(ConnError(Reason::PROTOCOL_ERROR, "ENABLE_PUSH not 0 or 1"));
                }
                frame::SETTINGS_INITIAL_WINDOW_SIZE => {
                    let value = i64::from(value);
                    if value > frame::MAX_WINDOW {
                        return Err(ConnError(
                            Reason::FLOW_CONTROL_ERROR,
                            "INITIAL_WINDOW_SIZE over 2^31-1",
                        ));
                    }
                    // §6.9.2: every open stream's window moves by the difference.
                    let delta = value - core.peer_initial_window;
                    core.peer_initial_window = value;
                    for s in core.streams.values_mut() {
                        s.send_window += delta;
                        if s.send_window > frame::MAX_WINDOW {
                            return Err(ConnError(
                                Reason::FLOW_CONTROL_ERROR,
                                "stream window over 2^31-1",
                            ));
                        }
                        if delta > 0 {
                            s.wake();
                        }
                    }
                }
                frame::SETTINGS_MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(ConnError(
                            Reason::PROTOCOL_ERROR,
                            "MAX_FRAME_SIZE out of range",
                        ));
                    }
                    core.peer_max_frame = value as usize;
                }
                // Our encoder never uses the dynamic table, so its size does not matter to
                // it; the others are advisory for a server.
                _ => {}
            }
        }
        frame::put_settings_ack(&mut core.out);
        Ok(())
    }

    fn on_window_update(&mut self, head: Head, payload: &[u8]) -> Result {
        if head.len != 4 {
            return Err(ConnError(
                Reason::FRAME_SIZE_ERROR,
                "WINDOW_UPDATE not 4 bytes",
            ));
        }
        let inc = i64::from(
            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff,
        );
        let mut core = self.shared.lock();
        if head.stream == 0 {
            if inc == 0 {
                return Err(ConnError(Reason::PROTOCOL_ERROR, "WINDOW_UPDATE of 0"));
            }
            core.conn_send += inc;
            if core.conn_send > frame::MAX_WINDOW {
                return Err(ConnError(
                    Reason::FLOW_CONTROL_ERROR,
                    "connection window over 2^31-1",
                ));
            }
            core.wake_blocked();
            return Ok(());
        }
        if head.stream > self.last_id {
            return Err(ConnError(
                Reason::PROTOCOL_ERROR,
                "WINDOW_UPDATE on an idle stream",
            ));
        }
        let Some(s) = core.streams.get_mut(&head.stream) else {
            return Ok(());
        };
        if inc == 0 {
            reset_stream(&mut core, head.stream, Reason::PROTOCOL_ERROR);
            drop(core);
            return self.local_reset();
        }
        s.send_window += inc;
        if s.send_window > frame::MAX_WINDOW {
            reset_stream(&mut core, head.stream, Reason::FLOW_CONTROL_ERROR);
            drop(core);
            return self.local_reset();
        }
        s.wake();
        Ok(())
    }

    fn on_reset(&mut self, head: Head, _payload: &[u8]) -> Result {
        if head.len != 4 {
            return Err(ConnError(
                Reason::FRAME_SIZE_ERROR,
                "RST_STREAM not 4 bytes",
            ));
        }
        if head.stream == 0 || head.stream > self.last_id {
            return Err(ConnError(
                Reason::PROTOCOL_ERROR,
                "RST_STREAM on an idle stream",
            ));
        }
        let mut core = self.shared.lock();
        let Some(s) = core.streams.get_mut(&head.stream) else {
            return Ok(());
        };
        if s.reset {
            return Ok(());
        }
        s.reset = true;
        s.wake();
        drop(core);
        let now = tokio::time::Instant::now();
        let refill = now.duration_since(self.reset_budget_at).as_secs_f64() * RESET_REFILL_PER_SEC;
        self.reset_budget_at = now;
        self.reset_budget = (self.reset_budget + refill).min(RESET_BUDGET) - 1.0;
        if self.reset_budget <= 0.0 {
            return Err(ConnError(
                Reason::ENHANCE_YOUR_CALM,
                "too many streams reset by the peer",
            ));
        }
        Ok(())
    }

    /// We reset a stream for the peer's error; too many and the connection goes.
    pub(super) fn local_reset(&mut self) -> Result {
        self.local_resets += 1;
        if self.local_resets > MAX_LOCAL_RESETS {
            return Err(ConnError(
                Reason::ENHANCE_YOUR_CALM,
                "too many stream errors",
            ));
        }
        Ok(())
    }

    fn on_data(&mut self, head: Head, payload: Bytes) -> Result {
        if head.stream == 0 {
            return Err(ConnError(Reason::PROTOCOL_ERROR, "DATA on stream 0"));
        }
        let len = head.len as u32;
        let mut core = self.shared.lock();
        if i64::from(len) > core.conn_recv {
            return Err(ConnError(
                Reason::FLOW_CONTROL_ERROR,
                "DATA over the connection window",
            ));
        }
        core.conn_recv -= i64::from(len);
        let Some(data) = frame::unpad(&head, &payload) else {
            return Err(ConnError(
                Reason::PROTOCOL_ERROR,
                "DATA padding over its length",
            ));
        };
        let data_len = data.len();
        let data = payload.slice_ref(data);
        let padding = len - data_len as u32;
        let open = core
            .streams
            .get(&head.stream)
            .is_some_and(|s| !s.recv.end && !s.reset);
        if !open {
            // A stream we closed or reset (the peer may not know yet): its bytes are dropped,
            // and given back to the connection's window.
            core.release(None, len);
            if head.stream > self.last_id {
                return Err(ConnError(Reason::PROTOCOL_ERROR, "DATA on an idle stream"));
            }
            let half_closed = core
                .streams
                .get(&head.stream)
                .is_some_and(|s| s.recv.end && !s.reset);
            if half_closed {
                reset_stream(&mut core, head.stream, Reason::STREAM_CLOSED);
                drop(core);
                return self.local_reset();
            }
            return Ok(());
        }
        let s = core.streams.get_mut(&head.stream).expect("checked open");
        if i64::from(len) > s.recv.window {
            reset_stream(&mut core, head.stream, Reason::FLOW_CONTROL_ERROR);
            core.release(None, len);
            drop(core);
            return self.local_reset();
        }
        s.recv.window -= i64::from(len);
        s.recv.received += data_len as u64;
        let end = head.has(frame::END_STREAM);
        let bad_length = s
            .recv
            .content_length
            .is_some_and(|cl| s.recv.received > cl || (end && s.recv.received != cl));
        if bad_length {
            // §8.1.1: a body that disagrees with its content-length is malformed.
            s.recv.error = Some("body length differs from content-length");
            reset_stream(&mut core, head.stream, Reason::PROTOCOL_ERROR);
            core.release(None, len);
            drop(core);
            return self.local_reset();
        }
        if s.recv.dropped {
            core.release(Some(head.stream), len);
        } else {
            if !data.is_empty() {
                s.recv.queued += data_len;
                s.recv.queue.push_back(data);
            }
            if padding > 0 {
                core.release(Some(head.stream), padding);
            }
        }
        let s = core.streams.get_mut(&head.stream).expect("checked open");
        if end {
            s.recv.end = true;
        }
        if let Some(w) = s.recv.reader.take() {
            w.wake();
        }
        Ok(())
    }
}
