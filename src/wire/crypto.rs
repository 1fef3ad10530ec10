//! The protocol's cryptography and compression, as pure functions over
//! bytes so that an independent implementation (and the worked example in
//! collab-protocol(7)) can be checked step by step: HKDF-SHA256 key
//! schedule, key confirmation, AES-256-GCM sealing with the clear header as
//! associated data, and raw deflate with a hard inflate cap. All primitives
//! are the system OpenSSL's, except deflate (flate2).

use std::sync::{Mutex, OnceLock};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use openssl::cipher::{Cipher, CipherRef};
use openssl::cipher_ctx::CipherCtx;
use openssl::sha::Sha256;

use super::frame::{CONFIRM_LEN, HEADER_LEN, RANDOM_LEN, TAG_LEN};
use super::secret::wipe;
use super::WireError;

/// Size of the device transport key and of every derived key.
pub const KEY_LEN: usize = 32;

/// HKDF `info` label (followed by the PIN, 4 bytes BE) of the key that
/// encrypts device-to-service frames.
pub const LABEL_DEVICE_TO_SERVICE: &[u8] = b"collab-protocol 1 device-to-service";
/// HKDF `info` label of the key that encrypts service-to-device frames.
pub const LABEL_SERVICE_TO_DEVICE: &[u8] = b"collab-protocol 1 service-to-device";
/// HKDF `info` label of the key-confirmation key.
pub const LABEL_CONFIRM: &[u8] = b"collab-protocol 1 key confirmation";
/// HMAC input of the service's key confirmation.
pub const CONFIRM_SERVICE: &[u8] = b"service confirms";
/// HMAC input of the device's key confirmation.
pub const CONFIRM_DEVICE: &[u8] = b"device confirms";

/// The direction value in the first four bytes of every GCM nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Frames the device sends (nonce prefix 00000001).
    DeviceToService,
    /// Frames the service sends (nonce prefix 00000002).
    ServiceToDevice,
}

impl Direction {
    /// The 32-bit value that starts the nonce.
    pub fn code(self) -> u32 {
        match self {
            Direction::DeviceToService => 1,
            Direction::ServiceToDevice => 2,
        }
    }
}

/// The keys of one connection, derived from the transport key and both
/// randoms. Not `Debug`, so they cannot end up in a log by accident.
#[derive(Clone)]
pub struct SessionKeys {
    /// Encrypts frames from the device.
    pub device_to_service: [u8; KEY_LEN],
    /// Encrypts frames from the service.
    pub service_to_device: [u8; KEY_LEN],
    /// Keys the two confirmation HMACs.
    pub confirm: [u8; KEY_LEN],
}

impl SessionKeys {
    /// The key for frames travelling in `dir`.
    pub fn for_direction(&self, dir: Direction) -> &[u8; KEY_LEN] {
        match dir {
            Direction::DeviceToService => &self.device_to_service,
            Direction::ServiceToDevice => &self.service_to_device,
        }
    }

    /// HMAC-SHA256(confirm key, "service confirms").
    pub fn service_confirmation(&self) -> Result<[u8; CONFIRM_LEN], WireError> {
        hmac_sha256(&self.confirm, CONFIRM_SERVICE)
    }

    /// HMAC-SHA256(confirm key, "device confirms").
    pub fn device_confirmation(&self) -> Result<[u8; CONFIRM_LEN], WireError> {
        hmac_sha256(&self.confirm, CONFIRM_DEVICE)
    }
}

/// HKDF-SHA256 (RFC 5869): extract with `salt` from `ikm`, expand with
/// `info` to `out.len()` bytes (at most 255 × 32).
pub fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[u8], out: &mut [u8]) -> Result<(), WireError> {
    if out.len() > 255 * SHA256_LEN {
        return Err(WireError::Crypto(format!(
            "HKDF cannot give {} bytes",
            out.len()
        )));
    }
    let zero_salt = [0u8; SHA256_LEN];
    let salt = if salt.is_empty() {
        &zero_salt[..]
    } else {
        salt
    };
    let mut prk = hmac_parts(salt, &[ikm]);
    let mut block = [0u8; SHA256_LEN];
    let mut previous: &[u8] = &[];
    for (i, chunk) in out.chunks_mut(SHA256_LEN).enumerate() {
        // i < 255 by the check above.
        let counter = [i as u8 + 1];
        block = hmac_parts(&prk, &[previous, info, &counter]);
        chunk.copy_from_slice(&block[..chunk.len()]);
        previous = &block;
    }
    wipe(&mut prk);
    wipe(&mut block);
    Ok(())
}

