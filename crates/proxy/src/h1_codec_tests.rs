//! Unit tests of `h1_codec.rs`.
use super::*;
use proptest::prelude::*;

fn head(raw: &str) -> ResponseHead {
    parse_response_head(raw.as_bytes()).unwrap().unwrap()
}

#[test]
fn request_head_replaces_framing() {
    let mut out = BytesMut::new();
    let mut h = HeaderMap::new();
    h.insert("x-a", HeaderValue::from_static("1"));
    h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    encode_request_head(
        &mut out,
        &Method::POST,
        "/v1/x?q=1",
        &h,
        ReqFraming::Length(120),
    );
    assert_eq!(
        &out[..],
        b"POST /v1/x?q=1 HTTP/1.1\r\nx-a: 1\r\ncontent-length: 120\r\n\r\n"
    );
}

#[test]
fn raw_heads_keep_end_to_end_headers_as_sent() {
    let buf = b"HTTP/1.1 200 OK\r\nX-A: 1\r\nKeep-Alive: 5\r\nConnection: keep-alive\r\n\
                Content-Type: text/event-stream\r\nTE: trailers\r\ngrpc-status: 14\r\nDate: d\r\n\r\n";
    let mut h = head(std::str::from_utf8(buf).unwrap());
    let mut raw = h.raw.take().expect("kept raw");
    assert!(h.headers.is_empty());
    raw.set_head(Bytes::copy_from_slice(&buf[..h.len]));
    let kept: Vec<_> = raw.iter().collect();
    assert_eq!(
        kept,
        [
            (&b"X-A"[..], &b"1"[..]),
            (b"Content-Type", b"text/event-stream"),
            (b"grpc-status", b"14"),
            (b"Date", b"d"),
        ]
    );
    assert!(raw.has_date && !raw.has_length);
    assert!(raw.scan.event_stream);
    assert_eq!(raw.scan.grpc_status, Some(14));
    raw.added.push((
        HeaderName::from_static("x-b"),
        HeaderValue::from_static("2"),
    ));
    let map = raw.to_map();
    assert_eq!(map.len(), 5);
    assert_eq!(map["x-a"], "1");
    assert_eq!(map["x-b"], "2");
    assert!(h.keep_alive);
}

#[test]
fn raw_heads_drop_a_length_beside_chunked_coding() {
    let buf = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
    let mut h = head(buf);
    let mut raw = h.raw.take().unwrap();
    raw.set_head(Bytes::copy_from_slice(&buf.as_bytes()[..h.len]));
    assert_eq!(raw.iter().count(), 0);
    assert!(!raw.has_length);
    assert_eq!(
        response_framing(&Method::GET, &mut h).unwrap(),
        (BodyFraming::Chunked, false)
    );
}

#[test]
fn raw_heads_carry_no_control_bytes() {
    // Raw values go back to clients unchecked by `HeaderValue`: the parser must refuse what
    // `HeaderValue` would (controls other than tab, DEL).
    for bad in [&b"\x01"[..], b"\x7f", b"a\rb", b"a\x00"] {
        let mut buf = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        buf.extend_from_slice(bad);
        buf.extend_from_slice(b"\r\n\r\n");
        assert!(parse_response_head(&buf).is_err(), "{bad:?} accepted");
    }
    let ok = parse_response_head(b"HTTP/1.1 200 OK\r\nX: a\tb \xe9\r\n\r\n");
    assert!(ok.unwrap().is_some());
}

#[test]
fn connection_naming_headers_gets_a_map() {
    let h = head("HTTP/1.1 200 OK\r\nConnection: x-p\r\nX-P: 1\r\n\r\n");
    assert!(h.raw.is_none());
    assert_eq!(h.headers["x-p"], "1");
    assert!(h.headers.contains_key("connection"));
}

