//! Both sides of NTLMv2 authentication as specified in [MS-NLMP], as used by
//! IIS "Integrated Windows Authentication" over HTTP (`WWW-Authenticate:
//! NTLM`, `Authorization: NTLM <base64>`), plus the base64 used in those
//! headers.
//!
//! The client side builds the NEGOTIATE (type 1) message, parses the
//! server's CHALLENGE (type 2) and answers with an AUTHENTICATE (type 3)
//! message carrying an NTLMv2 response. The server side (used by `cwa-sim`)
//! builds the CHALLENGE and verifies an AUTHENTICATE against a known
//! password in constant time.
//!
//! Only NTLMv2 is spoken: no LM/NTLMv1, no session security (signing,
//! sealing, key exchange, MIC), which HTTP authentication does not use.
//!
//! MD4 is needed for the NT one-way function, but OpenSSL 3 only offers it
//! in the "legacy" provider, which is not loaded on our hosts; rather than
//! change the process-wide provider set, this module carries a small MD4
//! (RFC 1320) checked against the RFC's test vectors. HMAC-MD5 comes from
//! OpenSSL.
//!
//! Every parser here bounds-checks each field against the message and
//! returns [`NtlmError`] on garbage; nothing panics on input.

use std::fmt;

use openssl::hash::{Hasher, MessageDigest};

use crate::wire::secret::{wipe, wipe_vec, wipe_words};

/// The largest NTLM message (raw bytes) either side accepts. Real messages
/// are a few hundred bytes; the bound keeps garbage from costing memory.
pub const MAX_MESSAGE_LEN: usize = 8 * 1024;

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";

/// NTLMSSP_NEGOTIATE_UNICODE: strings are UTF-16LE.
pub const NEGOTIATE_UNICODE: u32 = 0x0000_0001;
/// NTLMSSP_REQUEST_TARGET: the server should send its target name.
pub const REQUEST_TARGET: u32 = 0x0000_0004;
/// NTLMSSP_NEGOTIATE_NTLM: NTLM (v1 or v2) authentication.
pub const NEGOTIATE_NTLM: u32 = 0x0000_0200;
/// NTLMSSP_NEGOTIATE_ALWAYS_SIGN.
pub const NEGOTIATE_ALWAYS_SIGN: u32 = 0x0000_8000;
/// NTLMSSP_TARGET_TYPE_DOMAIN: the target name is a domain name.
pub const TARGET_TYPE_DOMAIN: u32 = 0x0001_0000;
/// NTLMSSP_NEGOTIATE_EXTENDED_SESSIONSECURITY.
pub const NEGOTIATE_EXTENDED_SESSIONSECURITY: u32 = 0x0008_0000;
/// NTLMSSP_NEGOTIATE_TARGET_INFO: the challenge carries target info.
pub const NEGOTIATE_TARGET_INFO: u32 = 0x0080_0000;
/// NTLMSSP_NEGOTIATE_VERSION: a version structure follows the header.
pub const NEGOTIATE_VERSION: u32 = 0x0200_0000;
/// NTLMSSP_NEGOTIATE_128.
pub const NEGOTIATE_128: u32 = 0x2000_0000;
/// NTLMSSP_NEGOTIATE_56.
pub const NEGOTIATE_56: u32 = 0x8000_0000;

/// The flags our client asks for in its NEGOTIATE message.
const CLIENT_FLAGS: u32 = NEGOTIATE_UNICODE
    | REQUEST_TARGET
    | NEGOTIATE_NTLM
    | NEGOTIATE_ALWAYS_SIGN
    | NEGOTIATE_EXTENDED_SESSIONSECURITY
    | NEGOTIATE_128
    | NEGOTIATE_56;

/// The flags our server answers with in its CHALLENGE message.
const SERVER_FLAGS: u32 = CLIENT_FLAGS | TARGET_TYPE_DOMAIN | NEGOTIATE_TARGET_INFO;

