//! Image tags of a `plugins/docker` step: `auto_tag` as the plugin computes it, and Docker's
//! rules for what a tag and a repository may look like.
//!
//! `auto_tag` (plugins/docker's `DefaultTags`/`UseDefaultTag`): it applies to tag builds
//! and to builds of the repository's default branch, and nothing else (the step then
//! builds nothing and succeeds). A tag `v1.2.3` (the `v` is optional) gives `1`, `1.2`,
//! `1.2.3`; with major version 0 only `0.2`, `0.2.3`; a pre-release or build suffix only the
//! whole version (`1.2.3-rc.1`); a branch build gives `latest`. `auto_tag_suffix` appends
//! `-SUFFIX` to each (and replaces `latest` by `SUFFIX`). A tag that is not a semantic
//! version is an error, as in current versions of the plugin.

use slipway_spec::context::parse_semver;

/// The tags `auto_tag` gives for a build of `reference` (`refs/tags/v1.2.3`,
/// `refs/heads/main`), or `None` when it does not apply: a branch that is not
/// `default_branch`.
pub(crate) fn auto_tags(
    reference: &str,
    default_branch: &str,
    suffix: &str,
) -> Result<Option<Vec<String>>, String> {
    let tags = if let Some(tag) = reference.strip_prefix("refs/tags/") {
        let version = parse_semver(tag)?;
        if !version.prerelease.is_empty() || !version.build.is_empty() {
            vec![version.full]
        } else if version.major.trim_start_matches('0').is_empty() {
            vec![
                format!("{}.{}", version.major, version.minor),
                version.short.clone(),
            ]
        } else {
            vec![
                version.major.clone(),
                format!("{}.{}", version.major, version.minor),
                version.short.clone(),
            ]
        }
    } else {
        let branch = reference.strip_prefix("refs/heads/").unwrap_or(reference);
        if branch != default_branch {
            return Ok(None);
        }
        vec!["latest".to_string()]
    };
    if suffix.is_empty() {
        return Ok(Some(tags));
    }
    Ok(Some(
        tags.into_iter()
            .map(|tag| {
                if tag == "latest" {
                    suffix.to_string()
                } else {
                    format!("{tag}-{suffix}")
                }
            })
            .collect(),
    ))
}

/// Docker's tag grammar: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub(crate) fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    first_ok
        && tag.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Whether the first component of an image name is a registry host (`host.tld`,
/// `host:port`, `localhost`), as Docker decides it.
pub(crate) fn has_registry_host(name: &str) -> bool {
    match name.split_once('/') {
        Some((first, _)) => first.contains(['.', ':']) || first == "localhost",
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(reference: &str, suffix: &str) -> Option<Vec<String>> {
        auto_tags(reference, "main", suffix).ok().flatten()
    }

    #[test]
    fn semver_tags() {
        assert_eq!(
            tags("refs/tags/v1.2.3", ""),
            Some(vec!["1".into(), "1.2".into(), "1.2.3".into()])
        );
        assert_eq!(
            tags("refs/tags/1.2.3", ""),
            Some(vec!["1".into(), "1.2".into(), "1.2.3".into()])
        );
        assert_eq!(
            tags("refs/tags/v0.4.1", ""),
            Some(vec!["0.4".into(), "0.4.1".into()])
        );
        assert_eq!(
            tags("refs/tags/v1.2.3-rc.1", ""),
            Some(vec!["1.2.3-rc.1".into()])
        );
        assert!(auto_tags("refs/tags/release", "main", "").is_err());
    }

    #[test]
    fn default_branch_is_latest_and_others_skip() {
        assert_eq!(tags("refs/heads/main", ""), Some(vec!["latest".into()]));
        assert_eq!(tags("refs/heads/develop", ""), None);
        assert_eq!(
            tags("refs/heads/main", "alpine"),
            Some(vec!["alpine".into()])
        );
        assert_eq!(
            tags("refs/tags/v2.0.1", "alpine"),
            Some(vec![
                "2-alpine".into(),
                "2.0-alpine".into(),
                "2.0.1-alpine".into()
            ])
        );
    }

    #[test]
    fn grammar() {
        assert!(valid_tag("develop-14"));
        assert!(valid_tag("1.2.3"));
        assert!(!valid_tag("-x"));
        assert!(!valid_tag("a/b"));
        assert!(!valid_tag(""));
        assert!(has_registry_host("127.0.0.1:5000/app"));
        assert!(has_registry_host("localhost/app"));
        assert!(has_registry_host("harbor.company.com/registry/test"));
        assert!(!has_registry_host("team/app"));
        assert!(!has_registry_host("app"));
    }
}