#[test]
fn response_head_and_framing() {
    let mut h = head("HTTP/1.1 200 OK\r\nContent-Length: 14\r\nX: y\r\n\r\nbody");
    assert_eq!(h.len, 45);
    assert_eq!(
        response_framing(&Method::GET, &mut h).unwrap(),
        (BodyFraming::Length(14), true)
    );
    let mut h = head("HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n");
    assert_eq!(
        response_framing(&Method::HEAD, &mut h).unwrap().0,
        BodyFraming::Empty
    );
    let mut h = head("HTTP/1.0 200 OK\r\n\r\n");
    assert_eq!(
        response_framing(&Method::GET, &mut h).unwrap(),
        (BodyFraming::Close, false)
    );
    let mut h = head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(
        response_framing(&Method::GET, &mut h).unwrap(),
        (BodyFraming::Chunked, false)
    );
    assert!(!h.headers.contains_key(CONTENT_LENGTH));
    let mut h = head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n");
    assert!(response_framing(&Method::GET, &mut h).is_err());
    let mut h = head("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nConnection: close\r\n\r\n");
    assert_eq!(
        response_framing(&Method::GET, &mut h).unwrap(),
        (BodyFraming::Length(3), false)
    );
    assert!(parse_response_head(b"HTTP/1.1 200 OK\r\nX: y\r\n")
        .unwrap()
        .is_none());
    assert!(parse_response_head(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
}

#[test]
fn chunked_decoding_in_pieces() {
    let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\n";
    // Feed the decoder one byte at a time: every split point must work.
    let mut state = Chunked::Size;
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut trailers = None;
    let mut ended = false;
    for b in wire {
        buf.put_u8(*b);
        loop {
            match decode_chunked(&mut state, &mut buf).unwrap() {
                Decoded::NeedMore => break,
                Decoded::Data(d) => data.extend_from_slice(&d),
                Decoded::Trailers(t) => {
                    trailers = Some(t);
                    break;
                }
                Decoded::End => {
                    ended = true;
                    break;
                }
            }
        }
    }
    assert_eq!(data, b"hello world");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    assert!(!ended, "trailers end the body themselves");
    assert!(buf.is_empty());

    let mut state = Chunked::Size;
    let mut buf = BytesMut::from(&b"0\r\n\r\n"[..]);
    assert!(matches!(
        decode_chunked(&mut state, &mut buf).unwrap(),
        Decoded::End
    ));
    for bad in [&b"zz\r\n"[..], b"3\r\nabcXY", b"fffffffffffffffff\r\n"] {
        let mut state = Chunked::Size;
        let mut buf = BytesMut::from(bad);
        let r = (0..4).try_for_each(|_| decode_chunked(&mut state, &mut buf).map(|_| ()));
        assert!(r.is_err(), "{bad:?}");
    }
}

#[test]
fn chunk_encoding() {
    let mut out = BytesMut::new();
    encode_chunk(&mut out, b"hello world, this is sixteen+");
    let mut t = HeaderMap::new();
    t.insert("x-t", HeaderValue::from_static("v"));
    encode_last_chunk(&mut out, Some(&t));
    assert_eq!(
        &out[..],
        b"1d\r\nhello world, this is sixteen+\r\n0\r\nx-t: v\r\n\r\n"
    );
}

/// How a chunked decode over successive reads ended.
#[derive(Debug, PartialEq)]
enum ChunkedEnd {
    Incomplete(Chunked),
    Error,
    Last,
    Trailers(HeaderMap),
}

/// Decode `wire` read in pieces cut at `cuts`: the data, how it ended, the bytes after the body.
fn decode_cut(wire: &[u8], cuts: &[usize]) -> (Vec<u8>, ChunkedEnd, Vec<u8>) {
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    bounds.push(wire.len());
    bounds.sort_unstable();
    let (mut state, mut buf, mut data, mut at) = (Chunked::Size, BytesMut::new(), Vec::new(), 0);
    for end in bounds {
        buf.extend_from_slice(&wire[at..end]);
        at = end;
        loop {
            let before = buf.len();
            let done = match decode_chunked(&mut state, &mut buf) {
                Ok(Decoded::NeedMore) => break,
                Ok(Decoded::Data(d)) => {
                    assert!(!d.is_empty() && buf.len() < before, "no progress");
                    data.extend_from_slice(&d);
                    continue;
                }
                Ok(Decoded::End) => ChunkedEnd::Last,
                Ok(Decoded::Trailers(t)) => ChunkedEnd::Trailers(t),
                Err(_) => return (data, ChunkedEnd::Error, Vec::new()),
            };
            assert!(buf.len() < before, "no progress");
            return (data, done, [&buf[..], &wire[at..]].concat());
        }
    }
    (data, ChunkedEnd::Incomplete(state), buf.to_vec())
}

#[test]
fn chunk_line_limit_holds_however_the_line_is_read() {
    // A size line with long extensions: refused in one read as in many (it used to be accepted
    // when its CRLF came in the same read, refused when cut before it).
    for ext in [4091, 4092, 4093, 5000] {
        let wire = [b"1;", &vec![b'x'; ext][..], b"\r\na\r\n0\r\n\r\n"].concat();
        let whole = decode_cut(&wire, &[]);
        assert_eq!(whole, decode_cut(&wire, &[4096]), "ext {ext}");
        assert_eq!(whole, decode_cut(&wire, &[100, 4097]), "ext {ext}");
        let line = ext + 4;
        assert_eq!(whole.1 == ChunkedEnd::Error, line > 4096, "ext {ext}");
    }
    // The same for a trailer block over the head limit.
    let trailer = [b"x-t: ", &vec![b'v'; MAX_HEAD_BYTES][..], b"\r\n"].concat();
    let wire = [&b"0\r\n"[..], &trailer, b"\r\n"].concat();
    assert_eq!(decode_cut(&wire, &[]).1, ChunkedEnd::Error);
    assert_eq!(decode_cut(&wire, &[10]).1, ChunkedEnd::Error);
}

/// A chunked body: chunks with optional extensions, then trailers or not, then a few bytes of
/// whatever follows on the connection; sometimes one byte of it replaced.
fn chunked_wire() -> impl Strategy<Value = Vec<u8>> {
    let chunk = (proptest::collection::vec(any::<u8>(), 1..40), any::<bool>());
    (
        proptest::collection::vec(chunk, 0..6),
        proptest::option::of("[a-z]{1,8}: [a-z0-9]{0,8}"),
        proptest::collection::vec(any::<u8>(), 0..8),
        proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
    )
        .prop_map(|(chunks, trailer, after, flip)| {
            let mut w = Vec::new();
            for (data, ext) in chunks {
                w.extend_from_slice(format!("{:X}", data.len()).as_bytes());
                if ext {
                    w.extend_from_slice(b"; name=\"v\"");
                }
                w.extend_from_slice(b"\r\n");
                w.extend_from_slice(&data);
                w.extend_from_slice(b"\r\n");
            }
            w.extend_from_slice(b"0\r\n");
            if let Some(t) = trailer {
                w.extend_from_slice(t.as_bytes());
                w.extend_from_slice(b"\r\n");
            }
            w.extend_from_slice(b"\r\n");
            w.extend_from_slice(&after);
            if let Some((i, b)) = flip {
                let i = i.index(w.len());
                w[i] = b;
            }
            w
        })
}

proptest! {
    #[test]
    fn chunked_decoding_does_not_depend_on_where_reads_are_cut(
        wire in prop_oneof![chunked_wire(), proptest::collection::vec(any::<u8>(), 0..64)],
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let whole = decode_cut(&wire, &[]);
        prop_assert_eq!(&whole, &decode_cut(&wire, &cuts));
        let bytes: Vec<usize> = (0..wire.len()).collect();
        prop_assert_eq!(&whole, &decode_cut(&wire, &bytes));
    }
}