/// Why an NTLM message or header could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NtlmError {
    /// Shorter than its fixed header.
    Truncated,
    /// Longer than [`MAX_MESSAGE_LEN`].
    TooLarge,
    /// Does not start with `NTLMSSP\0`.
    BadSignature,
    /// A message of another type than the one expected.
    WrongType { expected: u32, got: u32 },
    /// A length/offset field points outside the message.
    FieldOutOfBounds(&'static str),
    /// A string field is not valid UTF-16LE.
    BadString(&'static str),
    /// An `Authorization`/`WWW-Authenticate` value that is not
    /// `NTLM <base64>` (or `Negotiate <base64>`).
    BadHeader,
    /// Invalid base64.
    BadBase64,
    /// OpenSSL could not compute HMAC-MD5 (for example an OpenSSL built or
    /// configured without MD5).
    Crypto(String),
}

impl fmt::Display for NtlmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NtlmError::Truncated => f.write_str("NTLM message truncated"),
            NtlmError::TooLarge => write!(f, "NTLM message larger than {MAX_MESSAGE_LEN} bytes"),
            NtlmError::BadSignature => f.write_str("not an NTLMSSP message (bad signature)"),
            NtlmError::WrongType { expected, got } => {
                write!(
                    f,
                    "NTLM message type {got} where type {expected} was expected"
                )
            }
            NtlmError::FieldOutOfBounds(field) => {
                write!(f, "NTLM field {field} points outside the message")
            }
            NtlmError::BadString(field) => write!(f, "NTLM field {field} is not valid UTF-16LE"),
            NtlmError::BadHeader => f.write_str("authorization header is not `NTLM <base64>`"),
            NtlmError::BadBase64 => f.write_str("invalid base64 in NTLM header"),
            NtlmError::Crypto(why) => write!(f, "HMAC-MD5 unavailable from OpenSSL: {why}"),
        }
    }
}

impl std::error::Error for NtlmError {}

/// A parsed CHALLENGE (type 2) message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// NegotiateFlags as sent by the server.
    pub flags: u32,
    /// The server's 8-byte nonce.
    pub server_challenge: [u8; 8],
    /// The server's target name (its domain), decoded.
    pub target_name: String,
    /// The raw AV_PAIR list, echoed inside the NTLMv2 response.
    pub target_info: Vec<u8>,
}

/// A parsed AUTHENTICATE (type 3) message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticate {
    /// NegotiateFlags as sent by the client.
    pub flags: u32,
    /// The user's domain as the client typed it.
    pub domain: String,
    /// The user name as the client typed it.
    pub user: String,
    /// The client's workstation name.
    pub workstation: String,
    /// NtChallengeResponse: NTProofStr (16 bytes) followed by the client blob.
    pub nt_response: Vec<u8>,
    /// LmChallengeResponse (LMv2: 16-byte proof + client challenge).
    pub lm_response: Vec<u8>,
}

// ---------------------------------------------------------------------------
// Client side

/// The NEGOTIATE (type 1) message our client sends first: no domain or
/// workstation supplied, Unicode + NTLM + extended session security.
pub fn negotiate_message() -> Vec<u8> {
    let mut m = Vec::with_capacity(32);
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&CLIENT_FLAGS.to_le_bytes());
    // DomainNameFields and WorkstationFields: empty, offset = end of header.
    for _ in 0..2 {
        m.extend_from_slice(&0u16.to_le_bytes());
        m.extend_from_slice(&0u16.to_le_bytes());
        m.extend_from_slice(&32u32.to_le_bytes());
    }
    m
}

/// Parses a CHALLENGE (type 2) message from a server.
pub fn parse_challenge(msg: &[u8]) -> Result<Challenge, NtlmError> {
    check_header(msg, 2, 48)?;
    let flags = read_u32(msg, 20);
    let mut server_challenge = [0u8; 8];
    server_challenge.copy_from_slice(&msg[24..32]);
    let target_name_bytes = field(msg, 12, "TargetName")?;
    let target_name = decode_string(target_name_bytes, flags, "TargetName")?;
    let target_info = field(msg, 40, "TargetInfo")?.to_vec();
    Ok(Challenge {
        flags,
        server_challenge,
        target_name,
        target_info,
    })
}

/// Builds the AUTHENTICATE (type 3) message answering `challenge` with an
/// NTLMv2 response (and the matching LMv2 response).
///
/// `timestamp` is a Windows FILETIME (100 ns ticks since 1601-01-01 UTC);
/// see [`filetime_now`]. `client_challenge` must be fresh random bytes in
/// real use (the parameter exists so tests can use [MS-NLMP]'s vectors).
/// Strings are sent as UTF-16LE.
pub fn authenticate_message(
    challenge: &Challenge,
    domain: &str,
    user: &str,
    password: &str,
    workstation: &str,
    client_challenge: [u8; 8],
    timestamp: u64,
) -> Result<Vec<u8>, NtlmError> {
    let mut key = ntowf_v2(password, user, domain)?;
    let response = ntlmv2_response(
        &key,
        challenge.server_challenge,
        client_challenge,
        timestamp,
        &challenge.target_info,
    );
    wipe(&mut key);
    let response = response?;
    let flags = (challenge.flags & CLIENT_FLAGS) | NEGOTIATE_UNICODE | NEGOTIATE_NTLM;
    let payloads: [Vec<u8>; 6] = [
        response.lm_response.to_vec(),
        response.nt_response,
        utf16le(domain),
        utf16le(user),
        utf16le(workstation),
        Vec::new(), // EncryptedRandomSessionKey: no key exchange over HTTP
    ];
    const HEADER: usize = 64;
    let mut m = Vec::with_capacity(HEADER + payloads.iter().map(Vec::len).sum::<usize>());
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&3u32.to_le_bytes());
    let mut offset = HEADER;
    for p in &payloads {
        // Our own fields are far below u16::MAX: names are typed by people
        // and the blob is bounded by the server's (bounded) target info.
        let len = u16::try_from(p.len()).unwrap_or(u16::MAX);
        m.extend_from_slice(&len.to_le_bytes());
        m.extend_from_slice(&len.to_le_bytes());
        m.extend_from_slice(&(offset as u32).to_le_bytes());
        offset += p.len();
    }
    m.extend_from_slice(&flags.to_le_bytes());
    debug_assert_eq!(m.len(), HEADER);
    for p in &payloads {
        m.extend_from_slice(p);
    }
    Ok(m)
}

