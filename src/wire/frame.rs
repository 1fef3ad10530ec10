//! The frame codec: the length prefix, the 16-byte clear header that the
//! dispatcher routes on, the per-type body rules and the hard size limit.
//! Nothing here knows keys; encryption lives in [`super::channel`].
//!
//! On the stream every frame is `u32 BE length` of what follows (header plus
//! body), then the header: `version u8 (=1)`, `type u8`, `flags u16 BE (=0)`,
//! `PIN u32 BE`, `sequence u64 BE`, then the body.

use std::io::{self, Read, Write};

use super::status::Status;
use super::WireError;

/// The only protocol version this code speaks.
pub const VERSION: u8 = 1;
/// Size of the clear header.
pub const HEADER_LEN: usize = 16;
/// The largest value the length field may hold (header plus body).
pub const MAX_FRAME_LEN: usize = 65_536;
/// Size of the handshake randoms.
pub const RANDOM_LEN: usize = 32;
/// Size of a key-confirmation value (HMAC-SHA256).
pub const CONFIRM_LEN: usize = 32;
/// Size of the AES-GCM tag at the end of every `Data` body.
pub const TAG_LEN: usize = 16;
/// The longest text a `Refused` frame may carry.
pub const MAX_REFUSED_TEXT: usize = 1024;

/// What a frame is. The numbers are the `type` byte on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// 1, device to service, clear: the device's 32-byte random.
    Hello,
    /// 2, service to device, clear: the service's 32-byte random and its
    /// 32-byte key confirmation.
    Challenge,
    /// 3, device to service, clear: the device's 32-byte key confirmation.
    Confirm,
    /// 4, either direction: AES-256-GCM ciphertext of a deflated message,
    /// then the 16-byte tag.
    Data,
    /// 5, service or dispatcher to device, clear: `u16 BE` status code and
    /// UTF-8 text. Ends the connection.
    Refused,
}

impl FrameType {
    /// The wire value.
    pub fn code(self) -> u8 {
        match self {
            FrameType::Hello => 1,
            FrameType::Challenge => 2,
            FrameType::Confirm => 3,
            FrameType::Data => 4,
            FrameType::Refused => 5,
        }
    }

    /// The type for a wire value.
    pub fn from_code(code: u8) -> Option<FrameType> {
        match code {
            1 => Some(FrameType::Hello),
            2 => Some(FrameType::Challenge),
            3 => Some(FrameType::Confirm),
            4 => Some(FrameType::Data),
            5 => Some(FrameType::Refused),
            _ => None,
        }
    }
}

/// The clear header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the frame is.
    pub frame_type: FrameType,
    /// The device's PIN (printed as 8 hex digits).
    pub pin: u32,
    /// 0 for clear frames; 1, 2, 3, ... per direction for `Data` frames.
    pub seq: u64,
}

impl Header {
    /// A header for `frame_type` from device `pin` with sequence `seq`.
    pub fn new(frame_type: FrameType, pin: u32, seq: u64) -> Header {
        Header {
            frame_type,
            pin,
            seq,
        }
    }

    /// Parses the 16 header bytes: version must be 1, flags 0, type known.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Header, WireError> {
        if bytes[0] != VERSION {
            return Err(WireError::BadFrame(format!(
                "unsupported protocol version {}",
                bytes[0]
            )));
        }
        let frame_type = FrameType::from_code(bytes[1])
            .ok_or_else(|| WireError::BadFrame(format!("unknown frame type {}", bytes[1])))?;
        let flags = u16::from_be_bytes([bytes[2], bytes[3]]);
        if flags != 0 {
            return Err(WireError::BadFrame(format!(
                "reserved flags set ({flags:#06x})"
            )));
        }
        let pin = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(&bytes[8..16]);
        Ok(Header {
            frame_type,
            pin,
            seq: u64::from_be_bytes(seq_bytes),
        })
    }

    /// The 16 header bytes (also the associated data of a `Data` frame).
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = VERSION;
        out[1] = self.frame_type.code();
        // out[2..4]: flags, always 0 in version 1.
        out[4..8].copy_from_slice(&self.pin.to_be_bytes());
        out[8..16].copy_from_slice(&self.seq.to_be_bytes());
        out
    }
}

/// One frame: header and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The clear header.
    pub header: Header,
    /// The body (clear or encrypted, depending on the type).
    pub body: Vec<u8>,
}

impl Frame {
    /// A frame from its parts (not yet checked; [`Frame::check`] does that).
    pub fn new(header: Header, body: Vec<u8>) -> Frame {
        Frame { header, body }
    }

