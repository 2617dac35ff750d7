//! What is fuzzed: each target feeds one input through the real decoders, in the
//! order the server uses them, and checks invariants a panic-free run can still
//! break (round trips, consistent framing, well-formed ErrorResponses). A target
//! returns the events it saw (paths taken, errors by kind); an input that shows
//! an event not seen before joins the corpus, a cheap stand-in for coverage.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use bytes::{Bytes, BytesMut};

use super::mutate::Framing;
use crate::error::PgError;
use crate::server::authenticate::ClientKind;
use crate::server::startup;
use crate::wire::frame::{self, Split};

/// One fuzz target: how its inputs are framed, grammar tokens for the mutator, the
/// seed corpus, and the function under test.
pub struct Target {
    pub name: &'static str,
    pub framing: Framing,
    pub dict: &'static [&'static [u8]],
    pub seeds: fn() -> Vec<Vec<u8>>,
    pub run: fn(&[u8]) -> Vec<u64>,
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "startup",
        framing: Framing::Untagged,
        dict: super::seeds::STARTUP_DICT,
        seeds: super::seeds::startup,
        run: startup_packets,
    },
    Target {
        name: "frames",
        framing: Framing::Tagged,
        dict: super::seeds::FRAME_DICT,
        seeds: super::seeds::frames,
        run: frontend_frames,
    },
    Target {
        name: "sasl",
        framing: Framing::Tagged,
        dict: super::seeds::SASL_DICT,
        seeds: super::seeds::sasl,
        run: super::sasl::exchange,
    },
    Target {
        name: "bind-params",
        framing: Framing::Raw,
        dict: super::seeds::FRAME_DICT,
        seeds: super::seeds::bind_params,
        run: bind_params,
    },
    Target {
        name: "backend-walk",
        framing: Framing::Tagged,
        dict: &[],
        seeds: super::seeds::frames,
        run: backend_walk,
    },
];

pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Collects what a run did. An error counts by its text up to the first quote,
/// without digits, so "length 5" and "length 6" are one event.
#[derive(Default)]
pub struct Outcome(Vec<u64>);

impl Outcome {
    pub fn note(&mut self, what: impl Hash) {
        let mut h = DefaultHasher::new();
        what.hash(&mut h);
        self.0.push(h.finish());
    }

    pub fn err(&mut self, e: &PgError) {
        check_error_wire(e);
        // Quoted parts echo client bytes: the text before them names the error.
        let text: String = e
            .message
            .chars()
            .take_while(|&c| c != '"' && c != '\'')
            .filter(|c| !c.is_ascii_digit())
            .collect();
        self.note((e.code.0, text));
    }

    /// The distinct events, each a hash.
    pub fn finish(mut self) -> Vec<u64> {
        self.0.sort_unstable();
        self.0.dedup();
        self.0
    }
}

/// An error the server would send must encode as exactly one well-formed
/// ErrorResponse, whatever client bytes went into its text.
pub fn check_error_wire(e: &PgError) {
    let mut out = BytesMut::new();
    crate::wire::messages::error_response(&mut out, e);
    let mut walk = frame::messages(&out);
    let m = walk.next().expect("an ErrorResponse frames as one message");
    assert!(
        walk.next().is_none() && walk.rest().is_empty(),
        "one message"
    );
    assert_eq!(m[0], b'E');
    // Every field is a tag byte and a NUL-terminated string; the list ends in NUL.
    let fields = m[5..]
        .strip_suffix(&[0, 0])
        .expect("the last field and the list end in NUL");
    let mut code = None;
    for field in fields.split(|&b| b == 0) {
        assert!(!field.is_empty(), "no empty field in {:?}", fields);
        if field[0] == b'C' {
            code = Some(field[1..].to_vec());
        }
    }
    let code = code.expect("an ErrorResponse carries a SQLSTATE");
    assert_eq!(code.len(), 5, "SQLSTATE is five characters");
}

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;

/// The startup phase as `startup::handshake` reads it: length-checked packets,
/// encryption requests, then a cancel request or a startup packet.
fn startup_packets(input: &[u8]) -> Vec<u64> {
    let mut out = Outcome::default();
    let mut rest = input;
    for _ in 0..4 {
        let Some(len) = rest.first_chunk::<4>() else {
            out.note("eof");
            break;
        };
        let body_len = match frame::startup_body_len(*len) {
            Ok(n) => n,
            Err(e) => {
                out.err(&e);
                break;
            }
        };
        assert!((4..=frame::MAX_STARTUP_PACKET - 4).contains(&body_len));
        let Some(body) = rest.get(4..4 + body_len) else {
            out.note("short packet");
            break;
        };
        rest = &rest[4 + body_len..];
        let (code, params) = frame::startup_code(body).expect("a checked length holds a code");
        match code {
            SSL_REQUEST | GSSENC_REQUEST => out.note(code),
            frame::CANCEL_REQUEST_CODE => {
                out.note(("cancel", frame::decode_cancel(params).is_some()));
                break;
            }
            version => {
                startup_params(version, params, &mut out);
                break;
            }
        }
    }
    out.finish()
}

