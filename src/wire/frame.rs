//! Frontend messages: framing and checked decoding.
//!
//! pgwire's own decoders read with `Buf::get_*`, which panic on a truncated frame,
//! and cap password messages at 10,000 bytes (real Azure AD tokens are larger).
//! Sluice decodes frontend messages here with a bounds-checked cursor instead and
//! keeps each [`Frame`]'s raw bytes, so a later stage can relay it verbatim.

use bytes::{Bytes, BytesMut};

use crate::error::PgError;

/// PostgreSQL's limit for authentication payloads (`PG_MAX_AUTH_TOKEN_LENGTH`).
pub const MAX_AUTH_MESSAGE: usize = 65_535;
/// PostgreSQL's limit for any other message (`PQ_LARGE_MESSAGE_LIMIT`).
pub const MAX_MESSAGE: usize = 0x3fff_ffff;
/// Startup-phase packets (startup, SSLRequest, CancelRequest).
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// One tagged frontend message: its type byte and body (without tag and length).
#[derive(Debug, Clone)]
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// The size limit for a message of this tag in the given phase.
pub fn max_len(tag: u8, authenticating: bool) -> usize {
    if authenticating || tag == b'p' {
        MAX_AUTH_MESSAGE
    } else {
        MAX_MESSAGE
    }
}

/// What the framing layer makes of the bytes buffered so far.
#[derive(Debug)]
pub enum Split {
    /// One whole message, removed from the buffer.
    Whole(Frame),
    /// Fewer than the 5 header bytes (tag and length) are buffered.
    NeedHeader,
    /// The header is valid; this many body bytes are still missing.
    NeedBody(usize),
}

/// Takes the first whole message off `input`, checking its length word against
/// `max_len(tag)` before any of the body is awaited: a hostile length is refused
/// here, never allocated.
pub fn split_frame(input: &mut BytesMut, max_len: impl Fn(u8) -> usize) -> Result<Split, PgError> {
    if input.len() < 5 {
        return Ok(Split::NeedHeader);
    }
    let tag = input[0];
    let len = i32::from_be_bytes([input[1], input[2], input[3], input[4]]);
    if len < 4 {
        return Err(PgError::protocol(format!(
            "invalid message length {len} for message type {:?}",
            tag as char
        )));
    }
    let body_len = len as usize - 4;
    let max = max_len(tag);
    if body_len > max {
        return Err(PgError::protocol(format!(
            "message of type {:?} is {body_len} bytes, over the limit of {max} bytes",
            tag as char
        )));
    }
    let total = 5 + body_len;
    if input.len() < total {
        return Ok(Split::NeedBody(total - input.len()));
    }
    let mut frame = input.split_to(total).freeze();
    let body = frame.split_off(5);
    Ok(Split::Whole(Frame { tag, body }))
}

/// Whether `input` starts with a whole message (valid length word, body buffered).
pub fn has_whole_frame(input: &[u8]) -> bool {
    if input.len() < 5 {
        return false;
    }
    let len = i32::from_be_bytes([input[1], input[2], input[3], input[4]]);
    len >= 4 && input.len() > len as usize
}

/// The body length of a startup-phase packet (after its 4-byte length word), or why
/// the length word is refused: a packet must hold at least its request code.
pub fn startup_body_len(len: [u8; 4]) -> Result<usize, PgError> {
    let len = i32::from_be_bytes(len);
    if !(8..=MAX_STARTUP_PACKET as i32).contains(&len) {
        return Err(PgError::protocol(format!(
            "invalid length of startup packet: {len}"
        )));
    }
    Ok(len as usize - 4)
}

/// A startup-phase packet body: its request code (or protocol version) and the rest.
pub fn startup_code(body: &[u8]) -> Result<(i32, &[u8]), PgError> {
    let mut c = Cursor::new(body, "startup");
    let code = c.i32()?;
    Ok((code, c.rest()))
}