    /// A clear `Refused` frame for `pin` with `status` and `text` (cut to
    /// [`MAX_REFUSED_TEXT`] bytes on a character boundary).
    pub fn refused(pin: u32, status: Status, text: &str) -> Frame {
        let mut cut = text.len().min(MAX_REFUSED_TEXT);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut body = Vec::with_capacity(2 + cut);
        body.extend_from_slice(&status.code().to_be_bytes());
        body.extend_from_slice(&text.as_bytes()[..cut]);
        Frame::new(Header::new(FrameType::Refused, pin, 0), body)
    }

    /// The status and text of a `Refused` frame. An unknown code becomes
    /// [`Status::Failed`] with the code in the text.
    pub fn refusal(&self) -> Result<(Status, String), WireError> {
        if self.header.frame_type != FrameType::Refused {
            return Err(WireError::BadFrame("not a Refused frame".into()));
        }
        self.check()?;
        let code = u16::from_be_bytes([self.body[0], self.body[1]]);
        let text = String::from_utf8_lossy(&self.body[2..]).into_owned();
        Ok(match Status::from_code(code) {
            Some(status) => (status, text),
            None => (Status::Failed, format!("status {code}: {text}")),
        })
    }

    /// Checks the body size and sequence rules of the frame's type.
    pub fn check(&self) -> Result<(), WireError> {
        let h = &self.header;
        let len = self.body.len();
        let clear = |want: usize, name: &str| -> Result<(), WireError> {
            if h.seq != 0 {
                return Err(WireError::BadFrame(format!(
                    "{name} frame with sequence {} (must be 0)",
                    h.seq
                )));
            }
            if len != want {
                return Err(WireError::BadFrame(format!(
                    "{name} body of {len} bytes (must be {want})"
                )));
            }
            Ok(())
        };
        match h.frame_type {
            FrameType::Hello => clear(RANDOM_LEN, "Hello"),
            FrameType::Challenge => clear(RANDOM_LEN + CONFIRM_LEN, "Challenge"),
            FrameType::Confirm => clear(CONFIRM_LEN, "Confirm"),
            FrameType::Data => {
                if h.seq == 0 {
                    return Err(WireError::BadFrame("Data frame with sequence 0".into()));
                }
                if len < TAG_LEN {
                    return Err(WireError::BadFrame(format!(
                        "Data body of {len} bytes (shorter than the tag)"
                    )));
                }
                Ok(())
            }
            FrameType::Refused => {
                if h.seq != 0 {
                    return Err(WireError::BadFrame("Refused frame with a sequence".into()));
                }
                if !(2..=2 + MAX_REFUSED_TEXT).contains(&len) {
                    return Err(WireError::BadFrame(format!("Refused body of {len} bytes")));
                }
                if std::str::from_utf8(&self.body[2..]).is_err() {
                    return Err(WireError::BadFrame("Refused text is not UTF-8".into()));
                }
                Ok(())
            }
        }
    }

    /// The frame as it goes on the stream: length prefix, header, body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let len = HEADER_LEN + self.body.len();
        let mut out = Vec::with_capacity(4 + len);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend_from_slice(&self.header.to_bytes());
        out.extend_from_slice(&self.body);
        out
    }
}

/// Writes `frame` in one `write_all` and flushes. Refuses frames over
/// [`MAX_FRAME_LEN`] or breaking their type's rules.
pub fn write_frame(w: &mut impl Write, frame: &Frame) -> Result<(), WireError> {
    let len = HEADER_LEN + frame.body.len();
    if len > MAX_FRAME_LEN {
        return Err(WireError::TooLarge {
            len,
            limit: MAX_FRAME_LEN,
        });
    }
    frame.check()?;
    w.write_all(&frame.to_bytes()).map_err(WireError::Io)?;
    w.flush().map_err(WireError::Io)
}

/// Reads one frame of at most `max` bytes (length field value, capped at
/// [`MAX_FRAME_LEN`]) and checks it.
///
/// A timeout inside a frame loses the bytes already read, so after
/// [`WireError::Timeout`] the stream must be dropped; use a [`FrameReader`]
/// where reads must be resumable.
pub fn read_frame(r: &mut impl Read, max: usize) -> Result<Frame, WireError> {
    FrameReader::new(max).read(r)
}

/// A frame reader that survives read timeouts: the bytes of a partly read
/// frame are kept, and the next call continues where the last stopped.
/// It never reads past the end of the current frame and never allocates more
/// than the limit.
#[derive(Debug)]
pub struct FrameReader {
    max: usize,
    buf: Vec<u8>,
    /// The PIN field of the last frame whose header was read whole.
    pin_read: Option<u32>,
}

