//! Settings files shared by the three programs: TOML read into a program's settings type, with
//! errors on one line that name the file, the line and the problem.

use std::path::Path;

use serde::de::DeserializeOwned;

/// Reads and parses the TOML file at `path`; the error is one line for the user.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
    parse_toml(&text).map_err(|e| format!("invalid config {}: {e}", path.display()))
}

/// Parses TOML text; the error is one line: `line N: what is wrong`.
pub fn parse_toml<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| {
        let message = e.message().replace('\n', " ");
        match e.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}: {message}")
            }
            None => message,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Settings {
        quota: Option<u64>,
    }

    #[test]
    fn errors_are_one_line_with_the_line_number() {
        let err = parse_toml::<Settings>("# a comment\nquota = 1\nqouta = 2\n").unwrap_err();
        assert_eq!(err.lines().count(), 1);
        assert!(err.starts_with("line 3: unknown field `qouta`"), "{err}");
        let err = parse_toml::<Settings>("quota = \"ten\"").unwrap_err();
        assert!(err.starts_with("line 1: "), "{err}");
        let err = load_toml::<Settings>(Path::new("/nonexistent/c.toml")).unwrap_err();
        assert!(
            err.starts_with("cannot read config /nonexistent/c.toml"),
            "{err}"
        );
    }
}