/// The current time as a Windows FILETIME, for [`authenticate_message`].
pub fn filetime_now() -> u64 {
    const UNIX_EPOCH_AS_FILETIME: u64 = 116_444_736_000_000_000;
    let since_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    UNIX_EPOCH_AS_FILETIME + (since_unix.as_nanos() / 100) as u64
}

// ---------------------------------------------------------------------------
// Server side

/// Builds a CHALLENGE (type 2) message with the given nonce, target name
/// (the domain) and raw AV_PAIR list (see [`target_info`]).
pub fn challenge_message(
    server_challenge: [u8; 8],
    target_name: &str,
    target_info: &[u8],
) -> Vec<u8> {
    // Header 48 bytes + 8-byte version structure.
    const HEADER: usize = 56;
    let name = utf16le(target_name);
    let mut m = Vec::with_capacity(HEADER + name.len() + target_info.len());
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&2u32.to_le_bytes());
    push_field(&mut m, name.len(), HEADER);
    m.extend_from_slice(&(SERVER_FLAGS | NEGOTIATE_VERSION).to_le_bytes());
    m.extend_from_slice(&server_challenge);
    m.extend_from_slice(&[0u8; 8]); // Reserved
    push_field(&mut m, target_info.len(), HEADER + name.len());
    // Version: Windows Server 2003 (5.2) build 3790, NTLMSSP revision 15,
    // contemporary with OCS 2007.
    m.extend_from_slice(&[5, 2]);
    m.extend_from_slice(&3790u16.to_le_bytes());
    m.extend_from_slice(&[0, 0, 0, 15]);
    debug_assert_eq!(m.len(), HEADER);
    m.extend_from_slice(&name);
    m.extend_from_slice(target_info);
    m
}

/// A minimal AV_PAIR list naming the NetBIOS domain and computer, ended by
/// MsvAvEOL, for [`challenge_message`].
pub fn target_info(netbios_domain: &str, netbios_computer: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (id, value) in [(2u16, netbios_domain), (1u16, netbios_computer)] {
        let v = utf16le(value);
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&(v.len().min(u16::MAX as usize) as u16).to_le_bytes());
        out.extend_from_slice(&v);
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out
}

/// Parses an AUTHENTICATE (type 3) message from a client.
pub fn parse_authenticate(msg: &[u8]) -> Result<Authenticate, NtlmError> {
    check_header(msg, 3, 64)?;
    let flags = read_u32(msg, 60);
    let lm_response = field(msg, 12, "LmChallengeResponse")?.to_vec();
    let nt_response = field(msg, 20, "NtChallengeResponse")?.to_vec();
    let domain = decode_string(field(msg, 28, "DomainName")?, flags, "DomainName")?;
    let user = decode_string(field(msg, 36, "UserName")?, flags, "UserName")?;
    let workstation = decode_string(field(msg, 44, "Workstation")?, flags, "Workstation")?;
    field(msg, 52, "EncryptedRandomSessionKey")?;
    Ok(Authenticate {
        flags,
        domain,
        user,
        workstation,
        nt_response,
        lm_response,
    })
}

/// Whether `auth` carries a valid NTLMv2 response to `server_challenge`
/// for the user and domain it names, given that user's `password`. The
/// proof is compared in constant time. NTLMv1/LM-only answers are refused.
/// `Err` only when OpenSSL cannot compute HMAC-MD5.
pub fn verify_ntlmv2(
    auth: &Authenticate,
    server_challenge: [u8; 8],
    password: &str,
) -> Result<bool, NtlmError> {
    // NTProofStr (16) + blob header: RespType, HiRespType, 6 reserved,
    // timestamp 8, client challenge 8, 4 reserved.
    const MIN_LEN: usize = 16 + 28;
    let nt = &auth.nt_response;
    if nt.len() < MIN_LEN {
        return Ok(false);
    }
    let (proof, temp) = nt.split_at(16);
    if temp[0] != 1 || temp[1] != 1 {
        return Ok(false);
    }
    let key = ntowf_v2(password, &auth.user, &auth.domain)?;
    let expected = hmac_md5(&key, &[&server_challenge, temp])?;
    Ok(openssl::memcmp::eq(&expected, proof))
}