/// HMAC-SHA256 of `data` under `key`.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Result<[u8; 32], WireError> {
    Ok(hmac_parts(key, &[data]))
}

const SHA256_LEN: usize = 32;

/// The block size of SHA-256 and MD5, the hashes [`hmac`] is used with.
const HMAC_BLOCK: usize = 64;

/// HMAC (RFC 2104) of the concatenation of `parts` under `key`, for a hash
/// with a 64-byte block given as `digest(first, rest)`: the hash of
/// `first` followed by each of `rest`.
///
/// Built from bare digests rather than OpenSSL's EVP MAC, HMAC-key and
/// KDF objects: those give the calling thread OpenSSL's error queue,
/// about 900 bytes that a session's link thread (which derives the link's
/// keys and runs the NTLM sign-in) kept for the session's life (measured
/// with massif on the 300-session load run). The bare digests touch no
/// per-thread state. Key material on the stack is wiped.
pub fn hmac<const N: usize, E>(
    key: &[u8],
    parts: &[&[u8]],
    digest: impl Fn(&[u8], &[&[u8]]) -> Result<[u8; N], E>,
) -> Result<[u8; N], E> {
    const { assert!(N <= HMAC_BLOCK, "a digest no longer than the block") };
    let mut k = [0u8; HMAC_BLOCK];
    if key.len() > HMAC_BLOCK {
        let mut hashed = digest(key, &[])?;
        k[..N].copy_from_slice(&hashed);
        wipe(&mut hashed);
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut pad = [0u8; HMAC_BLOCK];
    for (p, k) in pad.iter_mut().zip(&k) {
        *p = k ^ 0x36;
    }
    let inner = digest(&pad, parts);
    for (p, k) in pad.iter_mut().zip(&k) {
        *p = k ^ 0x5c;
    }
    let mac = inner.and_then(|inner| digest(&pad, &[&inner]));
    wipe(&mut k);
    wipe(&mut pad);
    mac
}

/// HMAC-SHA256 of the concatenation of `parts` (see [`hmac`]).
fn hmac_parts(key: &[u8], parts: &[&[u8]]) -> [u8; SHA256_LEN] {
    let sha256 = |first: &[u8], rest: &[&[u8]]| {
        let mut h = Sha256::new();
        h.update(first);
        for part in rest {
            h.update(part);
        }
        Ok::<_, std::convert::Infallible>(h.finish())
    };
    match hmac(key, parts, sha256) {
        Ok(mac) => mac,
        Err(never) => match never {},
    }
}

/// Derives a connection's keys: salt = device random || service random,
/// IKM = transport key, info = label || PIN (u32 BE), 32 bytes each.
pub fn derive_keys(
    transport_key: &[u8; KEY_LEN],
    pin: u32,
    device_random: &[u8; RANDOM_LEN],
    service_random: &[u8; RANDOM_LEN],
) -> Result<SessionKeys, WireError> {
    let mut salt = [0u8; 2 * RANDOM_LEN];
    salt[..RANDOM_LEN].copy_from_slice(device_random);
    salt[RANDOM_LEN..].copy_from_slice(service_random);
    let derive = |label: &[u8]| -> Result<[u8; KEY_LEN], WireError> {
        let mut info = label.to_vec();
        info.extend_from_slice(&pin.to_be_bytes());
        let mut out = [0u8; KEY_LEN];
        hkdf_sha256(&salt, transport_key, &info, &mut out)?;
        Ok(out)
    };
    Ok(SessionKeys {
        device_to_service: derive(LABEL_DEVICE_TO_SERVICE)?,
        service_to_device: derive(LABEL_SERVICE_TO_DEVICE)?,
        confirm: derive(LABEL_CONFIRM)?,
    })
}

/// The 12-byte GCM nonce: direction (u32 BE) || sequence (u64 BE).
pub fn nonce(dir: Direction, seq: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&dir.code().to_be_bytes());
    n[4..].copy_from_slice(&seq.to_be_bytes());
    n
}