/// A bounds-checked reader over one message body.
pub struct Cursor<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Cursor<'a> {
        Cursor { buf, what }
    }

    fn short(&self) -> PgError {
        PgError::protocol(format!("invalid {} message: too short", self.what))
    }

    pub fn u8(&mut self) -> Result<u8, PgError> {
        let (&b, rest) = self.buf.split_first().ok_or_else(|| self.short())?;
        self.buf = rest;
        Ok(b)
    }

    pub fn i16(&mut self) -> Result<i16, PgError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, PgError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], PgError> {
        if self.buf.len() < n {
            return Err(self.short());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A NUL-terminated UTF-8 string.
    pub fn cstr(&mut self) -> Result<&'a str, PgError> {
        let end = self.buf.iter().position(|&b| b == 0).ok_or_else(|| {
            PgError::protocol(format!(
                "invalid {} message: unterminated string",
                self.what
            ))
        })?;
        let s = std::str::from_utf8(&self.buf[..end]).map_err(|_| {
            PgError::new(
                crate::error::SqlState::CHARACTER_NOT_IN_REPERTOIRE,
                format!("invalid {} message: string is not valid UTF-8", self.what),
            )
        })?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// A count (i16) that must not be negative.
    pub fn count(&mut self) -> Result<usize, PgError> {
        let n = self.i16()?;
        usize::try_from(n).map_err(|_| {
            PgError::protocol(format!("invalid {} message: negative count", self.what))
        })
    }

    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[derive(Debug)]
pub struct Parse {
    pub name: String,
    pub query: String,
    pub param_types: Vec<u32>,
}

#[derive(Debug)]
pub struct Bind {
    pub portal: String,
    pub statement: String,
    pub param_formats: Vec<i16>,
    pub params: Vec<Option<Bytes>>,
    pub result_formats: Vec<i16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Statement,
    Portal,
}

#[derive(Debug)]
pub struct Describe {
    pub target: Target,
    pub name: String,
}

#[derive(Debug)]
pub struct Execute {
    pub portal: String,
    pub max_rows: i32,
}

#[derive(Debug)]
pub struct Close {
    pub target: Target,
    pub name: String,
}

fn target(b: u8, what: &'static str) -> Result<Target, PgError> {
    match b {
        b'S' => Ok(Target::Statement),
        b'P' => Ok(Target::Portal),
        other => Err(PgError::protocol(format!(
            "invalid {what} message: unknown target type {:?}",
            other as char
        ))),
    }
}

pub fn decode_query(body: &[u8]) -> Result<&str, PgError> {
    Cursor::new(body, "Query").cstr()
}

/// The statement name of a Parse whose query text is not UTF-8 (a client using
/// another client_encoding): the name is still needed to route the statement's
/// later Bind/Describe/Close. `None` when the message is malformed otherwise.
pub fn parse_name_of_foreign_text(body: &[u8]) -> Option<&str> {
    let mut c = Cursor::new(body, "Parse");
    let name = c.cstr().ok()?;
    // The text is terminated (else the message is malformed) but not UTF-8.
    let text_end = c.buf.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&c.buf[..text_end])
        .is_err()
        .then_some(name)
}

pub fn decode_parse(body: &[u8]) -> Result<Parse, PgError> {
    let mut c = Cursor::new(body, "Parse");
    let name = c.cstr()?.to_owned();
    let query = c.cstr()?.to_owned();
    let n = c.count()?;
    let mut param_types = Vec::with_capacity(n.min(c.rest().len() / 4));
    for _ in 0..n {
        param_types.push(c.i32()? as u32);
    }
    Ok(Parse {
        name,
        query,
        param_types,
    })
}

/// A Bind's parameters as text, for the audit trail: text-format values as
/// sent, binary ones as `\x` and hex (the statement's types are not known here).
pub fn parameters_as_text(bind: &Bind) -> Vec<Option<String>> {
    bind.params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let p = p.as_ref()?;
            let format = match bind.param_formats.as_slice() {
                [] => 0,
                [one] => *one,
                many => many.get(i).copied().unwrap_or(0),
            };
            Some(if format == 0 {
                String::from_utf8_lossy(p).into_owned()
            } else {
                let mut s = String::with_capacity(2 + p.len() * 2);
                s.push_str("\\x");
                for b in p.iter() {
                    s.push_str(&format!("{b:02x}"));
                }
                s
            })
        })
        .collect()
}

pub fn decode_bind(body: &Bytes) -> Result<Bind, PgError> {
    let mut c = Cursor::new(body, "Bind");
    let portal = c.cstr()?.to_owned();
    let statement = c.cstr()?.to_owned();
    let nf = c.count()?;
    let mut param_formats = Vec::with_capacity(nf.min(c.rest().len() / 2));
    for _ in 0..nf {
        param_formats.push(c.i16()?);
    }
    let np = c.count()?;
    let mut params = Vec::with_capacity(np.min(c.rest().len() / 4));
    for _ in 0..np {
        let len = c.i32()?;
        if len < 0 {
            params.push(None);
        } else {
            let start = body.len() - c.rest().len();
            c.take(len as usize)?;
            params.push(Some(body.slice(start..start + len as usize)));
        }
    }
    let nr = c.count()?;
    let mut result_formats = Vec::with_capacity(nr.min(c.rest().len() / 2));
    for _ in 0..nr {
        result_formats.push(c.i16()?);
    }
    Ok(Bind {
        portal,
        statement,
        param_formats,
        params,
        result_formats,
    })
}

/// Just the portal and statement names of a Bind, for routing it.
pub fn bind_names(body: &[u8]) -> Result<(&str, &str), PgError> {
    let mut c = Cursor::new(body, "Bind");
    let portal = c.cstr()?;
    let statement = c.cstr()?;
    Ok((portal, statement))
}

pub fn decode_describe(body: &[u8]) -> Result<Describe, PgError> {
    let mut c = Cursor::new(body, "Describe");
    let target = target(c.u8()?, "Describe")?;
    Ok(Describe {
        target,
        name: c.cstr()?.to_owned(),
    })
}

/// Just the portal name of an Execute, for routing it.
pub fn execute_portal(body: &[u8]) -> Result<&str, PgError> {
    Cursor::new(body, "Execute").cstr()
}