// ---------------------------------------------------------------------------
// NTLMv2 computations ([MS-NLMP] 3.3.2)

/// NTOWFv2: HMAC-MD5(MD4(UTF-16LE(password)), UTF-16LE(UPPER(user) + domain)).
pub(crate) fn ntowf_v2(password: &str, user: &str, domain: &str) -> Result<[u8; 16], NtlmError> {
    let mut unicode = utf16le(password);
    let mut nt_hash = md4(&unicode);
    // Both are as good as the password: gone before returning.
    wipe_vec(&mut unicode);
    let mut identity = user.to_uppercase();
    identity.push_str(domain);
    let key = hmac_md5(&nt_hash, &[&utf16le(&identity)]);
    wipe(&mut nt_hash);
    key
}

/// The results of the NTLMv2 computation for one challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ntlmv2Response {
    /// NtChallengeResponse: NTProofStr followed by the blob (`temp`).
    pub nt_response: Vec<u8>,
    /// LmChallengeResponse: LMv2 proof followed by the client challenge.
    pub lm_response: [u8; 24],
    /// SessionBaseKey (not sent; checked against the spec's vectors).
    pub session_base_key: [u8; 16],
}

/// Computes the NTLMv2 and LMv2 responses ([MS-NLMP] 3.3.2).
pub(crate) fn ntlmv2_response(
    response_key: &[u8; 16],
    server_challenge: [u8; 8],
    client_challenge: [u8; 8],
    timestamp: u64,
    target_info: &[u8],
) -> Result<Ntlmv2Response, NtlmError> {
    let mut temp = Vec::with_capacity(28 + target_info.len() + 4);
    temp.extend_from_slice(&[1, 1, 0, 0, 0, 0, 0, 0]);
    temp.extend_from_slice(&timestamp.to_le_bytes());
    temp.extend_from_slice(&client_challenge);
    temp.extend_from_slice(&[0, 0, 0, 0]);
    temp.extend_from_slice(target_info);
    temp.extend_from_slice(&[0, 0, 0, 0]);
    let proof = hmac_md5(response_key, &[&server_challenge, &temp])?;
    let mut nt_response = proof.to_vec();
    nt_response.extend_from_slice(&temp);
    let lm_proof = hmac_md5(response_key, &[&server_challenge, &client_challenge])?;
    let mut lm_response = [0u8; 24];
    lm_response[..16].copy_from_slice(&lm_proof);
    lm_response[16..].copy_from_slice(&client_challenge);
    Ok(Ntlmv2Response {
        nt_response,
        lm_response,
        session_base_key: hmac_md5(response_key, &[&proof])?,
    })
}

/// HMAC-MD5 over OpenSSL's MD5 digest ([`crypto::hmac`](crate::wire::crypto::hmac),
/// which says why not OpenSSL's HMAC object). It fails when MD5 is not
/// available (a FIPS configuration, a build without it) or memory runs
/// out; that is an error for the sign-in to report, not a reason to panic.
fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> Result<[u8; 16], NtlmError> {
    let crypto = |e: openssl::error::ErrorStack| NtlmError::Crypto(e.to_string());
    let md5 = |first: &[u8], rest: &[&[u8]]| -> Result<[u8; 16], NtlmError> {
        let mut h = Hasher::new(MessageDigest::md5()).map_err(crypto)?;
        h.update(first).map_err(crypto)?;
        for p in rest {
            h.update(p).map_err(crypto)?;
        }
        let d = h.finish().map_err(crypto)?;
        <[u8; 16]>::try_from(&d[..])
            .map_err(|_| NtlmError::Crypto(format!("MD5 of {} bytes", d.len())))
    };
    crate::wire::crypto::hmac(key, parts, md5)
}

// ---------------------------------------------------------------------------
// MD4 (RFC 1320)