fn startup_params(version: i32, body: &[u8], out: &mut Outcome) {
    let (major, minor) = ((version >> 16) as u16, (version & 0xffff) as u16);
    if major != 3 {
        out.note("unsupported version");
        return;
    }
    let params: BTreeMap<String, String> = match frame::decode_startup_params(body) {
        Ok(p) => {
            for (k, v) in &p {
                assert!(!k.is_empty() && !k.contains('\0') && !v.contains('\0'));
            }
            p.into_iter().collect()
        }
        Err(e) => return out.err(&e),
    };
    let client = ClientKind::of(&params);
    out.note(format!("{client:?}"));
    let mut negotiation = BytesMut::new();
    startup::negotiate(&mut negotiation, minor, &params, client);
    let mut walk = frame::messages(&negotiation);
    if let Some(m) = walk.next() {
        assert_eq!(m[0], b'v');
        assert!(!client.is_redshift(), "Redshift drivers never get 'v'");
    }
    assert!(walk.next().is_none() && walk.rest().is_empty());
    out.note(negotiation.is_empty());
}

/// Frontend messages as `Connection::read_frame` frames them and the session
/// decodes them, once with the limits of authentication and once without.
fn frontend_frames(input: &[u8]) -> Vec<u64> {
    let mut out = Outcome::default();
    for authenticating in [true, false] {
        let mut buf = BytesMut::from(input);
        loop {
            let whole = frame::has_whole_frame(&buf);
            let before = buf.clone().freeze();
            let max = |tag| frame::max_len(tag, authenticating);
            match frame::split_frame(&mut buf, max) {
                Err(e) => {
                    assert_eq!(buf.len(), before.len(), "a refused frame consumes nothing");
                    out.err(&e);
                    break;
                }
                Ok(Split::NeedHeader) => {
                    assert!(!whole && buf.len() < 5);
                    break;
                }
                Ok(Split::NeedBody(n)) => {
                    assert!(!whole && n > 0 && n <= 5 + max(before[0]));
                    break;
                }
                Ok(Split::Whole(f)) => {
                    assert!(whole);
                    // A relayed frame (put_message of tag and body) is the same bytes.
                    let mut again = BytesMut::new();
                    frame::put_message(&mut again, f.tag, |b| b.extend_from_slice(&f.body));
                    assert_eq!(&again[..], &before[..again.len()]);
                    assert_eq!(buf.len(), before.len() - again.len());
                    decode_frame(f.tag, &f.body, &mut out);
                }
            }
        }
    }
    out.finish()
}

/// What decoding kept must be where it came from: re-encoded, it is a prefix of
/// the body (trailing bytes are tolerated, as they are by the decoders).
fn assert_prefix(body: &[u8], parts: &[&[u8]]) {
    let encoded: Vec<u8> = parts.concat();
    assert!(
        body.starts_with(&encoded),
        "decoded fields do not re-encode to the body"
    );
}