/// AES-256-GCM, fetched from OpenSSL's default provider once for the
/// process. Passing OpenSSL 3 the legacy `EVP_aes_256_gcm()` instead makes
/// every cipher initialisation fetch it again, by name, under the method
/// store's lock (each frame sealed or opened did; heaptrack showed the
/// fetch cache's allocations among those a burst of sessions leaves
/// behind).
fn aes_256_gcm() -> Result<&'static CipherRef, WireError> {
    static FETCHED: OnceLock<Cipher> = OnceLock::new();
    if let Some(cipher) = FETCHED.get() {
        return Ok(cipher);
    }
    let cipher = Cipher::fetch(None, "AES-256-GCM", None)?;
    Ok(FETCHED.get_or_init(|| cipher))
}

/// AES-256-GCM: encrypts `plaintext` with the header as associated data;
/// returns ciphertext || 16-byte tag (the `Data` frame body).
pub fn seal(
    key: &[u8; KEY_LEN],
    dir: Direction,
    header: &[u8; HEADER_LEN],
    seq: u64,
    plaintext: &[u8],
) -> Result<Vec<u8>, WireError> {
    let mut ctx = CipherCtx::new()?;
    ctx.encrypt_init(Some(aes_256_gcm()?), Some(key), Some(&nonce(dir, seq)))?;
    ctx.cipher_update(header, None)?;
    let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN + 16);
    ctx.cipher_update_vec(plaintext, &mut out)?;
    ctx.cipher_final_vec(&mut out)?;
    let mut tag = [0u8; TAG_LEN];
    ctx.tag(&mut tag)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Opens a `Data` body sealed by [`seal`]; any change to header, body or
/// tag, or the wrong key, direction or sequence, gives [`WireError::Decrypt`].
pub fn open(
    key: &[u8; KEY_LEN],
    dir: Direction,
    header: &[u8; HEADER_LEN],
    seq: u64,
    body: &[u8],
) -> Result<Vec<u8>, WireError> {
    if body.len() < TAG_LEN {
        return Err(WireError::Decrypt);
    }
    let (ciphertext, tag) = body.split_at(body.len() - TAG_LEN);
    let cipher = aes_256_gcm()?;
    let opened = (|| {
        let mut ctx = CipherCtx::new()?;
        ctx.decrypt_init(Some(cipher), Some(key), Some(&nonce(dir, seq)))?;
        ctx.cipher_update(header, None)?;
        let mut out = Vec::with_capacity(ciphertext.len() + 16);
        ctx.cipher_update_vec(ciphertext, &mut out)?;
        ctx.set_tag(tag)?;
        ctx.cipher_final_vec(&mut out)?;
        Ok::<_, openssl::error::ErrorStack>(out)
    })();
    opened.map_err(|_| WireError::Decrypt)
}

/// Idle compressors and decompressors kept for reuse, at most this many of
/// each.
const POOL_MAX: usize = 64;

static DEFLATERS: Mutex<Vec<Compress>> = Mutex::new(Vec::new());
static INFLATERS: Mutex<Vec<Decompress>> = Mutex::new(Vec::new());

fn take<T>(pool: &Mutex<Vec<T>>) -> Option<T> {
    pool.lock().unwrap_or_else(|p| p.into_inner()).pop()
}

fn give_back<T>(pool: &Mutex<Vec<T>>, item: T) {
    let mut idle = pool.lock().unwrap_or_else(|p| p.into_inner());
    if idle.len() < POOL_MAX {
        idle.push(item);
    }
}

/// Builds a compressor or decompressor on a short-lived helper thread.
/// flate2's pure-Rust backend builds its state by value on the caller's
/// stack before boxing it (about 64 KiB for a compressor, 48 KiB for a
/// decompressor, measured); built here, those pages never become resident
/// in the long-lived session threads that compress and inflate. Together
/// with the pools this also spares each message the allocation and zeroing
/// of that state.
fn build_off_stack<T: Send + 'static>(build: fn() -> T) -> T {
    std::thread::Builder::new()
        .name("flate-init".into())
        // Unoptimised builds need over 256 KiB here; the thread is
        // short-lived and only the touched pages are ever resident.
        .stack_size(1024 * 1024)
        .spawn(build)
        .ok()
        .and_then(|h| h.join().ok())
        .unwrap_or_else(build)
}