/// MD4 of `data` (RFC 1320). Used only for the NT one-way function.
pub(crate) fn md4(data: &[u8]) -> [u8; 16] {
    let mut state: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    let bit_len = (data.len() as u64).wrapping_mul(8);
    // Sized once: no growth leaves a stray copy of the input.
    let mut padded = Vec::with_capacity(data.len() + 72);
    padded.extend_from_slice(data);
    padded.push(0x80);
    while padded.len() % 64 != 56 {
        padded.push(0);
    }
    padded.extend_from_slice(&bit_len.to_le_bytes());
    for block in padded.chunks_exact(64) {
        let mut x = [0u32; 16];
        for (i, w) in x.iter_mut().enumerate() {
            *w = u32::from_le_bytes([
                block[4 * i],
                block[4 * i + 1],
                block[4 * i + 2],
                block[4 * i + 3],
            ]);
        }
        let [mut a, mut b, mut c, mut d] = state;
        let f = |x: u32, y: u32, z: u32| (x & y) | (!x & z);
        let g = |x: u32, y: u32, z: u32| (x & y) | (x & z) | (y & z);
        let h = |x: u32, y: u32, z: u32| x ^ y ^ z;
        // Round 1.
        for &i in &[0usize, 4, 8, 12] {
            a = a.wrapping_add(f(b, c, d)).wrapping_add(x[i]).rotate_left(3);
            d = d
                .wrapping_add(f(a, b, c))
                .wrapping_add(x[i + 1])
                .rotate_left(7);
            c = c
                .wrapping_add(f(d, a, b))
                .wrapping_add(x[i + 2])
                .rotate_left(11);
            b = b
                .wrapping_add(f(c, d, a))
                .wrapping_add(x[i + 3])
                .rotate_left(19);
        }
        // Round 2.
        const K2: u32 = 0x5a82_7999;
        for i in 0..4usize {
            a = a
                .wrapping_add(g(b, c, d))
                .wrapping_add(x[i])
                .wrapping_add(K2)
                .rotate_left(3);
            d = d
                .wrapping_add(g(a, b, c))
                .wrapping_add(x[i + 4])
                .wrapping_add(K2)
                .rotate_left(5);
            c = c
                .wrapping_add(g(d, a, b))
                .wrapping_add(x[i + 8])
                .wrapping_add(K2)
                .rotate_left(9);
            b = b
                .wrapping_add(g(c, d, a))
                .wrapping_add(x[i + 12])
                .wrapping_add(K2)
                .rotate_left(13);
        }
        // Round 3.
        const K3: u32 = 0x6ed9_eba1;
        for &i in &[0usize, 2, 1, 3] {
            a = a
                .wrapping_add(h(b, c, d))
                .wrapping_add(x[i])
                .wrapping_add(K3)
                .rotate_left(3);
            d = d
                .wrapping_add(h(a, b, c))
                .wrapping_add(x[i + 8])
                .wrapping_add(K3)
                .rotate_left(9);
            c = c
                .wrapping_add(h(d, a, b))
                .wrapping_add(x[i + 4])
                .wrapping_add(K3)
                .rotate_left(11);
            b = b
                .wrapping_add(h(c, d, a))
                .wrapping_add(x[i + 12])
                .wrapping_add(K3)
                .rotate_left(15);
        }
        state[0] = state[0].wrapping_add(a);
        state[1] = state[1].wrapping_add(b);
        state[2] = state[2].wrapping_add(c);
        state[3] = state[3].wrapping_add(d);
        // The block is (part of) a password in NT hashing.
        wipe_words(&mut x);
    }
    wipe_vec(&mut padded);
    let mut out = [0u8; 16];
    for (i, w) in state.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
    out
}

// ---------------------------------------------------------------------------
// HTTP header helpers and base64

/// `NTLM <base64 of msg>`, the value of an `Authorization` or
/// `WWW-Authenticate` header carrying `msg`.
pub fn header_value(msg: &[u8]) -> String {
    format!("NTLM {}", base64_encode(msg))
}

/// The NTLM message carried by an `Authorization` or `WWW-Authenticate`
/// value `NTLM <base64>` (also accepted: `Negotiate <base64>` when the
/// token is a raw NTLMSSP message, as IIS's Negotiate provider falls back
/// to). The scheme is case-insensitive.
pub fn parse_header_value(value: &str) -> Result<Vec<u8>, NtlmError> {
    let value = value.trim();
    let (scheme, token) = value.split_once(' ').ok_or(NtlmError::BadHeader)?;
    if !scheme.eq_ignore_ascii_case("NTLM") && !scheme.eq_ignore_ascii_case("Negotiate") {
        return Err(NtlmError::BadHeader);
    }
    let token = token.trim();
    // base64 of MAX_MESSAGE_LEN bytes.
    if token.len() > MAX_MESSAGE_LEN.div_ceil(3) * 4 {
        return Err(NtlmError::TooLarge);
    }
    let msg = base64_decode(token)?;
    if msg.len() < 8 || &msg[..8] != SIGNATURE {
        return Err(NtlmError::BadSignature);
    }
    Ok(msg)
}

/// Standard base64 (RFC 4648, with `=` padding).
pub fn base64_encode(data: &[u8]) -> String {
    openssl::base64::encode_block(data)
}

