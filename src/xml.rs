//! Small helpers over `xmltree`, shared by the CWA client, the CWA simulator
//! and the device protocol: parsing with a size bound and a clear error,
//! building elements, reading child text and attributes, and serialising
//! without an XML declaration. Escaping is always left to `xmltree`, never
//! done by hand.

use std::fmt;

use xmltree::{Element, EmitterConfig, XMLNode};

/// The CWA 2007 namespace that every request after `logon` must carry.
pub const CWA_NS: &str = "http://schemas.microsoft.com/2006/09/rtc/cwa";

/// Why a document could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XmlError {
    /// The document is larger than the caller's bound.
    TooLarge { limit: usize },
    /// Not well-formed XML (the parser's message).
    Malformed(String),
}

impl fmt::Display for XmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XmlError::TooLarge { limit } => write!(f, "XML document larger than {limit} bytes"),
            XmlError::Malformed(why) => write!(f, "malformed XML: {why}"),
        }
    }
}

impl std::error::Error for XmlError {}

/// Parses `bytes` as one XML document of at most `limit` bytes.
pub fn parse(bytes: &[u8], limit: usize) -> Result<Element, XmlError> {
    if bytes.len() > limit {
        return Err(XmlError::TooLarge { limit });
    }
    Element::parse(bytes).map_err(|e| XmlError::Malformed(e.to_string()))
}

/// Serialises `element` without an XML declaration and without indentation.
pub fn to_string(element: &Element) -> String {
    let mut out = Vec::new();
    let config = EmitterConfig::new()
        .write_document_declaration(false)
        .perform_indent(false);
    // Writing to a Vec cannot fail for I/O reasons, and an Element built by
    // xmltree is always serialisable.
    element
        .write_with_config(&mut out, config)
        .expect("serialising an xmltree Element into memory");
    String::from_utf8(out).expect("xmltree emits UTF-8")
}

/// A new element `name` with the given attributes.
pub fn elem(name: &str, attrs: &[(&str, &str)]) -> Element {
    let mut e = Element::new(name);
    for (k, v) in attrs {
        e.attributes.insert((*k).to_string(), (*v).to_string());
    }
    e
}

/// A new element `name` holding `text` (escaped on output).
pub fn text_elem(name: &str, text: &str) -> Element {
    let mut e = Element::new(name);
    e.children.push(XMLNode::Text(text.to_string()));
    e
}

/// Appends `child` to `parent` and returns `parent`, for building trees.
pub fn with_child(mut parent: Element, child: Element) -> Element {
    parent.children.push(XMLNode::Element(child));
    parent
}

/// The child elements of `e`, in document order.
pub fn children(e: &Element) -> impl Iterator<Item = &Element> {
    e.children.iter().filter_map(|n| n.as_element())
}

/// The text of the first child element called `name`, if any.
pub fn child_text(e: &Element, name: &str) -> Option<String> {
    e.get_child(name)
        .map(|c| c.get_text().map(|t| t.into_owned()).unwrap_or_default())
}

/// The text content of `e` itself (empty when it has none).
pub fn text(e: &Element) -> String {
    e.get_text().map(|t| t.into_owned()).unwrap_or_default()
}

/// The attribute `name` of `e`, if present.
pub fn attr<'a>(e: &'a Element, name: &str) -> Option<&'a str> {
    e.attributes.get(name).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_round_trips() {
        let doc = with_child(
            elem("message", &[("to", "sip:a&b@x")]),
            text_elem("content", "<hi> & \"bye\""),
        );
        let s = to_string(&doc);
        assert!(!s.contains("<hi>"), "{s}");
        let back = parse(s.as_bytes(), 1024).unwrap();
        assert_eq!(attr(&back, "to"), Some("sip:a&b@x"));
        assert_eq!(
            child_text(&back, "content").as_deref(),
            Some("<hi> & \"bye\"")
        );
    }

    #[test]
    fn oversize_and_malformed_are_refused() {
        assert_eq!(parse(b"<a/>", 3), Err(XmlError::TooLarge { limit: 3 }));
        assert!(matches!(
            parse(b"<a><b></a>", 100),
            Err(XmlError::Malformed(_))
        ));
    }
}
