//! The `[TPL_…]` placeholders of `lddsb/drone-dingtalk-message` templates (its `tpl`
//! setting): `[TPL_REPO_FULL_NAME] build [TPL_BUILD_STATUS]` and so on, over the build's
//! `DRONE_*` variables.
//!
//! The names, as the plugin documents them: `TPL_REPO_FULL_NAME`, `TPL_REPO_SHORT_NAME`
//! (also `TPL_REPO_NAME`, which the plugin's own text template uses), `TPL_REPO_GROUP_NAME`,
//! `TPL_REPO_OWNER_NAME`, `TPL_REPO_REMOTE_URL`, `TPL_BUILD_STATUS`, `TPL_BUILD_NUMBER`,
//! `TPL_BUILD_LINK`, `TPL_BUILD_EVENT`, `TPL_BUILD_CONSUMING` (seconds), `TPL_COMMIT_SHA`,
//! `TPL_COMMIT_REF`, `TPL_COMMIT_LINK`, `TPL_COMMIT_MSG`, `TPL_COMMIT_BRANCH`,
//! `TPL_AUTHOR_NAME`, `TPL_AUTHOR_USERNAME`, `TPL_AUTHOR_EMAIL`, `TPL_AUTHOR_AVATAR`,
//! `TPL_STATUS_PIC`, `TPL_STATUS_COLOR`, `TPL_STATUS_EMOTICON`. As in the plugin, `[NAME]`
//! for a variable of the build (`DRONE_*`, `CI_*`) is its value too; any other bracketed
//! text is left as it is. Unlike the plugin's repeated replacing, the template is read once:
//! a value that itself holds `[TPL_…]` (a commit message) is not substituted again.

use std::collections::BTreeMap;

/// What the plugin's `tpl_*`, colour and picture settings change.
#[derive(Debug, Clone, Default)]
pub(crate) struct Overrides {
    /// `tpl_repo_full_name`
    pub repo_full_name: Option<String>,
    /// `tpl_repo_short_name`
    pub repo_short_name: Option<String>,
    /// `tpl_commit_branch_name`
    pub commit_branch: Option<String>,
    /// `tpl_build_status_success`: the status shown for a successful build.
    pub status_success: Option<String>,
    /// `tpl_build_status_failure`: the status shown otherwise.
    pub status_failure: Option<String>,
    /// `success_color`/`failure_color`: hex, with or without `#`.
    pub success_color: Option<String>,
    pub failure_color: Option<String>,
    /// `success_pic`/`failure_pic`: picture URLs.
    pub success_pic: Option<String>,
    pub failure_pic: Option<String>,
}

fn var<'a>(env: &'a BTreeMap<String, String>, names: &[&str]) -> &'a str {
    names
        .iter()
        .filter_map(|name| env.get(*name))
        .find(|value| !value.is_empty())
        .map_or("", String::as_str)
}

