//! A command line read one word at a time, the same way in every program:
//! `--name value` or `--name=value` for an option with a value, a bare
//! `--name` (or `-x`) for a switch, anything else a word of its own. The
//! programs keep their own options, defaults and messages; this owns only
//! the reading.

/// The words of a command line (without the program name).
#[derive(Debug)]
pub struct Args<I> {
    words: I,
    /// The `value` of a `--name=value` just read, until taken.
    inline: Option<String>,
}

impl<I: Iterator<Item = String>> Args<I> {
    /// Reads `words`.
    pub fn new(words: impl IntoIterator<Item = String, IntoIter = I>) -> Args<I> {
        Args {
            words: words.into_iter(),
            inline: None,
        }
    }

    /// The next word. For `--name=value` it is `--name`, and the value is
    /// kept for [`Args::value`]; a value left untaken is dropped here.
    pub fn next_word(&mut self) -> Option<String> {
        self.inline = None;
        let word = self.words.next()?;
        match word.split_once('=') {
            Some((name, value)) if name.starts_with("--") => {
                self.inline = Some(value.to_string());
                Some(name.to_string())
            }
            _ => Some(word),
        }
    }

    /// The value of the option just read: what followed its `=`, else the
    /// next word. `None`: the command line ended.
    pub fn value(&mut self) -> Option<String> {
        self.inline.take().or_else(|| self.words.next())
    }

    /// Whether the option just read came as `--name=value` (a switch takes
    /// no value).
    pub fn has_inline_value(&self) -> bool {
        self.inline.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Args<std::vec::IntoIter<String>> {
        Args::new(
            line.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn options_switches_and_words() {
        let mut a = args("--dir /x --listen=:0 --keep -h word --a=b=c --empty=");
        assert_eq!(a.next_word().as_deref(), Some("--dir"));
        assert!(!a.has_inline_value());
        assert_eq!(a.value().as_deref(), Some("/x"));
        assert_eq!(a.next_word().as_deref(), Some("--listen"));
        assert!(a.has_inline_value());
        assert_eq!(a.value().as_deref(), Some(":0"));
        assert_eq!(a.next_word().as_deref(), Some("--keep"));
        assert!(!a.has_inline_value());
        assert_eq!(a.next_word().as_deref(), Some("-h"));
        assert_eq!(a.next_word().as_deref(), Some("word"));
        assert_eq!(a.next_word().as_deref(), Some("--a"));
        assert_eq!(a.value().as_deref(), Some("b=c"));
        assert_eq!(a.next_word().as_deref(), Some("--empty"));
        assert_eq!(a.value().as_deref(), Some(""));
        assert_eq!(a.next_word(), None);
        assert_eq!(a.value(), None);
    }

    #[test]
    fn an_untaken_inline_value_is_not_a_word() {
        let mut a = args("--keep=yes next");
        assert_eq!(a.next_word().as_deref(), Some("--keep"));
        assert!(a.has_inline_value());
        assert_eq!(a.next_word().as_deref(), Some("next"));
        assert!(!a.has_inline_value());
    }
}
