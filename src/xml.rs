//! Small helpers over `xmltree`, shared by the CWA client, the CWA simulator
//! and the device protocol: parsing with a size bound and a clear error, a
//! shape check (nesting depth, element count, declarations) run before the
//! recursive parser sees untrusted input, building elements, reading child
//! text and attributes, and serialising without an XML declaration.
//! Escaping is always left to `xmltree`, never done by hand.

use std::fmt;

use xmltree::{Element, EmitterConfig, XMLNode};

/// The CWA 2007 namespace that every request after `logon` must carry.
pub const CWA_NS: &str = "http://schemas.microsoft.com/2006/09/rtc/cwa";

/// Why a document could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XmlError {
    /// The document is larger than the caller's bound.
    TooLarge { limit: usize },
    /// Elements nested deeper than the caller's bound.
    TooDeep { limit: usize },
    /// More elements than the caller's bound.
    TooManyElements { limit: usize },
    /// A DTD or other `<!...>` declaration where none is allowed.
    Declaration,
    /// Not well-formed XML (the parser's message).
    Malformed(String),
}

impl fmt::Display for XmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XmlError::TooLarge { limit } => write!(f, "XML document larger than {limit} bytes"),
            XmlError::TooDeep { limit } => write!(f, "XML nested deeper than {limit} elements"),
            XmlError::TooManyElements { limit } => {
                write!(f, "XML has more than {limit} elements")
            }
            XmlError::Declaration => write!(f, "DTDs and declarations are not allowed"),
            XmlError::Malformed(why) => write!(f, "malformed XML: {why}"),
        }
    }
}

impl std::error::Error for XmlError {}

/// Parses `bytes` as one XML document of at most `limit` bytes.
///
/// A whitespace-only text is kept when it is all an element holds (a
/// message, subject or note may be "  ", and must arrive as sent); white
/// space between child elements is layout and is dropped.
pub fn parse(bytes: &[u8], limit: usize) -> Result<Element, XmlError> {
    if bytes.len() > limit {
        return Err(XmlError::TooLarge { limit });
    }
    let config = xmltree::ParserConfig::new()
        .ignore_comments(false)
        .whitespace_to_characters(true);
    let mut root = Element::parse_with_config(bytes, config)
        .map_err(|e| XmlError::Malformed(e.to_string()))?;
    drop_layout_whitespace(&mut root);
    Ok(root)
}

/// Removes whitespace-only text beside child elements, all the way down.
/// Recursion is bounded by the document's depth, which callers of
/// untrusted input check first ([`parse_shaped`]).
fn drop_layout_whitespace(e: &mut Element) {
    let has_elements = e.children.iter().any(|n| n.as_element().is_some());
    if has_elements {
        e.children
            .retain(|n| !matches!(n, XMLNode::Text(t) if t.trim().is_empty()));
    }
    for child in e.children.iter_mut() {
        if let XMLNode::Element(c) = child {
            drop_layout_whitespace(c);
        }
    }
}

/// Bounds on a document's shape, checked by [`check_shape`] before the
/// tree is built. `xmltree` builds the tree recursively, so a megabyte of
/// `<a><a><a>…` from a hostile peer would otherwise overflow a connection
/// thread's small stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// The deepest nesting accepted; an empty element counts as a level.
    pub max_depth: usize,
    /// The most elements accepted in one document.
    pub max_elements: usize,
    /// Whether `<!DOCTYPE …>` and other declarations are accepted (and
    /// skipped); CDATA and comments are always accepted.
    pub allow_declarations: bool,
}

/// Parses `bytes` as one document of at most `limit` bytes whose shape is
/// within `shape`.
pub fn parse_shaped(bytes: &[u8], limit: usize, shape: &Shape) -> Result<Element, XmlError> {
    if bytes.len() > limit {
        return Err(XmlError::TooLarge { limit });
    }
    check_shape(bytes, shape)?;
    parse(bytes, limit)
}

/// Scans markup just well enough to count open elements: tags, quoted
/// attribute values (which may hold `>` and `/>`), comments, CDATA,
/// processing instructions and declarations. It over-counts rather than
/// under-counts when the input is not well-formed, so it only errs on the
/// side of refusing; the real parser then gives the precise error.
pub fn check_shape(bytes: &[u8], shape: &Shape) -> Result<(), XmlError> {
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
            if !shape.allow_declarations {
                return Err(XmlError::Declaration);
            }
            i = skip_past(bytes, i + 2, b">");
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            i = skip_past(bytes, i + 2, b">");
        } else {
            // An opening (or empty-element) tag: walk to its '>' outside
            // quotes.
            elements += 1;
            depth += 1;
            if depth > shape.max_depth {
                return Err(XmlError::TooDeep {
                    limit: shape.max_depth,
                });
            }
            if elements > shape.max_elements {
                return Err(XmlError::TooManyElements {
                    limit: shape.max_elements,
                });
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
    fn shape_counts_levels_elements_and_declarations() {
        let shape = |max_depth, max_elements, allow_declarations| Shape {
            max_depth,
            max_elements,
            allow_declarations,
        };
        let ok = |b: &[u8], s: Shape| check_shape(b, &s).is_ok();
        assert!(ok(b"<a><b/><c>x</c></a>", shape(2, 10, false)));
        assert!(!ok(b"<a><b><c/></b></a>", shape(2, 10, false)));
        assert!(!ok(
            "<a>".repeat(10_000).as_bytes(),
            shape(24, 100_000, false)
        ));
        assert!(ok(
            b"<?xml version=\"1.0\"?><!-- c --><a/>",
            shape(1, 1, false)
        ));
        // "/>" in text or attribute values is not a self-closing tag.
        let sneaky = "<a x=\"/>\">/>".repeat(100);
        assert!(!ok(sneaky.as_bytes(), shape(24, 1000, false)));
        assert!(ok(b"<a x='>'><b y=\"/>\"/></a>", shape(2, 2, false)));
        assert_eq!(
            check_shape(b"<a/><b/><c/>", &shape(5, 2, false)),
            Err(XmlError::TooManyElements { limit: 2 })
        );
        let dtd = b"<!DOCTYPE a [<!ENTITY x \"y\">]><a/>";
        assert_eq!(
            check_shape(dtd, &shape(5, 5, false)),
            Err(XmlError::Declaration)
        );
        assert!(ok(dtd, shape(5, 5, true)));
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