fn number(env: &BTreeMap<String, String>, name: &str) -> i64 {
    env.get(name)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// How long the build has taken, in seconds: finished minus started; while it runs (a
/// notification step runs before the build's end), `now` minus started.
fn consuming(env: &BTreeMap<String, String>, now: i64) -> i64 {
    for (started, finished) in [
        ("DRONE_BUILD_STARTED", "DRONE_BUILD_FINISHED"),
        ("DRONE_STAGE_STARTED", "DRONE_STAGE_FINISHED"),
    ] {
        let (started, finished) = (number(env, started), number(env, finished));
        if started > 0 && finished >= started {
            return finished - started;
        }
        if started > 0 && finished == 0 && now >= started {
            return now - started;
        }
    }
    0
}

fn color(given: Option<&String>, default: &str) -> String {
    match given.map(|c| c.trim().trim_start_matches('#')) {
        Some(hex) if !hex.is_empty() => format!("#{hex}"),
        _ => default.to_string(),
    }
}

/// The placeholder values for a step's environment; `now` in Unix seconds.
pub(crate) fn values(
    env: &BTreeMap<String, String>,
    overrides: &Overrides,
    now: i64,
) -> BTreeMap<&'static str, String> {
    let status = var(env, &["DRONE_BUILD_STATUS"]);
    let status = if status.is_empty() { "success" } else { status };
    let success = status == "success";
    let pick = |given: &Option<String>, default: &str| {
        given
            .clone()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_string())
    };
    let short_name = pick(&overrides.repo_short_name, var(env, &["DRONE_REPO_NAME"]));
    let shown_status = match success {
        true => pick(&overrides.status_success, status),
        false => pick(&overrides.status_failure, status),
    };
    let (status_color, status_pic, emoticon) = match success {
        true => (
            color(overrides.success_color.as_ref(), "#008000"),
            overrides.success_pic.clone().unwrap_or_default(),
            ":)",
        ),
        false => (
            color(overrides.failure_color.as_ref(), "#FF0000"),
            overrides.failure_pic.clone().unwrap_or_default(),
            ":(",
        ),
    };
    let text = |names: &[&str]| var(env, names).to_string();
    BTreeMap::from([
        (
            "TPL_REPO_FULL_NAME",
            pick(&overrides.repo_full_name, var(env, &["DRONE_REPO"])),
        ),
        ("TPL_REPO_SHORT_NAME", short_name.clone()),
        ("TPL_REPO_NAME", short_name),
        (
            "TPL_REPO_GROUP_NAME",
            text(&["DRONE_REPO_NAMESPACE", "DRONE_REPO_OWNER"]),
        ),
        ("TPL_REPO_OWNER_NAME", text(&["DRONE_REPO_OWNER"])),
        (
            "TPL_REPO_REMOTE_URL",
            text(&["DRONE_REMOTE_URL", "DRONE_GIT_HTTP_URL"]),
        ),
        ("TPL_BUILD_STATUS", shown_status),
        ("TPL_BUILD_NUMBER", text(&["DRONE_BUILD_NUMBER"])),
        ("TPL_BUILD_LINK", text(&["DRONE_BUILD_LINK"])),
        ("TPL_BUILD_EVENT", text(&["DRONE_BUILD_EVENT"])),
        ("TPL_BUILD_CONSUMING", consuming(env, now).to_string()),
        (
            "TPL_COMMIT_SHA",
            text(&["DRONE_COMMIT_SHA", "DRONE_COMMIT"]),
        ),
        ("TPL_COMMIT_REF", text(&["DRONE_COMMIT_REF"])),
        ("TPL_COMMIT_LINK", text(&["DRONE_COMMIT_LINK"])),
        ("TPL_COMMIT_MSG", text(&["DRONE_COMMIT_MESSAGE"])),
        (
            "TPL_COMMIT_BRANCH",
            pick(
                &overrides.commit_branch,
                var(env, &["DRONE_COMMIT_BRANCH", "DRONE_BRANCH"]),
            ),
        ),
        (
            "TPL_AUTHOR_NAME",
            text(&["DRONE_COMMIT_AUTHOR_NAME", "DRONE_COMMIT_AUTHOR"]),
        ),
        ("TPL_AUTHOR_USERNAME", text(&["DRONE_COMMIT_AUTHOR"])),
        ("TPL_AUTHOR_EMAIL", text(&["DRONE_COMMIT_AUTHOR_EMAIL"])),
        ("TPL_AUTHOR_AVATAR", text(&["DRONE_COMMIT_AUTHOR_AVATAR"])),
        ("TPL_STATUS_PIC", status_pic),
        ("TPL_STATUS_COLOR", status_color),
        ("TPL_STATUS_EMOTICON", emoticon.to_string()),
    ])
}