/// Decodes standard base64; padding is required to be correct when present
/// and may be omitted. Whitespace and other characters are errors, and so
/// are non-zero leftover bits: OpenSSL's decoder, which does the decoding,
/// would skip whitespace and accept those bits, so the text is checked
/// first; it also wants the padding, which is added when left out.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, NtlmError> {
    let bytes = text.as_bytes();
    let unpadded = match bytes {
        [rest @ .., b'=', b'='] => rest,
        [rest @ .., b'='] => rest,
        _ => bytes,
    };
    if bytes.len() != unpadded.len() && bytes.len() % 4 != 0 {
        return Err(NtlmError::BadBase64);
    }
    let sextet = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut last = 0;
    for &c in unpadded {
        last = sextet(c).ok_or(NtlmError::BadBase64)?;
    }
    // The bits of the last character that no byte uses must be zero.
    let unused_bits = match unpadded.len() % 4 {
        0 => 0,
        1 => return Err(NtlmError::BadBase64),
        2 => 4,
        _ => 2,
    };
    if last & ((1 << unused_bits) - 1) != 0 {
        return Err(NtlmError::BadBase64);
    }
    if unpadded.is_empty() {
        return Ok(Vec::new());
    }
    let mut padded = String::with_capacity(unpadded.len() + 2);
    padded.push_str(&text[..unpadded.len()]);
    while padded.len() % 4 != 0 {
        padded.push('=');
    }
    openssl::base64::decode_block(&padded).map_err(|_| NtlmError::BadBase64)
}

// ---------------------------------------------------------------------------
// Message plumbing

fn check_header(msg: &[u8], expected: u32, header_len: usize) -> Result<(), NtlmError> {
    if msg.len() > MAX_MESSAGE_LEN {
        return Err(NtlmError::TooLarge);
    }
    if msg.len() < 12 {
        return Err(NtlmError::Truncated);
    }
    if &msg[..8] != SIGNATURE {
        return Err(NtlmError::BadSignature);
    }
    let got = read_u32(msg, 8);
    if got != expected {
        return Err(NtlmError::WrongType { expected, got });
    }
    if msg.len() < header_len {
        return Err(NtlmError::Truncated);
    }
    Ok(())
}

fn read_u16(msg: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([msg[at], msg[at + 1]])
}

fn read_u32(msg: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([msg[at], msg[at + 1], msg[at + 2], msg[at + 3]])
}

/// The payload named by the (len, maxlen, offset) triple at `at`; the
/// caller has checked that the header holds it.
fn field<'a>(msg: &'a [u8], at: usize, name: &'static str) -> Result<&'a [u8], NtlmError> {
    let len = read_u16(msg, at) as usize;
    let offset = read_u32(msg, at + 4) as usize;
    if len == 0 {
        return Ok(&[]);
    }
    let end = offset
        .checked_add(len)
        .ok_or(NtlmError::FieldOutOfBounds(name))?;
    msg.get(offset..end)
        .ok_or(NtlmError::FieldOutOfBounds(name))
}

fn push_field(m: &mut Vec<u8>, len: usize, offset: usize) {
    let len = len.min(u16::MAX as usize) as u16;
    m.extend_from_slice(&len.to_le_bytes());
    m.extend_from_slice(&len.to_le_bytes());
    m.extend_from_slice(&(offset as u32).to_le_bytes());
}

fn decode_string(bytes: &[u8], flags: u32, name: &'static str) -> Result<String, NtlmError> {
    if flags & NEGOTIATE_UNICODE == 0 {
        // OEM code page: treat as Latin-1, which never fails.
        return Ok(bytes.iter().map(|&b| b as char).collect());
    }
    if bytes.len() % 2 != 0 {
        return Err(NtlmError::BadString(name));
    }
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).map_err(|_| NtlmError::BadString(name))
}

