//! A CWA connection's own input and output buffers, as ureq's transport
//! `Buffers`: allocated when used, grown as a response head needs, and
//! given back whole ([`ConnectionBuffers::release`]) while the connection
//! waits on a held GET or sits in the pool, so that an idle session keeps
//! none of them.

use ureq::unversioned::transport::Buffers;

/// The input buffer's first size: a CWA response head is a few hundred
/// bytes, and zeroing the full buffer for every response cost more than
/// growing it the rare time a head is longer.
const INITIAL_INPUT: usize = 4 * 1024;

/// The scratch space ureq wants for copying a request body (its own
/// buffers' minimum).
const MIN_BODY_SCRATCH: usize = 10 * 1024;

/// A connection's input and output buffers, allocated when used and given
/// back by [`ConnectionBuffers::release`] when nothing is left unread.
#[derive(Debug)]
pub(super) struct ConnectionBuffers {
    input_size: usize,
    output_size: usize,
    input: Vec<u8>,
    /// `input[consumed..filled]` is read but not yet consumed.
    filled: usize,
    consumed: usize,
    output: Vec<u8>,
    /// Whether the last consume took anything (ureq's progress rule).
    progress: bool,
}

impl ConnectionBuffers {
    pub(super) fn new(input_size: usize, output_size: usize) -> ConnectionBuffers {
        ConnectionBuffers {
            input_size: input_size.max(1),
            output_size: output_size.max(1),
            input: Vec::new(),
            filled: 0,
            consumed: 0,
            output: Vec::new(),
            progress: false,
        }
    }

    fn allocate(&mut self) {
        if self.output.len() < self.output_size {
            self.output.resize(self.output_size, 0);
        }
        let first = INITIAL_INPUT.min(self.input_size);
        if self.input.len() < first {
            self.input.resize(first, 0);
        }
    }

    /// Doubles the input buffer, up to its configured size, when it is
    /// full (a response head longer than the first size).
    fn grow_input_if_full(&mut self) {
        if self.filled == self.input.len() && self.input.len() < self.input_size {
            let size = (self.input.len() * 2).clamp(1, self.input_size);
            self.input.resize(size, 0);
        }
    }

    /// Moves unconsumed input to the front when that frees useful space.
    fn compact(&mut self) {
        if self.consumed == 0 {
            return;
        }
        if self.consumed == self.filled {
            self.consumed = 0;
            self.filled = 0;
        } else if self.filled > self.input.len() / 2 {
            self.input.copy_within(self.consumed..self.filled, 0);
            self.filled -= self.consumed;
            self.consumed = 0;
        }
    }

    /// The first `amount` bytes of the output buffer: what ureq wrote
    /// there to send.
    pub(super) fn written(&self, amount: usize) -> &[u8] {
        &self.output[..amount]
    }

    /// Frees both buffers if no input is waiting to be consumed.
    pub(super) fn release(&mut self) {
        if self.consumed == self.filled {
            self.input = Vec::new();
            self.output = Vec::new();
            self.filled = 0;
            self.consumed = 0;
        }
    }
}

impl Buffers for ConnectionBuffers {
    fn output(&mut self) -> &mut [u8] {
        self.allocate();
        &mut self.output
    }

    fn input(&self) -> &[u8] {
        &self.input[self.consumed..self.filled]
    }

    fn input_append_buf(&mut self) -> &mut [u8] {
        self.allocate();
        self.compact();
        self.grow_input_if_full();
        &mut self.input[self.filled..]
    }

    fn input_appended(&mut self, amount: usize) {
        self.filled = (self.filled + amount).min(self.input.len());
    }

    fn input_consume(&mut self, amount: usize) {
        self.progress = amount > 0;
        self.consumed = (self.consumed + amount).min(self.filled);
    }

    fn tmp_and_output(&mut self) -> (&mut [u8], &mut [u8]) {
        self.allocate();
        self.compact();
        let free = self.input.len() - self.filled;
        if free < MIN_BODY_SCRATCH {
            self.input.resize(self.filled + MIN_BODY_SCRATCH, 0);
        }
        (&mut self.input[self.filled..], &mut self.output)
    }

    fn can_use_input(&self) -> bool {
        self.filled > self.consumed && self.progress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_given_back_only_when_all_input_is_consumed() {
        let mut b = ConnectionBuffers::new(64, 32);
        assert!(b.input().is_empty());
        let space = b.input_append_buf();
        assert_eq!(space.len(), 64);
        space[..5].copy_from_slice(b"hello");
        b.input_appended(5);
        b.input_consume(2);
        assert_eq!(b.input(), b"llo");
        assert!(b.can_use_input());
        b.release();
        assert_eq!(b.input(), b"llo", "unconsumed input survives a release");
        b.input_consume(3);
        b.release();
        assert_eq!((b.input.capacity(), b.output.capacity()), (0, 0));
        assert_eq!(b.output().len(), 32, "reallocated on use");
        let (tmp, out) = b.tmp_and_output();
        assert!(tmp.len() >= MIN_BODY_SCRATCH && out.len() == 32);
    }
}
