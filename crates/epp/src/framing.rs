//! The gRPC message framing of the ext_proc stream as one call, for the fuzz target
//! (`fuzz/fuzz_targets/epp_grpc_frame.rs`) and tests: it runs exactly what `Epp::process` runs
//! on the bytes Envoy sends, `next_message` and then prost's decode, without a server.

use bytes::BytesMut;
use prost::Message;

use crate::proto::ProcessingRequest;

/// Why a message was refused.
#[derive(Debug)]
pub enum FrameError {
    /// The prefix declared more than the default limit (the stream ends `RESOURCE_EXHAUSTED`).
    TooLarge(usize),
    /// A complete message prost refuses (the stream ends with `grpc-status: 3`).
    Decode(prost::DecodeError),
    /// The compressed flag is set (the stream ends `UNIMPLEMENTED`).
    Compressed,
}

/// The next `ProcessingRequest` at the front of `buf`, under the default message limit: `None`
/// while the length-prefixed message is incomplete.
pub fn next_request(buf: &mut BytesMut) -> Option<Result<ProcessingRequest, FrameError>> {
    match super::next_message(buf, crate::DEFAULT_MAX_MESSAGE_BYTES) {
        Ok(None) => None,
        Ok(Some(msg)) => Some(ProcessingRequest::decode(msg).map_err(FrameError::Decode)),
        Err(super::Refused::TooLarge(n)) => Some(Err(FrameError::TooLarge(n))),
        Err(super::Refused::Compressed) => Some(Err(FrameError::Compressed)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_off_the_stream_one_by_one() {
        let msg = ProcessingRequest {
            request: Some(crate::proto::processing_request::Request::RequestBody(
                crate::proto::HttpBody {
                    body: b"{}".to_vec(),
                    end_of_stream: true,
                },
            )),
        };
        let encoded = msg.encode_to_vec();
        let mut wire = Vec::new();
        for _ in 0..2 {
            wire.push(0);
            wire.extend_from_slice(&u32::try_from(encoded.len()).unwrap().to_be_bytes());
            wire.extend_from_slice(&encoded);
        }
        let mut buf = BytesMut::from(&wire[..wire.len() - 1]);
        assert_eq!(next_request(&mut buf).unwrap().unwrap(), msg);
        assert!(
            next_request(&mut buf).is_none(),
            "second message is one byte short"
        );
        buf.extend_from_slice(&wire[wire.len() - 1..]);
        assert_eq!(next_request(&mut buf).unwrap().unwrap(), msg);
        assert!(buf.is_empty());
        let mut bad = BytesMut::from(&[0, 0, 0, 0, 2, 0xff, 0xff][..]);
        assert!(matches!(
            next_request(&mut bad),
            Some(Err(FrameError::Decode(_)))
        ));
        let mut huge = BytesMut::from(&[0, 0xff, 0xff, 0xff, 0xff, 0][..]);
        assert!(matches!(
            next_request(&mut huge),
            Some(Err(FrameError::TooLarge(_)))
        ));
        let mut compressed = BytesMut::from(&[1, 0, 0, 0, 1, 0][..]);
        assert!(matches!(
            next_request(&mut compressed),
            Some(Err(FrameError::Compressed))
        ));
    }
}