fn utf16le(s: &str) -> Vec<u8> {
    // Sized once (UTF-16 never takes more than twice the UTF-8 bytes), so
    // no growth leaves a partial copy of a password behind.
    let mut out = Vec::with_capacity(s.len() * 2);
    out.extend(s.encode_utf16().flat_map(u16::to_le_bytes));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::hex::encode as hex;

    fn unhex(s: &str) -> Vec<u8> {
        crate::hex::decode(s).unwrap()
    }

    // [MS-NLMP] 4.2.1 common values and 4.2.4 NTLMv2 authentication.
    const SERVER_CHALLENGE: [u8; 8] = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
    const CLIENT_CHALLENGE: [u8; 8] = [0xaa; 8];
    /// 4.2.4: AV pairs MsvAvNbDomainName "Domain", MsvAvNbComputerName "Server", MsvAvEOL.
    const SPEC_TARGET_INFO: &str =
        "02000c0044006f006d00610069006e0001000c0053006500720076006500720000000000";

    #[test]
    fn hmac_md5_matches_rfc2202_vectors() {
        let mac = hmac_md5(b"Jefe", &[b"what do ya ", b"want for nothing?"]).unwrap();
        assert_eq!(crate::hex::encode(&mac), "750c783e6ab0b503eaa86e310a5db738");
        let mac = hmac_md5(
            &[0xaa; 80],
            &[b"Test Using Larger Than Block-Size Key - Hash Key First"],
        )
        .unwrap();
        assert_eq!(crate::hex::encode(&mac), "6b1ab7fe4bd7bf8f0b62e6ce61b9d0cd");
    }

    #[test]
    fn md4_matches_rfc1320_vectors() {
        let cases: [(&str, &str); 7] = [
            ("", "31d6cfe0d16ae931b73c59d7e0c089c0"),
            ("a", "bde52cb31de33e46245e05fbdbd6fb24"),
            ("abc", "a448017aaf21d8525fc10ae87aa6729d"),
            ("message digest", "d9130a8164549fe818874806e1c7014b"),
            (
                "abcdefghijklmnopqrstuvwxyz",
                "d79e1c308aa5bbcdeea8ed63df412da9",
            ),
            (
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                "043f8582f241db351ce627e153e7f0e4",
            ),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "e33b4ddc9c38f2199c3e7b164fcc0536",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(hex(&md4(input.as_bytes())), want, "MD4({input:?})");
        }
    }

    #[test]
    fn nt_hash_and_ntowfv2_match_ms_nlmp() {
        // 4.2.2.1.2 NTOWFv1 = MD4(UNICODE("Password")).
        assert_eq!(
            hex(&md4(&utf16le("Password"))),
            "a4f49c406510bdcab6824ee7c30fd852"
        );
        // 4.2.4.1.1 NTOWFv2.
        assert_eq!(
            hex(&ntowf_v2("Password", "User", "Domain").unwrap()),
            "0c868a403bfd7a93a3001ef22ef02e3f"
        );
    }

    #[test]
    fn ntlmv2_response_matches_ms_nlmp() {
        let key = ntowf_v2("Password", "User", "Domain").unwrap();
        let r = ntlmv2_response(
            &key,
            SERVER_CHALLENGE,
            CLIENT_CHALLENGE,
            0,
            &unhex(SPEC_TARGET_INFO),
        )
        .unwrap();
        // 4.2.4.2.1 LMv2 response.
        assert_eq!(
            hex(&r.lm_response),
            "86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa"
        );
        // 4.2.4.2.2 NTLMv2 response: NTProofStr then temp.
        let want = concat!(
            "68cd0ab851e51c96aabc927bebef6a1c",
            "0101000000000000",
            "0000000000000000",
            "aaaaaaaaaaaaaaaa",
            "00000000",
            "02000c0044006f006d00610069006e0001000c0053006500720076006500720000000000",
            "00000000",
        );
        assert_eq!(hex(&r.nt_response), want);
        // 4.2.4.1.2 session base key.
        assert_eq!(hex(&r.session_base_key), "8de40ccadbc14a82f15cb0ad0de95ca3");
    }

    #[test]
    fn full_exchange_with_spec_values_verifies() {
        let challenge_bytes =
            challenge_message(SERVER_CHALLENGE, "Domain", &unhex(SPEC_TARGET_INFO));
        let challenge = parse_challenge(&challenge_bytes).unwrap();
        assert_eq!(challenge.server_challenge, SERVER_CHALLENGE);
        assert_eq!(challenge.target_name, "Domain");
        assert_eq!(hex(&challenge.target_info), SPEC_TARGET_INFO);
        assert!(challenge.flags & NEGOTIATE_TARGET_INFO != 0);

        let msg = authenticate_message(
            &challenge,
            "Domain",
            "User",
            "Password",
            "COMPUTER",
            CLIENT_CHALLENGE,
            0,
        )
        .unwrap();
        let auth = parse_authenticate(&msg).unwrap();
        assert_eq!(auth.domain, "Domain");
        assert_eq!(auth.user, "User");
        assert_eq!(auth.workstation, "COMPUTER");
        assert_eq!(
            hex(&auth.nt_response[..16]),
            "68cd0ab851e51c96aabc927bebef6a1c"
        );
        assert_eq!(
            hex(&auth.lm_response),
            "86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa"
        );
        assert!(verify_ntlmv2(&auth, SERVER_CHALLENGE, "Password").unwrap());
        assert!(!verify_ntlmv2(&auth, SERVER_CHALLENGE, "password").unwrap());
        let mut other = SERVER_CHALLENGE;
        other[7] ^= 1;
        assert!(!verify_ntlmv2(&auth, other, "Password").unwrap());
    }

    #[test]
    fn tampering_any_byte_of_the_response_fails() {
        let ti = target_info("CONTOSO", "CWA01");
        let ch = parse_challenge(&challenge_message([7; 8], "CONTOSO", &ti)).unwrap();
        let msg = authenticate_message(
            &ch,
            "CONTOSO",
            "alice",
            "s3cret!",
            "WS",
            [9; 8],
            filetime_now(),
        )
        .unwrap();
        let auth = parse_authenticate(&msg).unwrap();
        assert!(verify_ntlmv2(&auth, [7; 8], "s3cret!").unwrap());
        for i in 0..auth.nt_response.len() {
            let mut bad = auth.clone();
            bad.nt_response[i] ^= 0x40;
            assert!(!verify_ntlmv2(&bad, [7; 8], "s3cret!").unwrap(), "byte {i}");
        }
        // Another user name changes the key.
        let mut bob = auth.clone();
        bob.user = "bob".into();
        assert!(!verify_ntlmv2(&bob, [7; 8], "s3cret!").unwrap());
        // User names are case-insensitive in NTOWFv2 (upper-cased).
        let mut upper = auth;
        upper.user = "ALICE".into();
        assert!(verify_ntlmv2(&upper, [7; 8], "s3cret!").unwrap());
    }

    #[test]
    fn negotiate_message_is_well_formed() {
        let m = negotiate_message();
        assert_eq!(m.len(), 32);
        assert_eq!(&m[..8], SIGNATURE);
        assert_eq!(read_u32(&m, 8), 1);
        assert!(read_u32(&m, 12) & NEGOTIATE_UNICODE != 0);
        assert!(parse_challenge(&m).is_err());
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let ti = target_info("D", "S");
        let good2 = challenge_message([1; 8], "D", &ti);
        let ch = parse_challenge(&good2).unwrap();
        let good3 = authenticate_message(&ch, "D", "u", "p", "w", [2; 8], 0).unwrap();
        // Every truncation.
        for n in 0..good2.len() {
            assert!(
                parse_challenge(&good2[..n]).is_err(),
                "type2 truncated to {n}"
            );
        }
        for n in 0..good3.len() {
            assert!(
                parse_authenticate(&good3[..n]).is_err(),
                "type3 truncated to {n}"
            );
        }
        // Oversized.
        let mut big = good3.clone();
        big.resize(MAX_MESSAGE_LEN + 1, 0);
        assert_eq!(parse_authenticate(&big), Err(NtlmError::TooLarge));
        // Wrong type and signature.
        assert!(matches!(
            parse_authenticate(&good2),
            Err(NtlmError::WrongType { .. })
        ));
        let mut sig = good3.clone();
        sig[0] = b'X';
        assert_eq!(parse_authenticate(&sig), Err(NtlmError::BadSignature));
        // Offsets pointing far away, lengths overflowing.
        let mut far = good3.clone();
        far[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse_authenticate(&far),
            Err(NtlmError::FieldOutOfBounds(_))
        ));
        // Odd-length UTF-16.
        let mut odd = good3.clone();
        odd[36] = 3;
        assert!(parse_authenticate(&odd).is_err());
        // Random bytes behind a valid header, deterministic pseudo-random.
        let mut seed: u32 = 0x1234_5678;
        for round in 0..2000 {
            let base = if round % 2 == 0 { &good2 } else { &good3 };
            let mut m = base.clone();
            let flips = 1 + (round % 7);
            for _ in 0..flips {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                let i = 8 + (seed as usize % (m.len() - 8));
                m[i] = (seed >> 8) as u8;
            }
            let _ = parse_challenge(&m);
            if let Ok(a) = parse_authenticate(&m) {
                let _ = verify_ntlmv2(&a, [1; 8], "p").unwrap();
            }
        }
        // Short nt responses never verify.
        let mut a = parse_authenticate(&good3).unwrap();
        a.nt_response.truncate(24);
        assert!(!verify_ntlmv2(&a, [1; 8], "p").unwrap());
        a.nt_response.clear();
        assert!(!verify_ntlmv2(&a, [1; 8], "p").unwrap());
    }

    #[test]
    fn base64_round_trips_and_refuses_garbage() {
        for n in 0..40usize {
            let data: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            let enc = base64_encode(&data);
            assert_eq!(base64_decode(&enc).unwrap(), data, "len {n}");
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_decode("Zm8").unwrap(), b"fo");
        for bad in ["Z", "Zm9v!", "Zm 9v", "Zm9=", "=", "Zm8==="] {
            assert!(base64_decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_values() {
        let m = negotiate_message();
        let h = header_value(&m);
        assert!(h.starts_with("NTLM "));
        assert_eq!(parse_header_value(&h).unwrap(), m);
        let neg = format!("Negotiate {}", base64_encode(&m));
        assert_eq!(parse_header_value(&neg).unwrap(), m);
        assert_eq!(parse_header_value("Basic Zm9v"), Err(NtlmError::BadHeader));
        assert_eq!(parse_header_value("NTLM"), Err(NtlmError::BadHeader));
        assert_eq!(
            parse_header_value("NTLM Zm9vYmFy"),
            Err(NtlmError::BadSignature)
        );
        assert_eq!(parse_header_value("NTLM ***"), Err(NtlmError::BadBase64));
        let huge = format!("NTLM {}", "A".repeat(20_000));
        assert_eq!(parse_header_value(&huge), Err(NtlmError::TooLarge));
    }
}