/// Vectors sized from a count in the message stay within what the body can hold.
fn assert_capacity<T>(v: &Vec<T>, body: &[u8], min_wire_size: usize) {
    assert!(
        v.capacity() <= body.len() / min_wire_size + 1,
        "capacity {} from a {}-byte body",
        v.capacity(),
        body.len()
    );
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn i16s(v: &[i16]) -> Vec<u8> {
    let mut out = (v.len() as i16).to_be_bytes().to_vec();
    v.iter()
        .for_each(|x| out.extend_from_slice(&x.to_be_bytes()));
    out
}

fn decode_frame(tag: u8, body: &Bytes, out: &mut Outcome) {
    let result: Result<(), PgError> = (|| {
        match tag {
            b'Q' => {
                let sql = frame::decode_query(body)?;
                assert_prefix(body, &[&cstr(sql)]);
            }
            b'P' => {
                let foreign = frame::parse_name_of_foreign_text(body);
                let p = frame::decode_parse(body);
                if let Some(name) = foreign {
                    // Text that is not UTF-8 is never a valid Parse, and the name is
                    // the message's first string.
                    assert!(p.is_err() && body.starts_with(&cstr(name)));
                    out.note("foreign text");
                }
                let p = p?;
                assert_capacity(&p.param_types, body, 4);
                let types: Vec<u8> = p.param_types.iter().flat_map(|t| t.to_be_bytes()).collect();
                let n = (p.param_types.len() as i16).to_be_bytes();
                assert_prefix(body, &[&cstr(&p.name), &cstr(&p.query), &n, &types]);
            }
            b'B' => {
                let names = frame::bind_names(body);
                let b = frame::decode_bind(body)?;
                let (portal, statement) = names.expect("bind_names reads a prefix of Bind");
                assert_eq!((portal, statement), (&*b.portal, &*b.statement));
                assert_capacity(&b.param_formats, body, 2);
                assert_capacity(&b.params, body, 4);
                assert_capacity(&b.result_formats, body, 2);
                let mut values = (b.params.len() as i16).to_be_bytes().to_vec();
                for p in &b.params {
                    match p {
                        Some(v) => {
                            values.extend_from_slice(&(v.len() as i32).to_be_bytes());
                            values.extend_from_slice(v);
                        }
                        None => values.extend_from_slice(&(-1i32).to_be_bytes()),
                    }
                }
                let (formats, results) = (i16s(&b.param_formats), i16s(&b.result_formats));
                let (p, s) = (cstr(&b.portal), cstr(&b.statement));
                // A NULL may be sent as any negative length; compare only what is exact.
                if b.params.iter().all(Option::is_some) {
                    assert_prefix(body, &[&p, &s, &formats, &values, &results]);
                } else {
                    assert_prefix(body, &[&p, &s, &formats]);
                }
            }
            b'D' | b'C' => {
                let (target, name) = if tag == b'D' {
                    let d = frame::decode_describe(body)?;
                    (d.target, d.name)
                } else {
                    let c = frame::decode_close(body)?;
                    (c.target, c.name)
                };
                let t = if target == frame::Target::Statement {
                    b'S'
                } else {
                    b'P'
                };
                assert_prefix(body, &[&[t], &cstr(&name)]);
            }
            b'E' => {
                let portal = frame::execute_portal(body)?.to_owned();
                let e = frame::decode_execute(body)?;
                assert_eq!(portal, e.portal);
                assert_prefix(body, &[&cstr(&e.portal), &e.max_rows.to_be_bytes()]);
            }
            b'p' => {
                // The same tag carries SASL responses and passwords: try both.
                if let Ok((mechanism, data)) = frame::decode_sasl_initial(body) {
                    assert!(data.len() <= body.len() - mechanism.len() - 5);
                    out.note("sasl");
                }
                let password = frame::decode_password(body)?;
                out.note(crate::auth::oidc::OidcValidator::looks_like_jwt(password));
            }
            _ => {}
        }
        Ok(())
    })();
    match result {
        // Tags without a decoder all take the same path.
        Ok(()) => out.note((if b"QPBDECp".contains(&tag) { tag } else { 0 }, "ok")),
        Err(e) => out.err(&e),
    }
}

/// A Bind body decoded, then its values decoded for statement types picked by the
/// statement name's bytes (one type per byte), as `Session::bind` does.
fn bind_params(input: &[u8]) -> Vec<u64> {
    let mut out = Outcome::default();
    let body = Bytes::copy_from_slice(input);
    let b = match frame::decode_bind(&body) {
        Ok(b) => b,
        Err(e) => {
            out.err(&e);
            return out.finish();
        }
    };
    let all = super::seeds::param_types();
    let picks = b.statement.as_bytes();
    let types: Vec<_> = (0..b.params.len())
        .map(|i| {
            let k = picks.get(i).map_or(0, |c| c.wrapping_sub(b'A') as usize);
            all[k % all.len()].clone()
        })
        .collect();
    match crate::engine::params::decode_all(&types, &b.param_formats, &b.params) {
        Ok(values) => {
            assert_eq!(values.len(), b.params.len());
            for v in &values {
                out.note(format!("{:?}", v.data_type()));
            }
        }
        Err(e) => out.err(&e),
    }
    out.finish()
}

/// The walk over backend messages (cached answers, upstream replies) never loses
/// or invents a byte.
fn backend_walk(input: &[u8]) -> Vec<u64> {
    let mut out = Outcome::default();
    let mut walk = frame::messages(input);
    let mut seen = 0;
    for m in walk.by_ref() {
        let len = i32::from_be_bytes([m[1], m[2], m[3], m[4]]);
        assert_eq!(len as usize + 1, m.len());
        assert_eq!(m, &input[seen..seen + m.len()]);
        seen += m.len();
        out.note(m.len().min(6));
    }
    assert_eq!(walk.rest(), &input[seen..]);
    out.note(("rest", walk.rest().len().min(6)));
    out.finish()
}
