//! Hexadecimal, the written form of what people copy by hand: bytes (keys,
//! random names), 256-bit transport keys, and device PINs. One rule each,
//! shared by every program. It imports nothing of the crate.

/// `bytes` as lower-case hex, two digits a byte.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Bytes written as hex digits (either case), two a byte. `None` for an odd
/// count or anything but hex digits.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// A 256-bit key written as exactly 64 hex digits (either case; white space
/// around them is ignored). `None` for anything else.
pub fn parse_key(text: &str) -> Option<[u8; 32]> {
    decode(text.trim())?.try_into().ok()
}

/// A device PIN the way people, logs and the Config DB write it: 8
/// lower-case hex digits.
pub fn format_pin(pin: u32) -> String {
    format!("{pin:08x}")
}

/// A device PIN written as exactly 8 hex digits (either case), the form
/// [`format_pin`] writes and `collabctl` shows. `None` for anything else.
pub fn parse_pin(text: &str) -> Option<u32> {
    if text.len() != 8 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_keys() {
        assert_eq!(encode(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        let text = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF\n";
        let key = parse_key(text).unwrap();
        assert_eq!(key[0], 0x00);
        assert_eq!(key[31], 0xff);
        assert_eq!(encode(&key), text.trim().to_ascii_lowercase());
        assert!(parse_key(&text[..62]).is_none());
        assert!(parse_key(&text.replace('0', "g")).is_none());
        assert!(parse_key("é".repeat(32).as_str()).is_none());
        assert_eq!(decode("0aFf"), Some(vec![0x0a, 0xff]));
        assert_eq!(decode("0aF"), None);
        assert_eq!(decode(""), Some(vec![]));
    }

    #[test]
    fn pins() {
        assert_eq!(format_pin(0x2100_000a), "2100000a");
        assert_eq!(format_pin(1), "00000001");
        assert_eq!(parse_pin("2100000A"), Some(0x2100_000a));
        assert_eq!(parse_pin("00000001"), Some(1));
        for bad in [
            "",
            "1",
            "0x2100000a",
            "2100000",
            "2100000a0",
            "2100000g",
            " 2100000a",
        ] {
            assert_eq!(parse_pin(bad), None, "{bad:?}");
        }
    }
}
