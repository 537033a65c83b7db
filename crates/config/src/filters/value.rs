//! Header-value templates: text, and the variables a value may hold (`${request_id}`,
//! `${client_ip}`, `${route}`, `%REQ(name)%`), split once when the config loads.

/// One piece of a header value: text, or a variable filled in per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    /// `${request_id}`: the request's id (the client's sane `x-request-id`, or the gateway's).
    RequestId,
    /// `${client_ip}`: the downstream peer's IP address.
    ClientIp,
    /// `${route}`: the route's name.
    Route,
    /// `%REQ(name)%`: the request header's first value (empty when absent), as Envoy writes it.
    RequestHeader(String),
}

/// Splits a header value into text and variables. `$` and `%` are text unless they open one of
/// the variables above; an unknown `${...}` or an unclosed one is an error.
pub fn parse_value(s: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while !rest.is_empty() {
        let var = if let Some(after) = rest.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| format!("`{s}`: `${{` without a closing `}}`"))?;
            let part = match &after[..end] {
                "request_id" => Part::RequestId,
                "client_ip" => Part::ClientIp,
                "route" => Part::Route,
                other => {
                    return Err(format!(
                        "`{s}`: unknown variable `${{{other}}}` (known: ${{request_id}}, ${{client_ip}}, ${{route}}, %REQ(header)%)"
                    ))
                }
            };
            Some((part, 2 + end + 1))
        } else if let Some(after) = rest.strip_prefix("%REQ(") {
            let end = after
                .find(")%")
                .ok_or_else(|| format!("`{s}`: `%REQ(` without a closing `)%`"))?;
            let name = &after[..end];
            if !is_header_name(name) {
                return Err(format!("`{s}`: `{name}` is not a header name"));
            }
            Some((Part::RequestHeader(name.to_ascii_lowercase()), 5 + end + 2))
        } else {
            None
        };
        match var {
            Some((part, len)) => {
                if !text.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                parts.push(part);
                rest = &rest[len..];
            }
            None => {
                let c = rest.chars().next().expect("rest is not empty");
                text.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    if !text.is_empty() || parts.is_empty() {
        parts.push(Part::Text(text));
    }
    for p in &parts {
        if let Part::Text(t) = p {
            if let Some(b) = t.bytes().find(|&b| !is_value_byte(b)) {
                return Err(format!(
                    "`{}`: byte 0x{b:02x} is not allowed in a header value",
                    s.escape_debug()
                ));
            }
        }
    }
    Ok(parts)
}

/// RFC 9110 field-value bytes: visible ASCII, space, tab and obs-text; never CR, LF or NUL.
pub(super) fn is_value_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

pub(super) fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(crate::validate::is_token_char)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_split_into_text_and_variables() {
        assert_eq!(
            parse_value("prod").unwrap(),
            vec![Part::Text("prod".into())]
        );
        assert_eq!(parse_value("").unwrap(), vec![Part::Text(String::new())]);
        assert_eq!(
            parse_value("id=${request_id};ip=${client_ip} %REQ(X-User)%${route}").unwrap(),
            vec![
                Part::Text("id=".into()),
                Part::RequestId,
                Part::Text(";ip=".into()),
                Part::ClientIp,
                Part::Text(" ".into()),
                Part::RequestHeader("x-user".into()),
                Part::Route,
            ]
        );
        // `$` and `%` on their own are text.
        assert_eq!(
            parse_value("50% $5").unwrap(),
            vec![Part::Text("50% $5".into())]
        );
        for bad in [
            "${nope}",
            "${request_id",
            "%REQ(x",
            "%REQ(a b)%",
            "a\nb",
            "a\rb",
        ] {
            assert!(parse_value(bad).is_err(), "{bad:?}");
        }
    }
}
