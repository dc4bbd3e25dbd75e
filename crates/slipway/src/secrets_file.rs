//! `--secret NAME=VALUE` and `--secrets-file F` (dotenv style) for `slipway exec`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Parses a dotenv-style file: `NAME=value` lines, `#` comments, blank lines; a value in
/// double quotes may hold `\n` escapes (multi-line secrets such as keys), one in single
/// quotes is taken literally.
pub fn parse(path: &Path, text: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let trimmed = trimmed.strip_prefix("export ").unwrap_or(trimmed);
        let Some((name, value)) = trimmed.split_once('=') else {
            bail!(
                "{}:{}: expected NAME=VALUE, found `{trimmed}`",
                path.display(),
                i + 1
            );
        };
        let value = value.trim();
        let value = if let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            unescape(inner)
        } else if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
            inner.to_owned()
        } else {
            value.to_owned()
        };
        out.insert(name.trim().to_owned(), value);
    }
    Ok(out)
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// All secrets from `--secrets-file` then `--secret` (later wins).
pub fn collect(file: Option<&Path>, pairs: &[String]) -> Result<BTreeMap<String, String>> {
    let mut secrets = BTreeMap::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read secrets file {}", path.display()))?;
        secrets.extend(parse(path, &text)?);
    }
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else {
            bail!("--secret `{}` must be NAME=VALUE", k_only(pair));
        };
        secrets.insert(k.to_owned(), v.to_owned());
    }
    Ok(secrets)
}

/// Never echo a malformed secret back whole: it may be the value itself.
fn k_only(pair: &str) -> String {
    let shown: String = pair.chars().take(3).collect();
    format!("{shown}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dotenv_forms() {
        let text = "# c\nA=1\nexport B = two words\nC=\"line1\\nline2\"\nD='raw\\n'\n\n";
        let got = parse(Path::new("s.env"), text).expect("valid file");
        assert_eq!(got["A"], "1");
        assert_eq!(got["B"], "two words");
        assert_eq!(got["C"], "line1\nline2");
        assert_eq!(got["D"], "raw\\n");
    }

    #[test]
    fn bad_line_names_file_and_line() {
        let err = parse(Path::new("s.env"), "A=1\nnope\n").expect_err("invalid");
        assert!(err.to_string().starts_with("s.env:2:"), "{err}");
    }
}
