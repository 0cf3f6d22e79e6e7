//! The static filter (Tomcat's ReplicationValve `filter`): requests whose path matches do no
//! session work. The path is taken percent-decoded, without the query and without
//! `;parameters`, and matched in full (`^(?:filter)$`).

use std::borrow::Cow;

use regex::Regex;
use regex_syntax::hir::literal::{ExtractKind, Extractor};

/// Tomcat's recommended filter list.
pub(crate) const TOMCAT_DEFAULT: &str =
    r".*\.gif|.*\.js|.*\.jpeg|.*\.jpg|.*\.png|.*\.htm|.*\.html|.*\.css|.*\.txt";

#[derive(Debug, Clone, Default)]
pub struct StaticFilter {
    re: Option<Regex>,
    /// The bytes a matching path can end with, when the pattern's suffixes are a finite set
    /// of literals (`.*\.css|...`): most requests are ruled out by their last byte without
    /// running the regex (a search costs hundreds of instructions even on `/`).
    last: Option<Box<[bool; 256]>>,
}

impl StaticFilter {
    /// Empty = no filter. The error is regex's own message.
    pub fn new(pattern: &str) -> Result<Self, regex::Error> {
        if pattern.is_empty() {
            return Ok(Self::default());
        }
        let anchored = format!("^(?:{pattern})$");
        let re = Regex::new(&anchored)?;
        Ok(Self {
            re: Some(re),
            last: last_bytes(&anchored),
        })
    }

    pub fn matches(&self, path: &str) -> bool {
        let Some(re) = &self.re else { return false };
        let path = normalize(path);
        if let Some(last) = &self.last {
            match path.as_bytes().last() {
                Some(&b) if last[usize::from(b)] => {}
                _ => return false,
            }
        }
        re.is_match(&path)
    }
}

/// Every match of `pattern` ends with one of its suffix literals when they form a finite
/// set (regex-syntax's literal extraction, as the regex crate's own prefilters use it); the
/// last bytes of those literals. `None` when any match could end with any byte.
fn last_bytes(pattern: &str) -> Option<Box<[bool; 256]>> {
    let hir = regex_syntax::parse(pattern).ok()?;
    let seq = Extractor::new().kind(ExtractKind::Suffix).extract(&hir);
    let mut last = Box::new([false; 256]);
    for lit in seq.literals()? {
        last[usize::from(*lit.as_bytes().last()?)] = true;
    }
    Some(last)
}

/// Drops `;params` from every segment and percent-decodes; borrows when there is nothing
/// to do (the common case).
fn normalize(path: &str) -> Cow<'_, str> {
    let path: Cow<'_, str> = if path.contains(';') {
        Cow::Owned(
            path.split('/')
                .map(|seg| seg.split(';').next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("/"),
        )
    } else {
        Cow::Borrowed(path)
    };
    if !path.contains('%') {
        return path;
    }
    Cow::Owned(
        percent_encoding::percent_decode_str(&path)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tomcat_list_full_match() {
        let f = StaticFilter::new(TOMCAT_DEFAULT).unwrap();
        assert!(f.matches("/a/b.css"));
        assert!(f.matches("/logo.png"));
        assert!(f.matches("/a/b%2Ecss"));
        assert!(f.matches("/a/b.css;jsessionid=X"));
        assert!(!f.matches("/a/b.cssx"));
        assert!(!f.matches("/a/b.css/more"));
        assert!(!f.matches("/"));
        assert!(!StaticFilter::new("").unwrap().matches("/a.css"));
        assert!(f.last.is_some(), "the Tomcat list has a finite suffix set");
    }

    #[test]
    fn last_byte_sets() {
        let set = |p: &str| {
            last_bytes(&format!("^(?:{p})$")).map(|l| {
                (0..=255u8)
                    .filter(|&b| l[usize::from(b)])
                    .map(char::from)
                    .collect::<String>()
            })
        };
        // gif js jpeg jpg png htm html css txt
        assert_eq!(set(TOMCAT_DEFAULT).as_deref(), Some("fglmst"));
        assert_eq!(set(".*").as_deref(), None, "any end");
        assert_eq!(set("/static/.*").as_deref(), None);
        assert_eq!(set(".*\\.css|").as_deref(), None, "the empty path matches");
        // Unicode case folding: `s` also matches U+017F (UTF-8 C5 BF).
        assert_eq!(set("(?i).*\\.CSS").as_deref(), Some("Ss\u{bf}"));
    }

    proptest::proptest! {
        /// The last-byte check never changes an answer: same result as the bare regex.
        #[test]
        fn prefilter_agrees_with_the_regex(
            path in "[/a-zA-Z.;=%0-9]{0,16}",
            i in 0usize..6,
        ) {
            let pattern = [
                TOMCAT_DEFAULT,
                "(?i).*\\.PNG",
                "/static/.*|.*\\.js",
                ".*[0-9]",
                "/a/b\\.(css|js)|/x",
                ".*\\.c.s",
            ][i];
            let f = StaticFilter::new(pattern).unwrap();
            let bare = StaticFilter { last: None, ..f.clone() };
            proptest::prop_assert_eq!(f.matches(&path), bare.matches(&path), "{} on {:?}", pattern, path);
        }
    }
}