pub fn decode_execute(body: &[u8]) -> Result<Execute, PgError> {
    let mut c = Cursor::new(body, "Execute");
    let portal = c.cstr()?.to_owned();
    let max_rows = c.i32()?;
    Ok(Execute { portal, max_rows })
}

pub fn decode_close(body: &[u8]) -> Result<Close, PgError> {
    let mut c = Cursor::new(body, "Close");
    let target = target(c.u8()?, "Close")?;
    Ok(Close {
        target,
        name: c.cstr()?.to_owned(),
    })
}

/// SASLInitialResponse: mechanism name and the client-first-message.
pub fn decode_sasl_initial(body: &[u8]) -> Result<(&str, &[u8]), PgError> {
    let mut c = Cursor::new(body, "SASLInitialResponse");
    let mechanism = c.cstr()?;
    let len = c.i32()?;
    let data = if len < 0 {
        &[][..]
    } else {
        c.take(len as usize)?
    };
    Ok((mechanism, data))
}

/// A cleartext PasswordMessage.
pub fn decode_password(body: &[u8]) -> Result<&str, PgError> {
    Cursor::new(body, "PasswordMessage").cstr()
}

/// The startup packet body after the protocol version: key/value pairs ending in NUL.
pub fn decode_startup_params(body: &[u8]) -> Result<Vec<(String, String)>, PgError> {
    let mut c = Cursor::new(body, "startup");
    let mut params = Vec::new();
    loop {
        if c.is_empty() {
            return Err(PgError::protocol(
                "invalid startup packet: missing terminator",
            ));
        }
        let key = c.cstr()?;
        if key.is_empty() {
            break;
        }
        let value = c.cstr()?;
        params.push((key.to_owned(), value.to_owned()));
    }
    Ok(params)
}

/// The request code of a CancelRequest packet (after its length).
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// Sluice's own request code for a CancelRequest one gateway passes on to another
/// (`cluster`): same body, but the receiver only ever matches it against its own
/// sessions, so a misconfigured peer list can never bounce it around.
pub const PEER_CANCEL_REQUEST_CODE: i32 = 80_877_190;

/// A cancel packet: length, `code`, process id, secret key.
pub fn encode_cancel(code: i32, pid: i32, secret: i32) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0..4].copy_from_slice(&16i32.to_be_bytes());
    out[4..8].copy_from_slice(&code.to_be_bytes());
    out[8..12].copy_from_slice(&pid.to_be_bytes());
    out[12..16].copy_from_slice(&secret.to_be_bytes());
    out
}

/// A CancelRequest's body after the request code: (process id, secret key).
pub fn decode_cancel(body: &[u8]) -> Option<(i32, i32)> {
    let mut c = Cursor::new(body, "CancelRequest");
    Some((c.i32().ok()?, c.i32().ok()?))
}

/// Walks the backend messages in a buffer, yielding each whole (tag, length word and
/// body); it stops at the first incomplete or malformed one, which stays in
/// [`Messages::rest`].
pub struct Messages<'a> {
    rest: &'a [u8],
}

pub fn messages(bytes: &[u8]) -> Messages<'_> {
    Messages { rest: bytes }
}

impl<'a> Messages<'a> {
    /// What was not walked (empty after a buffer of whole messages).
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let b = self.rest;
        if b.len() < 5 {
            return None;
        }
        let len = i32::from_be_bytes([b[1], b[2], b[3], b[4]]);
        if len < 4 || b.len() < 1 + len as usize {
            return None;
        }
        let (message, rest) = b.split_at(1 + len as usize);
        self.rest = rest;
        Some(message)
    }
}

/// Appends a complete backend message built by `body` to `out`, filling in the length.
pub fn put_message(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.extend_from_slice(&[tag, 0, 0, 0, 0]);
    let start = out.len() - 4;
    body(out);
    let len = (out.len() - start) as i32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_messages_are_errors_not_panics() {
        let bind = Bytes::from_static(b"p\0s\0\0\x01\0\x01\0\x02\0\0\0\x10ab");
        for end in 0..bind.len() {
            assert!(decode_bind(&bind.slice(..end)).is_err());
        }
        assert!(decode_parse(b"s\0select 1\0\x00\x05\0\0").is_err());
        assert!(decode_describe(b"Z\0").is_err());
        assert!(decode_execute(b"p\0\0\0").is_err());
        assert!(decode_startup_params(b"user\0bob").is_err());
        assert!(decode_sasl_initial(b"SCRAM\0\0\0\0\x09ab").is_err());
    }

    #[test]
    fn bind_decodes_params_and_formats() {
        let body =
            Bytes::from_static(b"p\0s\0\0\x01\0\x01\0\x02\0\0\0\x02ab\xff\xff\xff\xff\0\x01\0\x01");
        let b = decode_bind(&body).unwrap();
        assert_eq!(b.portal, "p");
        assert_eq!(b.params, vec![Some(Bytes::from_static(b"ab")), None]);
        assert_eq!(b.result_formats, vec![1]);
    }

    #[test]
    fn huge_counts_do_not_preallocate() {
        // Claims 32767 parameters but carries none: must fail without a large allocation.
        assert!(decode_parse(b"\0q\0\x7f\xff").is_err());
    }
}