impl FrameReader {
    /// A reader that accepts length fields up to `max` (capped at
    /// [`MAX_FRAME_LEN`]).
    pub fn new(max: usize) -> FrameReader {
        FrameReader {
            max: max.min(MAX_FRAME_LEN),
            buf: Vec::new(),
            pin_read: None,
        }
    }

    /// Whether bytes of a frame not yet complete are held (read before a
    /// timeout).
    pub fn has_partial_frame(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The PIN field of the last frame whose 16-byte header was read whole,
    /// even if that frame was then refused as malformed.
    pub fn pin_read(&self) -> Option<u32> {
        self.pin_read
    }

    /// True when part of a frame has been read.
    pub fn in_frame(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Reads the next frame.
    pub fn read(&mut self, r: &mut impl Read) -> Result<Frame, WireError> {
        self.fill(r, 4)?;
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > self.max {
            return Err(WireError::TooLarge {
                len,
                limit: self.max,
            });
        }
        if len < HEADER_LEN {
            return Err(WireError::BadFrame(format!(
                "length {len} is shorter than the header"
            )));
        }
        // The header first: a frame refused for what follows still has a
        // PIN to echo in the Refused frame (collab-protocol(7)).
        self.fill(r, 4 + HEADER_LEN)?;
        self.pin_read = Some(u32::from_be_bytes([
            self.buf[8],
            self.buf[9],
            self.buf[10],
            self.buf[11],
        ]));
        self.fill(r, 4 + len)?;
        let mut header_bytes = [0u8; HEADER_LEN];
        header_bytes.copy_from_slice(&self.buf[4..4 + HEADER_LEN]);
        let body = self.buf[4 + HEADER_LEN..].to_vec();
        self.buf.clear();
        let frame = Frame::new(Header::parse(&header_bytes)?, body);
        frame.check()?;
        Ok(frame)
    }

    /// Reads until `buf` holds `want` bytes, never more.
    fn fill(&mut self, r: &mut impl Read, want: usize) -> Result<(), WireError> {
        // Read straight into the buffer: a copy through a chunk on the
        // stack would leave its pages resident on every thread that waits
        // here for hours (a device link's).
        let mut have = self.buf.len();
        if have >= want {
            return Ok(());
        }
        self.buf.resize(want, 0);
        while have < want {
            match r.read(&mut self.buf[have..want]) {
                Ok(0) => {
                    self.buf.truncate(have);
                    return Err(if have == 0 {
                        WireError::Closed
                    } else {
                        WireError::Truncated
                    });
                }
                Ok(got) => have += got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(have);
                    return Err(WireError::from_read(e));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_frame(seq: u64, body_len: usize) -> Frame {
        Frame::new(
            Header::new(FrameType::Data, 0x2a00_b1c3, seq),
            vec![0xa5; body_len],
        )
    }

    #[test]
    fn every_frame_type_round_trips() {
        let frames = [
            Frame::new(Header::new(FrameType::Hello, 7, 0), vec![1; 32]),
            Frame::new(Header::new(FrameType::Challenge, 7, 0), vec![2; 64]),
            Frame::new(Header::new(FrameType::Confirm, 7, 0), vec![3; 32]),
            data_frame(1, 16),
            data_frame(u64::MAX, 1000),
            Frame::refused(7, Status::NoInstance, "no instance"),
        ];
        for f in frames {
            let mut out = Vec::new();
            write_frame(&mut out, &f).unwrap();
            assert_eq!(out.len(), 4 + HEADER_LEN + f.body.len());
            let back = read_frame(&mut &out[..], MAX_FRAME_LEN).unwrap();
            assert_eq!(back, f);
        }
        let r = Frame::refused(9, Status::UnknownDevice, "who?");
        assert_eq!(r.refusal().unwrap(), (Status::UnknownDevice, "who?".into()));
    }

    #[test]
    fn header_layout_is_exact() {
        let h = Header::new(FrameType::Data, 0x0102_0304, 0x0a0b_0c0d_0e0f_1011);
        assert_eq!(
            h.to_bytes(),
            [1, 4, 0, 0, 1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11]
        );
        assert_eq!(Header::parse(&h.to_bytes()).unwrap(), h);
    }

    #[test]
    fn bad_headers_are_refused() {
        let good = Header::new(FrameType::Hello, 1, 0).to_bytes();
        let mut v = good;
        v[0] = 2;
        assert!(matches!(Header::parse(&v), Err(WireError::BadFrame(_))));
        let mut t = good;
        t[1] = 9;
        assert!(matches!(Header::parse(&t), Err(WireError::BadFrame(_))));
        let mut fl = good;
        fl[3] = 1;
        assert!(matches!(Header::parse(&fl), Err(WireError::BadFrame(_))));
    }

    #[test]
    fn lengths_are_bounded() {
        // Over the limit: refused before any allocation of the body.
        let mut over = (MAX_FRAME_LEN as u32 + 1).to_be_bytes().to_vec();
        over.extend_from_slice(&[0; 32]);
        assert!(matches!(
            read_frame(&mut &over[..], MAX_FRAME_LEN),
            Err(WireError::TooLarge { .. })
        ));
        let huge = u32::MAX.to_be_bytes();
        assert!(matches!(
            read_frame(&mut &huge[..], MAX_FRAME_LEN),
            Err(WireError::TooLarge { .. })
        ));
        // A caller's smaller limit wins.
        let mut out = Vec::new();
        write_frame(&mut out, &data_frame(1, 100)).unwrap();
        assert!(matches!(
            read_frame(&mut &out[..], 64),
            Err(WireError::TooLarge { .. })
        ));
        // Shorter than a header.
        let short = [0, 0, 0, 15];
        assert!(matches!(
            read_frame(&mut &short[..], MAX_FRAME_LEN),
            Err(WireError::BadFrame(_))
        ));
        // Writing an oversize frame is refused too.
        let big = data_frame(1, MAX_FRAME_LEN);
        assert!(matches!(
            write_frame(&mut Vec::new(), &big),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn truncation_and_close_are_told_apart() {
        let mut out = Vec::new();
        write_frame(&mut out, &data_frame(3, 40)).unwrap();
        assert!(matches!(
            read_frame(&mut &out[..0], MAX_FRAME_LEN),
            Err(WireError::Closed)
        ));
        for cut in 1..out.len() {
            assert!(matches!(
                read_frame(&mut &out[..cut], MAX_FRAME_LEN),
                Err(WireError::Truncated)
            ));
        }
    }

    #[test]
    fn body_rules_per_type() {
        let bad = [
            Frame::new(Header::new(FrameType::Hello, 1, 0), vec![0; 31]),
            Frame::new(Header::new(FrameType::Hello, 1, 5), vec![0; 32]),
            Frame::new(Header::new(FrameType::Challenge, 1, 0), vec![0; 32]),
            Frame::new(Header::new(FrameType::Confirm, 1, 0), vec![0; 33]),
            Frame::new(Header::new(FrameType::Data, 1, 0), vec![0; 40]),
            Frame::new(Header::new(FrameType::Data, 1, 1), vec![0; 15]),
            Frame::new(Header::new(FrameType::Refused, 1, 0), vec![1]),
            Frame::new(Header::new(FrameType::Refused, 1, 0), vec![1, 44, 0xff]),
        ];
        for f in bad {
            assert!(matches!(f.check(), Err(WireError::BadFrame(_))), "{f:?}");
            // And on the read side, from raw bytes.
            let raw = f.to_bytes();
            assert!(matches!(
                read_frame(&mut &raw[..], MAX_FRAME_LEN),
                Err(WireError::BadFrame(_))
            ));
        }
    }

    /// A reader that yields its bytes in small pieces with a timeout
    /// between each piece, like a slow link with a short read timeout.
    struct Dribble {
        data: Vec<u8>,
        pos: usize,
        tick: bool,
    }

    impl Read for Dribble {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            self.tick = !self.tick;
            if self.tick {
                return Err(io::Error::new(io::ErrorKind::WouldBlock, "tick"));
            }
            let n = out.len().min(3).min(self.data.len() - self.pos);
            out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn frame_reader_resumes_after_timeouts() {
        let frames = [data_frame(1, 50), data_frame(2, 17)];
        let mut raw = Vec::new();
        for f in &frames {
            raw.extend(f.to_bytes());
        }
        let mut src = Dribble {
            data: raw,
            pos: 0,
            tick: false,
        };
        let mut reader = FrameReader::new(MAX_FRAME_LEN);
        let mut got = Vec::new();
        let mut timeouts = 0;
        while got.len() < frames.len() {
            match reader.read(&mut src) {
                Ok(f) => got.push(f),
                Err(WireError::Timeout) => timeouts += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, frames);
        assert!(timeouts > 10);
        assert!(matches!(reader.read(&mut src), Err(WireError::Timeout)));
        assert!(matches!(reader.read(&mut src), Err(WireError::Closed)));
    }
}
