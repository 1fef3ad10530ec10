//! Bounded parsing of documents that come from CWA: a size bound (from
//! [`crate::xml::parse`]) plus bounds on nesting depth and element count,
//! checked by a small scanner before the tree is built. `xmltree` builds
//! the tree recursively, so a megabyte of `<a><a><a>…` from a hostile or
//! broken server would otherwise overflow a session thread's small stack.

use xmltree::Element;

use crate::xml;

/// The deepest nesting accepted. Real CWA documents (`userPresence` with
/// calendar data) nest about 12 deep.
pub(crate) const MAX_DEPTH: usize = 64;
/// The most elements accepted in one document.
pub(crate) const MAX_ELEMENTS: usize = 50_000;

/// Parses `bytes` as one CWA document of at most `limit` bytes, refusing
/// documents nested deeper than [`MAX_DEPTH`] or holding more than
/// [`MAX_ELEMENTS`] elements. The error is a human-readable reason.
pub(crate) fn parse(bytes: &[u8], limit: usize) -> Result<Element, String> {
    if bytes.len() > limit {
        return Err(format!("body larger than {limit} bytes"));
    }
    check_shape(bytes, MAX_DEPTH, MAX_ELEMENTS)?;
    xml::parse(bytes, limit).map_err(|e| e.to_string())
}

/// Scans markup just well enough to count open elements: tags, quoted
/// attribute values (which may hold `>` and `/>`), comments, CDATA,
/// processing instructions and declarations. It over-counts rather than
/// under-counts when the input is not well-formed; the real parser then
/// gives the precise error.
fn check_shape(bytes: &[u8], max_depth: usize, max_elements: usize) -> Result<(), String> {
    let mut depth = 0usize;
    let mut elements = 0usize;
    let mut i = 0usize;
    let n = bytes.len();
    while i < n {
        if bytes[i] != b'<' {
            i += 1;
            continue;
        }
        let rest = &bytes[i..];
        if rest.starts_with(b"<!--") {
            i = skip_past(bytes, i + 4, b"-->");
        } else if rest.starts_with(b"<![CDATA[") {
            i = skip_past(bytes, i + 9, b"]]>");
        } else if rest.starts_with(b"<?") {
            i = skip_past(bytes, i + 2, b"?>");
        } else if rest.starts_with(b"<!") {
            i = skip_past(bytes, i + 2, b">");
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            i = skip_past(bytes, i + 2, b">");
        } else {
            // An opening (or empty-element) tag: walk to its '>' outside
            // quotes.
            elements += 1;
            depth += 1;
            if depth > max_depth {
                return Err(format!("XML nested deeper than {max_depth} elements"));
            }
            if elements > max_elements {
                return Err(format!("XML has more than {max_elements} elements"));
            }
            let mut j = i + 1;
            let mut quote: Option<u8> = None;
            let mut prev = 0u8;
            while j < n {
                let c = bytes[j];
                match quote {
                    Some(q) if c == q => quote = None,
                    Some(_) => {}
                    None if c == b'"' || c == b'\'' => quote = Some(c),
                    None if c == b'>' => break,
                    None => {}
                }
                prev = c;
                j += 1;
            }
            if prev == b'/' && j < n {
                depth -= 1;
            }
            i = j + 1;
        }
    }
    Ok(())
}

/// The index just past the first `end` at or after `from`, or the end of
/// input.
fn skip_past(bytes: &[u8], from: usize, end: &[u8]) -> usize {
    if from >= bytes.len() {
        return bytes.len();
    }
    bytes[from..]
        .windows(end.len())
        .position(|w| w == end)
        .map(|p| from + p + end.len())
        .unwrap_or(bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_documents_pass() {
        let doc = br#"<?xml version="1.0"?><!-- c --><cwaEvents ackId="2"><a x="1/>2>"><b/><![CDATA[<<<]]></a><c/></cwaEvents>"#;
        assert!(parse(doc, 1 << 20).is_ok());
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let mut doc = Vec::new();
        for _ in 0..100_000 {
            doc.extend_from_slice(b"<a>");
        }
        let err = parse(&doc, 1 << 20).unwrap_err();
        assert!(err.contains("nested deeper"), "{err}");
    }

    #[test]
    fn quoted_empty_tag_markers_do_not_hide_depth() {
        let mut doc = Vec::new();
        for _ in 0..(MAX_DEPTH + 1) {
            doc.extend_from_slice(b"<a v='/>'>");
        }
        assert!(parse(&doc, 1 << 20).unwrap_err().contains("nested"));
    }

    #[test]
    fn too_many_elements_and_oversize_are_refused() {
        let doc = b"<r>"
            .iter()
            .chain(b"<e/>".repeat(MAX_ELEMENTS + 1).iter())
            .chain(b"</r>".iter())
            .copied()
            .collect::<Vec<u8>>();
        assert!(parse(&doc, 1 << 20).unwrap_err().contains("more than"));
        assert!(parse(b"<a/>", 2).unwrap_err().contains("larger"));
    }

    #[test]
    fn malformed_xml_is_an_error_not_a_panic() {
        assert!(parse(b"<a><b></a>", 100).is_err());
        assert!(parse(b"", 100).is_err());
        assert!(parse(b"\xff\xfe<", 100).is_err());
    }
}
