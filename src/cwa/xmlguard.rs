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
    let shape = xml::Shape {
        max_depth: MAX_DEPTH,
        max_elements: MAX_ELEMENTS,
        allow_declarations: true,
    };
    xml::parse_shaped(bytes, limit, &shape).map_err(|e| match e {
        xml::XmlError::TooLarge { limit } => format!("body larger than {limit} bytes"),
        other => other.to_string(),
    })
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