/// `tpl` with every known `[NAME]` replaced: a placeholder of `values`, else a `DRONE_*` or
/// `CI_*` variable of `env`. Brackets around other text, and nested ones, stay.
pub(crate) fn fill(
    tpl: &str,
    values: &BTreeMap<&'static str, String>,
    env: &BTreeMap<String, String>,
) -> String {
    let mut out = String::with_capacity(tpl.len());
    let mut rest = tpl;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        // The name runs to the next `]`, unless another `[` comes first.
        let Some(close) = after
            .find([']', '['])
            .filter(|&i| after.as_bytes()[i] == b']')
        else {
            out.push('[');
            rest = after;
            continue;
        };
        let name = &after[..close];
        let value = values.get(name).or_else(|| {
            (name.starts_with("DRONE_") || name.starts_with("CI_"))
                .then(|| env.get(name))
                .flatten()
        });
        match value {
            Some(value) => out.push_str(value),
            None => {
                out.push('[');
                out.push_str(name);
                out.push(']');
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn build() -> BTreeMap<String, String> {
        env(&[
            ("DRONE_REPO", "company/test"),
            ("DRONE_REPO_NAME", "test"),
            ("DRONE_REPO_OWNER", "company"),
            ("DRONE_REPO_NAMESPACE", "company"),
            (
                "DRONE_REMOTE_URL",
                "https://git.example.com/company/test.git",
            ),
            ("DRONE_BUILD_STATUS", "success"),
            ("DRONE_BUILD_NUMBER", "14"),
            ("DRONE_BUILD_LINK", "http://ci.example.com/company/test/14"),
            ("DRONE_BUILD_EVENT", "push"),
            ("DRONE_BUILD_STARTED", "1700000000"),
            ("DRONE_COMMIT_SHA", "0123456789abcdef"),
            ("DRONE_COMMIT_REF", "refs/heads/develop"),
            ("DRONE_COMMIT_LINK", "https://git.example.com/c/0123"),
            ("DRONE_COMMIT_MESSAGE", "Fix the [TPL_BUILD_LINK] page"),
            ("DRONE_COMMIT_BRANCH", "develop"),
            ("DRONE_COMMIT_AUTHOR", "octocat"),
            ("DRONE_COMMIT_AUTHOR_NAME", "Octo Cat"),
            ("DRONE_COMMIT_AUTHOR_EMAIL", "octo@example.com"),
            (
                "DRONE_COMMIT_AUTHOR_AVATAR",
                "http://img.example.com/octo.png",
            ),
            ("PLUGIN_SECRET", "SECsigning"),
        ])
    }

    #[test]
    fn every_documented_placeholder() {
        let env = build();
        let values = values(&env, &Overrides::default(), 1_700_000_042);
        let tpl = "[TPL_REPO_FULL_NAME]|[TPL_REPO_SHORT_NAME]|[TPL_REPO_NAME]|\
                   [TPL_REPO_GROUP_NAME]|[TPL_REPO_OWNER_NAME]|[TPL_REPO_REMOTE_URL]|\
                   [TPL_BUILD_STATUS]|[TPL_BUILD_NUMBER]|[TPL_BUILD_LINK]|[TPL_BUILD_EVENT]|\
                   [TPL_BUILD_CONSUMING]|[TPL_COMMIT_SHA]|[TPL_COMMIT_REF]|[TPL_COMMIT_LINK]|\
                   [TPL_COMMIT_BRANCH]|[TPL_AUTHOR_NAME]|[TPL_AUTHOR_USERNAME]|\
                   [TPL_AUTHOR_EMAIL]|[TPL_AUTHOR_AVATAR]|[TPL_STATUS_PIC]|[TPL_STATUS_COLOR]|\
                   [TPL_STATUS_EMOTICON]";
        assert_eq!(
            fill(tpl, &values, &env),
            "company/test|test|test|company|company|https://git.example.com/company/test.git|\
             success|14|http://ci.example.com/company/test/14|push|42|0123456789abcdef|\
             refs/heads/develop|https://git.example.com/c/0123|develop|Octo Cat|octocat|\
             octo@example.com|http://img.example.com/octo.png||#008000|:)"
        );
    }

    #[test]
    fn markdown_brackets_variables_and_values_read_once() {
        let env = build();
        let values = values(&env, &Overrides::default(), 1_700_000_042);
        let tpl = "[[TPL_COMMIT_SHA]]([TPL_COMMIT_LINK]) [see [here]] [TPL_UNKNOWN] \
                   [DRONE_BUILD_EVENT] [PLUGIN_SECRET] [ [TPL_COMMIT_MSG] [unclosed";
        assert_eq!(
            fill(tpl, &values, &env),
            "[0123456789abcdef](https://git.example.com/c/0123) [see [here]] [TPL_UNKNOWN] \
             push [PLUGIN_SECRET] [ Fix the [TPL_BUILD_LINK] page [unclosed"
        );
    }

    #[test]
    fn overrides_colors_and_failure() {
        let mut env = build();
        env.insert("DRONE_BUILD_STATUS".into(), "failure".into());
        env.insert("DRONE_BUILD_FINISHED".into(), "1700000095".into());
        let overrides = Overrides {
            repo_full_name: Some("Company Test".into()),
            repo_short_name: Some("T".into()),
            commit_branch: Some("dev line".into()),
            status_success: Some("passed".into()),
            status_failure: Some("broke".into()),
            success_color: Some("00ff00".into()),
            failure_color: Some("#aa0000".into()),
            success_pic: Some("http://img/ok.png".into()),
            failure_pic: Some("http://img/ko.png".into()),
        };
        let values = values(&env, &overrides, 1_800_000_000);
        let text = fill(
            "[TPL_REPO_FULL_NAME] [TPL_REPO_SHORT_NAME] [TPL_COMMIT_BRANCH] [TPL_BUILD_STATUS] \
             [TPL_STATUS_COLOR] [TPL_STATUS_PIC] [TPL_STATUS_EMOTICON] [TPL_BUILD_CONSUMING]",
            &values,
            &env,
        );
        assert_eq!(
            text,
            "Company Test T dev line broke #aa0000 http://img/ko.png :( 95"
        );
        let mut passed = env.clone();
        passed.insert("DRONE_BUILD_STATUS".into(), "success".into());
        let values = super::values(&passed, &overrides, 0);
        assert_eq!(
            fill("[TPL_BUILD_STATUS] [TPL_STATUS_COLOR]", &values, &passed),
            "passed #00ff00"
        );
    }
}
