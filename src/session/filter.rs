//! The static filter (Tomcat's ReplicationValve `filter`): requests whose path matches do no
//! session work. The path is taken percent-decoded, without the query and without
//! `;parameters`, and matched in full (`^(?:filter)$`).

use std::borrow::Cow;

use regex::Regex;

/// Tomcat's recommended filter list.
pub const TOMCAT_DEFAULT: &str =
    r".*\.gif|.*\.js|.*\.jpeg|.*\.jpg|.*\.png|.*\.htm|.*\.html|.*\.css|.*\.txt";

#[derive(Debug, Clone, Default)]
pub struct StaticFilter {
    re: Option<Regex>,
}

impl StaticFilter {
    /// Empty = no filter. The error is regex's own message.
    pub fn new(pattern: &str) -> Result<Self, regex::Error> {
        if pattern.is_empty() {
            return Ok(Self { re: None });
        }
        Ok(Self {
            re: Some(Regex::new(&format!("^(?:{pattern})$"))?),
        })
    }

    pub fn matches(&self, path: &str) -> bool {
        let Some(re) = &self.re else { return false };
        re.is_match(&normalize(path))
    }
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
    }
}