/// `data` as one final stored block (at most 65535 bytes).
fn deflate_stored(data: &[u8]) -> Vec<u8> {
    debug_assert!(data.len() <= usize::from(u16::MAX));
    let len = data.len() as u16;
    let mut out = Vec::with_capacity(data.len() + 5);
    // BFINAL = 1, BTYPE = 00 (stored), then padding to the byte boundary.
    out.push(0x01);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    out
}

fn new_compressor() -> Compress {
    Compress::new(Compression::default(), false)
}

fn new_decompressor() -> Decompress {
    Decompress::new(false)
}

/// Messages shorter than this go as one stored deflate block (RFC 1951,
/// 3.2.4: five bytes of header, no compression). Compressing costs more
/// than it saves here: readying a pooled compressor clears over 200 KiB
/// of its tables (and of the processor's cache) for every message, while
/// a short message shrinks by a few dozen bytes, less than the TCP/IP and
/// frame headers around it.
pub const STORE_BELOW: usize = 512;

/// Raw deflate (RFC 1951, no zlib or gzip wrapper) at the default level;
/// a stored block for what is shorter than [`STORE_BELOW`].
pub fn deflate(data: &[u8]) -> Vec<u8> {
    if data.len() < STORE_BELOW {
        return deflate_stored(data);
    }
    let mut c = take(&DEFLATERS).unwrap_or_else(|| build_off_stack(new_compressor));
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    loop {
        let done = c.total_in() as usize;
        // Compressing into memory cannot fail: the only errors are for
        // misuse of the stream.
        let status = c
            .compress_vec(&data[done..], &mut out, FlushCompress::Finish)
            .expect("deflate into memory");
        if status == flate2::Status::StreamEnd {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    c.reset();
    give_back(&DEFLATERS, c);
    out
}

/// Inflates a raw deflate stream of at most `cap` output bytes. A stream
/// that is corrupt, unfinished, followed by extra bytes, or that would
/// inflate past `cap` is refused; no more than `cap + 1` bytes are ever
/// allocated for the output.
pub fn inflate(data: &[u8], cap: usize) -> Result<Vec<u8>, WireError> {
    if let Some(stored) = one_stored_block(data) {
        // What `deflate` makes of a short message: no inflater to ready.
        if stored.len() > cap {
            return Err(WireError::Decompress(format!("inflates past {cap} bytes")));
        }
        return Ok(stored.to_vec());
    }
    let mut d = take(&INFLATERS).unwrap_or_else(|| build_off_stack(new_decompressor));
    let result = inflate_with(&mut d, data, cap);
    if super::secret::WipeScope::is_open() {
        // The inflater's window now holds what may be a password; dropped
        // inside the scope, its memory is zeroed (never pooled).
        drop(d);
    } else {
        d.reset(false);
        give_back(&INFLATERS, d);
    }
    result
}

/// The contents of `data` if it is exactly one final stored block (as
/// `deflate_stored` writes it); anything else is for the inflater.
fn one_stored_block(data: &[u8]) -> Option<&[u8]> {
    let (&[first, l0, l1, n0, n1], rest) = data.split_first_chunk::<5>()?;
    let len = u16::from_le_bytes([l0, l1]);
    (first == 0x01 && u16::from_le_bytes([n0, n1]) == !len && rest.len() == usize::from(len))
        .then_some(rest)
}

fn inflate_with(d: &mut Decompress, data: &[u8], cap: usize) -> Result<Vec<u8>, WireError> {
    let limit = cap.saturating_add(1);
    let mut out = Vec::with_capacity(limit.min(data.len().saturating_mul(4).max(256)));
    loop {
        let (in_before, out_before) = (d.total_in(), d.total_out());
        let consumed = in_before as usize;
        let status = d
            // `Finish` would demand that all output fit the first buffer;
            // `None` lets the output grow in steps.
            .decompress_vec(&data[consumed..], &mut out, FlushDecompress::None)
            .map_err(|e| WireError::Decompress(e.to_string()))?;
        if out.len() > cap {
            return Err(WireError::Decompress(format!("inflates past {cap} bytes")));
        }
        if status == flate2::Status::StreamEnd {
            break;
        }
        if out.len() == out.capacity() {
            // Room is what stopped it: grow, never past `cap + 1`.
            let room = out.capacity().max(256).min(limit - out.len());
            out.reserve_exact(room);
        } else if d.total_in() == in_before && d.total_out() == out_before {
            return Err(WireError::Decompress(
                "the deflate stream is unfinished".into(),
            ));
        }
    }
    if d.total_in() != data.len() as u64 {
        return Err(WireError::Decompress(format!(
            "{} bytes after the end of the deflate stream",
            data.len() as u64 - d.total_in()
        )));
    }
    Ok(out)
}

/// `N` bytes from the kernel's random generator (getrandom(2)).
///
/// Not OpenSSL's: OpenSSL gives every thread that draws from it a
/// generator of its own, about 3 KiB kept for the thread's life, and the
/// threads that draw here (a device connection's, during its handshake and
/// sign-in) serve that connection for hours.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], WireError> {
    let mut out = [0u8; N];
    fill_random(&mut out).map_err(|e| WireError::Crypto(format!("no random bytes: {e}")))?;
    Ok(out)
}

/// Fills `buf` from getrandom(2), blocking until the kernel's generator is
/// seeded (only ever at early boot).
pub fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is valid for writes of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        crate::hex::decode(s).unwrap()
    }

    #[test]
    fn hkdf_matches_rfc5869_case_1() {
        let ikm = [0x0b; 22];
        let salt = hex("000102030405060708090a0b0c");
        let info = hex("f0f1f2f3f4f5f6f7f8f9");
        let mut okm = [0u8; 42];
        hkdf_sha256(&salt, &ikm, &info, &mut okm).unwrap();
        assert_eq!(
            okm.to_vec(),
            hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
        );
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?").unwrap();
        assert_eq!(
            mac.to_vec(),
            hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
    }

    #[test]
    fn hkdf_matches_rfc5869_case_2_and_3() {
        // Case 2: long inputs, output over two blocks.
        let ikm: Vec<u8> = (0x00..=0x4f).collect();
        let salt: Vec<u8> = (0x60..=0xaf).collect();
        let info: Vec<u8> = (0xb0..=0xff).collect();
        let mut okm = [0u8; 82];
        hkdf_sha256(&salt, &ikm, &info, &mut okm).unwrap();
        assert_eq!(
            okm.to_vec(),
            hex(
                "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c\
                 59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71\
                 cc30c58179ec3e87c14c01d5c1f3434f1d87"
            )
        );
        // Case 3: no salt, no info.
        let mut okm = [0u8; 42];
        hkdf_sha256(&[], &[0x0b; 22], &[], &mut okm).unwrap();
        assert_eq!(
            okm.to_vec(),
            hex("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8")
        );
        let mut too_long = vec![0u8; 255 * 32 + 1];
        assert!(hkdf_sha256(&[], &[1], &[], &mut too_long).is_err());
    }

    #[test]
    fn hmac_matches_rfc4231_case_6_key_longer_than_a_block() {
        let mac = hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        )
        .unwrap();
        assert_eq!(
            mac.to_vec(),
            hex("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
        );
    }

    #[test]
    fn keys_differ_per_direction_pin_and_random() {
        let k = [7u8; 32];
        let a = derive_keys(&k, 1, &[1; 32], &[2; 32]).unwrap();
        assert_ne!(a.device_to_service, a.service_to_device);
        assert_ne!(a.confirm, a.device_to_service);
        let b = derive_keys(&k, 2, &[1; 32], &[2; 32]).unwrap();
        assert_ne!(a.device_to_service, b.device_to_service);
        let c = derive_keys(&k, 1, &[1; 32], &[3; 32]).unwrap();
        assert_ne!(a.device_to_service, c.device_to_service);
        assert_ne!(
            a.service_confirmation().unwrap(),
            a.device_confirmation().unwrap()
        );
    }

    #[test]
    fn seal_open_and_tamper() {
        let key = [9u8; 32];
        let header = [1u8; 16];
        let body = seal(&key, Direction::DeviceToService, &header, 5, b"hello").unwrap();
        assert_eq!(body.len(), 5 + TAG_LEN);
        assert_eq!(
            open(&key, Direction::DeviceToService, &header, 5, &body).unwrap(),
            b"hello"
        );
        assert!(open(&key, Direction::ServiceToDevice, &header, 5, &body).is_err());
        assert!(open(&key, Direction::DeviceToService, &header, 6, &body).is_err());
        let mut h2 = header;
        h2[3] ^= 1;
        assert!(open(&key, Direction::DeviceToService, &h2, 5, &body).is_err());
        for i in 0..body.len() {
            let mut b = body.clone();
            b[i] ^= 0x40;
            assert!(matches!(
                open(&key, Direction::DeviceToService, &header, 5, &b),
                Err(WireError::Decrypt)
            ));
        }
    }

    #[test]
    fn pooled_streams_are_reset_between_uses() {
        // Same input, same bytes, whether the compressor is fresh or reused.
        let text = b"<message>hello hello</message>".repeat(40);
        assert_eq!(deflate(&text), deflate(&text));
        // A failed inflate leaves no state behind for the next one.
        let z = deflate(&text);
        assert!(inflate(&z[..z.len() / 2], 1 << 20).is_err());
        assert!(inflate(&z, 10).is_err());
        assert_eq!(inflate(&z, text.len()).unwrap(), text);
        // Output larger than the first buffer grows in steps, up to the cap.
        let big: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        assert_eq!(inflate(&deflate(&big), big.len()).unwrap(), big);
        assert!(inflate(&deflate(&big), big.len() - 1).is_err());
    }

    #[test]
    fn short_messages_go_stored_and_inflate_like_the_rest() {
        for n in [0, 1, 100, STORE_BELOW - 1] {
            let text: Vec<u8> = (0..n).map(|i| b"<a>hello</a>"[i % 12]).collect();
            let z = deflate(&text);
            assert_eq!(z.len(), text.len() + 5, "stored: {n} bytes");
            assert_eq!(inflate(&z, text.len()).unwrap(), text);
            // What any raw-deflate decoder reads (flate2's own reader).
            let mut back = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::DeflateDecoder::new(&z[..]), &mut back)
                .unwrap();
            assert_eq!(back, text);
        }
        // Stored blocks that are not exactly one whole final block go to
        // the inflater, which judges them.
        let z = deflate(b"hello");
        assert!(inflate(&z[..z.len() - 1], 100).is_err(), "cut short");
        assert!(inflate(&[&z[..], b"x"].concat(), 100).is_err(), "trailing");
        let mut bad_nlen = z.clone();
        bad_nlen[3] ^= 1;
        assert!(inflate(&bad_nlen, 100).is_err());
        assert!(inflate(&z, 4).is_err(), "over the cap");
        let long = b"<message>hello</message>".repeat(40);
        assert!(
            deflate(&long).len() < long.len() / 4,
            "longer ones compress"
        );
    }

    #[test]
    fn inflate_is_capped_and_strict() {
        let text = b"hello hello hello hello".repeat(50);
        let z = deflate(&text);
        assert_eq!(inflate(&z, text.len()).unwrap(), text);
        assert!(matches!(
            inflate(&z, text.len() - 1),
            Err(WireError::Decompress(_))
        ));
        let mut trailing = z.clone();
        trailing.push(0);
        assert!(matches!(
            inflate(&trailing, 1 << 20),
            Err(WireError::Decompress(_))
        ));
        assert!(matches!(
            inflate(&z[..z.len() - 1], 1 << 20),
            Err(WireError::Decompress(_))
        ));
        // A bomb: 8 MiB of zeros deflates to about 8 KiB; the cap stops it.
        let bomb = deflate(&vec![0u8; 8 << 20]);
        assert!(bomb.len() < 16 << 10);
        assert!(matches!(
            inflate(&bomb, 1 << 20),
            Err(WireError::Decompress(_))
        ));
        assert_eq!(inflate(&deflate(b""), 10).unwrap(), b"");
    }
}
