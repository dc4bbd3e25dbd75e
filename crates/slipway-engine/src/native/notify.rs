//! Notification plugins, natively: `clem109/drone-wechat` and `lizheming/drone-wechat`
//! (WeChat Work application messages), `plugins/slack`, `plugins/webhook`,
//! `appleboy/drone-telegram`, `appleboy/drone-discord`, `drone-plugins/drone-email` (also
//! `drillster/drone-email`) and `lddsb/drone-dingtalk-message`, sent with
//! [`slipway_notify`] instead of the plugin's container.
//!
//! Settings, as the plugins document them (`settings:` in 1.x files, inline keys in 0.8
//! files; each also read from `PLUGIN_<KEY>`, where `from_secret` values and 0.8
//! `secrets:` arrive). Text settings are the plugins' Handlebars-style templates
//! (`{{build.number}}`, `{{#success build.status}}…{{/success}}`, ...) over the build's
//! `DRONE_*` variables; a template that does not render is logged with its line and column
//! and the default message is sent instead.
//! - WeChat: `corpid`, `corp_secret`, `agent_id` (required); `to_user`, `to_party`,
//!   `to_tag` (lists, or `|`-separated); `msgtype`/`msg_type` (`textcard`, the default,
//!   `markdown`, `text`); `title`, `description`, `msg_url` (default the build's link),
//!   `btn_txt`/`btn_text` (sent as the API's `btntxt`), `message` (the content of `text` and
//!   `markdown` messages). Unlike clem109's plugin, `to_party` or `to_tag` alone does not
//!   also message `@all`, the token is not fetched for nothing, and the corp secret is
//!   never printed.
//! - Slack: `webhook` (or `SLACK_WEBHOOK`, required), `channel`, `username`, `template`,
//!   `icon_url`, `icon_emoji`, `color`, `link_names`.
//! - Webhook: `urls` (or `WEBHOOK_URLS`, required), `method`, `content_type`, `template`
//!   (the body; default the JSON of `repo` and `build`), `headers` (`NAME=value`),
//!   `username`/`password`, `token_value`, `valid_response_codes`, `signature_secret`.
//!   `skip_verify` and `debug` are named in the log as ignored.
//! - Telegram (appleboy): `token` (or `TELEGRAM_TOKEN`), `to` (chat ids, or
//!   `TELEGRAM_TO`; one message each), `message` (default: the default message's text),
//!   `disable_notification`. Photos, documents and the other media settings are not sent.
//! - Discord (appleboy): `webhook_id` and `webhook_token` (or `DISCORD_WEBHOOK_ID`,
//!   `DISCORD_WEBHOOK_TOKEN`), `message` (the embed's text), `username`, `avatar_url`.
//! - Email (drone-email): `host` (required), `port` (default 587; 465 is implicit TLS),
//!   `username`, `password`, `from` (an address or `Name <address>`; or `from.address` and
//!   `from.name`), `recipients` (a list or comma-separated), `recipients_file` (a file of
//!   the workspace, one address a line), `recipients_only` (when false, the default, the
//!   commit author's `DRONE_COMMIT_AUTHOR_EMAIL` is added), `subject` and `body` (the
//!   plugin's templates, with its names: `commit.author.name`, `repo.fullName`, ...; a body
//!   holding HTML tags is sent as the HTML part with its text beside it, any other as text;
//!   without one, the default message), `no_starttls` (plain SMTP, as the plugin means it;
//!   port 465 stays implicit TLS), `client_hostname`/`clienthostname` (the `EHLO` name);
//!   each also from the plugin's `EMAIL_HOST`, `EMAIL_PORT`, `EMAIL_USERNAME`,
//!   `EMAIL_PASSWORD`, `EMAIL_RECIPIENTS`, `EMAIL_CLIENTHOSTNAME`. One message per
//!   recipient, as the plugin sends them. STARTTLS is required, not opportunistic, and the
//!   certificate always verified: `skip_verify` is logged as not honoured, and Slipway's
//!   own `ca_cert` (PEM, e.g. from a secret) adds a private CA. Attachments are not sent.
//! - DingTalk (lddsb): `token`/`access_token` (required), `secret` (signs the request),
//!   `type`/`msg_type`/`message_type` (`markdown`, the default, `text`, `link`,
//!   `actionCard`, `feedCard`), `tpl` (a template file of the workspace with the plugin's
//!   `[TPL_…]` placeholders, see [`super::tpl`]; without one, the default message),
//!   `tpl_repo_full_name`, `tpl_repo_short_name`, `tpl_commit_branch_name`,
//!   `tpl_build_status_success`, `tpl_build_status_failure`, `msg_at_all`,
//!   `msg_at_mobiles`, `tips_title` (the notification's title), `success_color`,
//!   `failure_color`, `success_pic`, `failure_pic`. `debug`, `lang`, `message_color`,
//!   `message_pic` and `sha_link` are named in the log as ignored; a `tpl` URL is not
//!   fetched (the default message goes instead, a log line says so).
//!
//! The API base of each service is the one given with `--notify-api KIND=URL`
//! ([`crate::RunOptions::notify_api`]), else the service's own (email goes to its `host`
//! and `port`). The step fails when the service refused the message (after the retries a
//! busy service gets), with its answer in the log; the step's own credentials are masked in
//! every line, like secrets.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use serde_json::json;
use slipway_notify::template::{self, Context};
use slipway_notify::{
    Channel, ChannelConfig, Delivery, DingTalk, DingTalkMsgType, Email, EmailTls, Kind, Message,
    Notifier, NotifierConfig, Secret, Slack, WeChatMsgType, WeChatWork, Webhook, WebhookBody,
};

use super::settings::Settings;
use super::tpl;
use super::{NativeHost, NativeLog, PluginError, workspace_path};
use crate::backend::StepSpec;
use crate::beneath::{BeneathError, Root};
use crate::log::StepLog;

/// Which notification plugin a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotifyPlugin {
    WeChat,
    Slack,
    Webhook,
    Telegram,
    Discord,
    Email,
    DingTalk,
}

/// Runs a notification plugin step. `Err` is the failure's message, masked.
pub(crate) async fn run(
    plugin: NotifyPlugin,
    image: &str,
    host: NativeHost<'_>,
    spec: &StepSpec<'_>,
    log: &StepLog,
    notify_api: &BTreeMap<Kind, String>,
) -> Result<(), String> {
    let settings = Settings::new(&spec.plan.settings, &spec.env);
    let credentials: Vec<String> = [
        "corp_secret",
        "corpsecret",
        "webhook",
        "urls",
        "password",
        "token_value",
        "signature_secret",
        "token",
        "webhook_token",
        "access_token",
        "secret",
    ]
    .iter()
    .filter_map(|key| settings.text(&[key]))
    .chain(settings.list(&["urls"]).unwrap_or_default())
    .chain(spec.env.get("SLACK_WEBHOOK").cloned())
    .chain(spec.env.get("WEBHOOK_URLS").cloned())
    .chain(spec.env.get("TELEGRAM_TOKEN").cloned())
    .chain(spec.env.get("DISCORD_WEBHOOK_TOKEN").cloned())
    .chain(spec.env.get("EMAIL_PASSWORD").cloned())
    .collect();
    let log = NativeLog::new(
        log.clone(),
        &credentials.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    log.line(&format!(
        "{image} runs natively: no plugin container; sending with Slipway's own client"
    ));
    let context = Context::from_drone_env(&spec.env);
    let result = match plugin {
        NotifyPlugin::WeChat => wechat(&settings, &context, &log),
        NotifyPlugin::Slack => slack(&settings, &context, &log),
        NotifyPlugin::Webhook => webhook(&settings, &context, &log),
        NotifyPlugin::Telegram => telegram(&settings, &context, &log),
        NotifyPlugin::Discord => discord(&settings, &context, &log),
        NotifyPlugin::Email => email(&settings, &context, &spec.env, host, &log),
        NotifyPlugin::DingTalk => dingtalk(&settings, &context, &spec.env, host, &log),
    };
    let (channels, message) = result.map_err(|e| log.mask(&e.to_string()))?;
    let notifier = Notifier::new(NotifierConfig {
        api: notify_api.clone(),
        ..NotifierConfig::default()
    })
    .map_err(|e| e.to_string())?;
    // Channels of one kind named apart (email's recipients): each delivery says which.
    let named = channels
        .iter()
        .map(|c| &c.name)
        .collect::<BTreeSet<_>>()
        .len()
        > 1;
    let mut failed = Vec::new();
    for channel in &channels {
        if named {
            log.line(&format!("to {}", channel.name));
        }
        let delivery = notifier.deliver(channel, &message).await;
        report(&log, channel, &delivery);
        if let Err(error) = &delivery.outcome {
            let error = log.mask(&error.to_string());
            // The same refusal for every recipient is said once.
            if !failed.contains(&error) {
                failed.push(error);
            }
        }
    }
    match failed.len() {
        0 => Ok(()),
        _ => Err(failed.join("; ")),
    }
}

fn report(log: &NativeLog, channel: &Channel, delivery: &Delivery) {
    let last = delivery.attempts.len();
    for attempt in &delivery.attempts {
        match &attempt.result {
            Ok(accepted) => log.line(&format!(
                "{} accepted the message ({} ms): {}",
                channel.kind(),
                attempt.latency.as_millis(),
                accepted.answer
            )),
            Err(error) if attempt.number < last as u32 => log.line(&format!(
                "attempt {} failed, retrying: {error}",
                attempt.number
            )),
            Err(error) => log.line(&format!("the message was not delivered: {error}")),
        }
    }
}

/// Renders a plugin template setting; on an error, logs it and returns `None`.
fn render(log: &NativeLog, setting: &str, source: &str, context: &Context) -> Option<String> {
    render_with(log, setting, source, context, &serde_json::Value::Null)
}

/// [`render`] with a plugin's own names merged over the context
/// ([`template::render_with`]).
fn render_with(
    log: &NativeLog,
    setting: &str,
    source: &str,
    context: &Context,
    extra: &serde_json::Value,
) -> Option<String> {
    match template::render_with(&template::from_handlebars(source), context, extra) {
        Ok(text) => Some(text),
        Err(error) => {
            log.line(&format!(
                "setting `{setting}`: {error}; sending the default text instead"
            ));
            None
        }
    }
}

/// Recipients: a YAML list, or a text separated by `|` (the API's form) or commas.
fn recipients(settings: &Settings<'_>, keys: &[&str]) -> Vec<String> {
    settings
        .list(keys)
        .unwrap_or_default()
        .iter()
        .flat_map(|item| item.split('|'))
        .map(|item| item.trim().to_string())
        .filter(|item| !item.is_empty())
        .collect()
}

fn required(settings: &Settings<'_>, keys: &[&str]) -> Result<String, PluginError> {
    settings
        .text(keys)
        .ok_or_else(|| PluginError::setting(keys[0], "is required"))
}

type Plan = (Vec<Channel>, Message);

fn wechat(
    settings: &Settings<'_>,
    context: &Context,
    log: &NativeLog,
) -> Result<Plan, PluginError> {
    let corp_id = required(settings, &["corpid", "corp_id"])?;
    let corp_secret = required(settings, &["corp_secret", "corpsecret"])?;
    let agent_text = required(settings, &["agent_id", "agentid"])?;
    let agent_id: i64 = agent_text
        .parse()
        .map_err(|_| PluginError::setting("agent_id", format!("`{agent_text}` is not a number")))?;
    let msg_type = match settings.text(&["msgtype", "msg_type"]) {
        Some(text) => WeChatMsgType::parse(&text).ok_or_else(|| {
            PluginError::setting(
                "msgtype",
                format!("`{text}` is not textcard, markdown or text"),
            )
        })?,
        None => WeChatMsgType::TextCard,
    };
    let mut config = WeChatWork::new(corp_id, corp_secret, agent_id);
    config.to_user = recipients(settings, &["to_user", "touser"]);
    config.to_party = recipients(settings, &["to_party", "toparty"]);
    config.to_tag = recipients(settings, &["to_tag", "totag"]);
    config.msg_type = msg_type;
    if config.to_user.is_empty() && config.to_party.is_empty() && config.to_tag.is_empty() {
        log.line("no to_user, to_party or to_tag: sending to @all, everyone who sees the app");
    }

    let mut message = template::default_message(context);
    if let Some(title) = settings.text(&["title"]) {
        message.title = render(log, "title", &title, context).unwrap_or(message.title);
    }
    let body_keys: &[&str] = match msg_type {
        WeChatMsgType::TextCard => &["description", "message"],
        _ => &["message", "description"],
    };
    let body = body_keys
        .iter()
        .find_map(|key| settings.text(&[key]).map(|text| (*key, text)));
    if let Some((key, text)) = body
        && let Some(rendered) = render(log, key, &text, context)
    {
        message.text = rendered;
        // The plugin's text is the whole message: no default fields beside it, and for
        // text and markdown no title above it unless `title` asks for one.
        message.fields.clear();
        if msg_type != WeChatMsgType::TextCard && !settings.has("title") {
            message.title.clear();
        }
    }
    let url = settings
        .text(&["msg_url", "url"])
        .or_else(|| message.link.as_ref().map(|l| l.url.clone()));
    let label = settings
        .text(&["btn_txt", "btn_text", "btntxt"])
        .map(|text| render(log, "btn_txt", &text, context).unwrap_or(text))
        .unwrap_or_else(|| "详情".to_string());
    message.link = url.map(|url| slipway_notify::Link { url, label });
    if msg_type == WeChatMsgType::TextCard && message.link.is_none() {
        log.line("no msg_url and no build link: a textcard needs a URL, sending a text message");
    }
    Ok((
        vec![Channel::new("wechat", ChannelConfig::WeChatWork(config))],
        message,
    ))
}

/// plugins/slack's default template.
const SLACK_DEFAULT: &str = "*{{build.status}}* <{{build.link}}|{{repo.owner}}/{{repo.name}}#{{truncate build.commit 8}}> ({{build.branch}}) by {{build.author}}";

fn slack(settings: &Settings<'_>, context: &Context, log: &NativeLog) -> Result<Plan, PluginError> {
    let url = settings
        .text_or_env("webhook", "SLACK_WEBHOOK")
        .ok_or_else(|| PluginError::setting("webhook", "is required"))?;
    let config = Slack {
        url: Secret::new(url),
        channel: settings.text(&["channel"]),
        username: settings.text(&["username"]),
        icon_url: settings.text(&["icon_url"]),
        icon_emoji: settings.text(&["icon_emoji"]),
        link_names: settings.flag("link_names")?.unwrap_or(false),
        color: settings.text(&["color"]),
    };
    let mut message = template::default_message(context);
    let source = settings
        .text(&["template"])
        .unwrap_or_else(|| SLACK_DEFAULT.to_string());
    if let Some(text) = render(log, "template", &source, context) {
        message.text = text;
        message.fields.clear();
    }
    Ok((
        vec![Channel::new("slack", ChannelConfig::Slack(config))],
        message,
    ))
}

fn webhook(
    settings: &Settings<'_>,
    context: &Context,
    log: &NativeLog,
) -> Result<Plan, PluginError> {
    let urls = settings
        .list_or_env("urls", "WEBHOOK_URLS")
        .ok_or_else(|| PluginError::setting("urls", "is required"))?;
    for ignored in ["skip_verify", "debug"] {
        if settings.has(ignored) {
            log.line(&format!("setting `{ignored}` is ignored natively"));
        }
    }
    let mut valid_codes = Vec::new();
    for code in settings.list(&["valid_response_codes"]).unwrap_or_default() {
        valid_codes.push(code.parse::<u16>().map_err(|_| {
            PluginError::setting(
                "valid_response_codes",
                format!("`{code}` is not an HTTP status"),
            )
        })?);
    }
    let headers = settings
        .list(&["headers"])
        .unwrap_or_default()
        .into_iter()
        .map(|header| match header.split_once('=') {
            Some((name, value)) => Ok((name.trim().to_string(), value.trim().to_string())),
            None => Err(PluginError::setting(
                "headers",
                format!("`{header}` is not NAME=value"),
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut message = template::default_message(context);
    // The plugin's default body: the JSON of the repository and the build.
    message.text = serde_json::json!({ "repo": context.repo, "build": context.build }).to_string();
    if let Some(source) = settings.text(&["template"])
        && let Some(text) = render(log, "template", &source, context)
    {
        message.text = text;
    }
    let channels = urls
        .into_iter()
        .map(|url| {
            let mut config = Webhook::new(url);
            config.method = settings.text(&["method"]).unwrap_or_else(|| "POST".into());
            config.content_type = settings
                .text(&["content_type"])
                .unwrap_or_else(|| "application/json".into());
            config.headers = headers.clone();
            config.username = settings.text(&["username"]);
            config.password = settings.text(&["password"]).map(Secret::new);
            config.token = settings.text(&["token_value"]).map(Secret::new);
            config.signature_secret = settings.text(&["signature_secret"]).map(Secret::new);
            config.valid_codes = valid_codes.clone();
            config.body = WebhookBody::Text;
            Channel::new("webhook", ChannelConfig::Webhook(config))
        })
        .collect();
    Ok((channels, message))
}

/// The default message with its text from the `message` setting, when given and it renders.
fn with_message(settings: &Settings<'_>, context: &Context, log: &NativeLog) -> Message {
    let mut message = template::default_message(context);
    if let Some(source) = settings.text(&["message"])
        && let Some(text) = render(log, "message", &source, context)
    {
        message.text = text;
        message.fields.clear();
    }
    message
}

fn telegram(
    settings: &Settings<'_>,
    context: &Context,
    log: &NativeLog,
) -> Result<Plan, PluginError> {
    let token = settings
        .text_or_env("token", "TELEGRAM_TOKEN")
        .ok_or_else(|| PluginError::setting("token", "is required"))?;
    let to = settings
        .list_or_env("to", "TELEGRAM_TO")
        .ok_or_else(|| PluginError::setting("to", "is required"))?;
    for ignored in [
        "photo", "document", "sticker", "audio", "voice", "location", "venue", "video",
    ] {
        if settings.has(ignored) {
            log.line(&format!(
                "setting `{ignored}` is not sent natively (text messages only)"
            ));
        }
    }
    let disable_notification = settings.flag("disable_notification")?.unwrap_or(false);
    let mut message = with_message(settings, context, log);
    if settings.has("message") {
        // The plugin sends the message alone, without a title above it.
        message.title.clear();
        message.link = None;
    }
    let channels = to
        .into_iter()
        .map(|chat_id| {
            Channel::new(
                "telegram",
                ChannelConfig::Telegram(slipway_notify::Telegram {
                    token: Secret::new(token.clone()),
                    chat_id,
                    disable_notification,
                }),
            )
        })
        .collect();
    Ok((channels, message))
}

fn discord(
    settings: &Settings<'_>,
    context: &Context,
    log: &NativeLog,
) -> Result<Plan, PluginError> {
    let id = settings
        .text_or_env("webhook_id", "DISCORD_WEBHOOK_ID")
        .ok_or_else(|| PluginError::setting("webhook_id", "is required"))?;
    let token = settings
        .text_or_env("webhook_token", "DISCORD_WEBHOOK_TOKEN")
        .ok_or_else(|| PluginError::setting("webhook_token", "is required"))?;
    let config = slipway_notify::Discord {
        url: Secret::new(format!("https://discord.com/api/webhooks/{id}/{token}")),
        username: settings.text(&["username"]),
        avatar_url: settings.text(&["avatar_url"]),
    };
    let message = with_message(settings, context, log);
    Ok((
        vec![Channel::new("discord", ChannelConfig::Discord(config))],
        message,
    ))
}

/// The most a template or recipients file of the workspace may hold.
const WORKSPACE_FILE_LIMIT: u64 = 1 << 20;

/// The text of the workspace file a path setting names (relative to the workspace, or
/// absolute inside it), read beneath the workspace root: a path or link leaving it is an
/// error naming the setting.
fn workspace_text(host: NativeHost<'_>, setting: &str, value: &str) -> Result<String, PluginError> {
    let relative = workspace_path(host, setting, value)?;
    let root = Root::open(host.workspace)
        .map_err(|e| PluginError::Context(format!("opening the workspace: {e}")))?;
    let found = root.open_file(&relative).map_err(|e| match e {
        BeneathError::NotFound { .. } => PluginError::setting(
            setting,
            format!(
                "`{value}` does not exist in the workspace (paths are relative to {})",
                host.container_workspace
            ),
        ),
        other => PluginError::setting(setting, other.to_string()),
    })?;
    let mut bytes = Vec::new();
    found
        .file
        .take(WORKSPACE_FILE_LIMIT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| PluginError::setting(setting, format!("reading `{value}`: {e}")))?;
    if bytes.len() as u64 > WORKSPACE_FILE_LIMIT {
        return Err(PluginError::setting(
            setting,
            format!("`{value}` is larger than {WORKSPACE_FILE_LIMIT} bytes"),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| PluginError::setting(setting, format!("`{value}` is not UTF-8 text")))
}

fn is_url(text: &str) -> bool {
    text.starts_with("http://") || text.starts_with("https://")
}

/// drone-email's default subject.
const EMAIL_SUBJECT: &str = "[{{ build.status }}] {{ repo.owner }}/{{ repo.name }} ({{ commit.branch }} - {{ truncate commit.sha 8 }})";

/// The names drone-email's templates see beside the common ones: the commit's author as an
/// object, `commit.link`, `repo.fullName`, `remote.url`, `job`, `prev`, `tag`,
/// `pullRequest`, `deployTo`.
fn email_names(context: &Context, env: &BTreeMap<String, String>) -> serde_json::Value {
    let get = |name: &str| env.get(name).cloned().unwrap_or_default();
    let number = |name: &str| env.get(name).and_then(|v| v.trim().parse::<i64>().ok());
    json!({
        "commit": {
            "author": {
                "name": get("DRONE_COMMIT_AUTHOR"),
                "email": get("DRONE_COMMIT_AUTHOR_EMAIL"),
                "avatar": get("DRONE_COMMIT_AUTHOR_AVATAR"),
            },
            "link": get("DRONE_COMMIT_LINK"),
        },
        "repo": {
            "fullName": context.repo.full_name,
            "scm": get("DRONE_REPO_SCM"),
            "private": get("DRONE_REPO_PRIVATE") == "true",
        },
        "remote": { "url": get("DRONE_REMOTE_URL") },
        "job": {
            "status": context.build.status,
            "started": number("DRONE_STAGE_STARTED").unwrap_or(context.build.started),
        },
        "prev": {
            "build": {
                "status": get("DRONE_PREV_BUILD_STATUS"),
                "number": number("DRONE_PREV_BUILD_NUMBER"),
            },
            "commit": { "sha": get("DRONE_PREV_COMMIT_SHA") },
        },
        "tag": get("DRONE_TAG"),
        "pullRequest": number("DRONE_PULL_REQUEST"),
        "deployTo": get("DRONE_DEPLOY_TO"),
    })
}

/// Whether a rendered body is HTML: it holds a tag (`<p>`, `</td>`, `<br/>`, `<!DOCTYPE`),
/// not merely an address in angle brackets.
fn looks_like_html(text: &str) -> bool {
    text.match_indices('<').any(|(i, _)| {
        let rest = &text[i + 1..];
        if rest.starts_with('!') {
            return true;
        }
        let name_start = rest.strip_prefix('/').unwrap_or(rest);
        let name_len = name_start
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(name_start.len());
        name_len > 0
            && name_start.as_bytes()[0].is_ascii_alphabetic()
            && name_start[name_len..].starts_with([' ', '>', '/', '\n', '\t', '\r'])
    })
}

/// `from`, else `from.address` with `from.name` as the display name.
fn email_from(settings: &Settings<'_>) -> Result<String, PluginError> {
    let address = settings
        .text(&["from", "from.address", "from_address"])
        .ok_or_else(|| PluginError::setting("from", "is required"))?;
    Ok(match settings.text(&["from.name", "from_name"]) {
        Some(name) if !address.contains('<') => format!(
            "\"{}\" <{address}>",
            name.replace('\\', "\\\\").replace('"', "\\\"")
        ),
        _ => address,
    })
}

fn email(
    settings: &Settings<'_>,
    context: &Context,
    env: &BTreeMap<String, String>,
    host: NativeHost<'_>,
    log: &NativeLog,
) -> Result<Plan, PluginError> {
    let server = settings
        .text_or_env("host", "EMAIL_HOST")
        .ok_or_else(|| PluginError::setting("host", "is required"))?;
    let port = match settings.text_or_env("port", "EMAIL_PORT") {
        Some(text) => text
            .parse::<u16>()
            .ok()
            .filter(|port| *port > 0)
            .ok_or_else(|| PluginError::setting("port", format!("`{text}` is not a port")))?,
        None => 587,
    };
    let from = email_from(settings)?;
    let no_starttls = settings.flag("no_starttls")?.unwrap_or(false);
    let tls = match (port, no_starttls) {
        (465, no_starttls) => {
            if no_starttls {
                log.line("port 465 is implicit TLS: `no_starttls` changes nothing there");
            }
            EmailTls::Implicit
        }
        (_, true) => {
            log.line(
                "no_starttls: plain SMTP, the message and any password cross the network \
                 unencrypted",
            );
            EmailTls::None
        }
        (_, false) => EmailTls::StartTls,
    };
    if settings.flag("skip_verify")? == Some(true) {
        log.line(
            "setting `skip_verify` is not honoured: the server's certificate is always \
             verified; for a server with a private CA, give the CA's PEM in the `ca_cert` \
             setting (e.g. from a secret)",
        );
    }
    let root_pem = settings.text(&["ca_cert"]);
    if let Some(pem) = &root_pem
        && !pem.contains("-----BEGIN CERTIFICATE-----")
    {
        return Err(PluginError::setting(
            "ca_cert",
            "is not a PEM certificate (-----BEGIN CERTIFICATE----- ...)",
        ));
    }
    for ignored in ["attachment", "attachments"] {
        if settings.has(ignored) {
            log.line(&format!(
                "setting `{ignored}` is not sent natively (no attachments)"
            ));
        }
    }

    let mut recipients = settings
        .list_or_env("recipients", "EMAIL_RECIPIENTS")
        .unwrap_or_default();
    if let Some(file) = settings.text_or_env("recipients_file", "EMAIL_RECIPIENTS_FILE") {
        let text = workspace_text(host, "recipients_file", &file)?;
        recipients.extend(
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .map(str::to_string),
        );
    }
    let author = env
        .get("DRONE_COMMIT_AUTHOR_EMAIL")
        .map(|a| a.trim().to_string())
        .unwrap_or_default();
    if !settings.flag("recipients_only")?.unwrap_or(false) && !author.is_empty() {
        recipients.push(author);
    }
    let mut seen = BTreeSet::new();
    recipients.retain(|r| seen.insert(r.to_ascii_lowercase()));
    if recipients.is_empty() {
        return Err(PluginError::setting(
            "recipients",
            "no recipient: none is set and the commit author's email is not known (or \
             `recipients_only` is on)",
        ));
    }

    let names = email_names(context, env);
    let mut message = template::default_message(context);
    let subject = settings
        .text(&["subject"])
        .unwrap_or_else(|| EMAIL_SUBJECT.to_string());
    if let Some(subject) = render_with(log, "subject", &subject, context, &names) {
        // A header line: the template's line breaks (a folded YAML scalar) become spaces.
        let subject = subject.split_whitespace().collect::<Vec<_>>().join(" ");
        if !subject.is_empty() {
            message.title = subject;
        }
    }
    let mut html = None;
    match settings.text(&["body"]) {
        Some(body) if is_url(&body) => log.line(
            "setting `body` is a URL: remote templates are not fetched natively; sending the \
             default body",
        ),
        Some(body) => {
            if let Some(text) = render_with(log, "body", &body, context, &names) {
                if looks_like_html(&text) {
                    html = Some(text);
                } else {
                    message.text = text.trim().to_string();
                    message.fields.clear();
                    message.link = None;
                }
            }
        }
        None => {}
    }
    let hello_name = settings
        .text(&["client_hostname", "clienthostname"])
        .or_else(|| settings.text_or_env("clienthostname", "EMAIL_CLIENTHOSTNAME"));
    let username = settings.text_or_env("username", "EMAIL_USERNAME");
    let password = settings
        .text_or_env("password", "EMAIL_PASSWORD")
        .map(Secret::new);
    log.line(&format!(
        "sending through {server}:{port} ({}) to {}",
        match tls {
            EmailTls::StartTls => "STARTTLS",
            EmailTls::Implicit => "implicit TLS",
            EmailTls::None => "no TLS",
        },
        recipients.join(", ")
    ));
    let channels = recipients
        .into_iter()
        .map(|recipient| {
            let config = Email {
                host: server.clone(),
                port,
                tls,
                username: username.clone(),
                password: password.clone(),
                from: from.clone(),
                to: vec![recipient.clone()],
                root_pem: root_pem.clone(),
                tls_name: None,
                hello_name: hello_name.clone(),
                html: html.clone(),
            };
            Channel::new(recipient, ChannelConfig::Email(config))
        })
        .collect();
    Ok((channels, message))
}

/// Where lddsb/drone-dingtalk-message keeps its own templates, in its image.
const DINGTALK_PLUGIN_TPLS: &str = "/app/drone/dingtalk/message/tpls/";

fn dingtalk(
    settings: &Settings<'_>,
    context: &Context,
    env: &BTreeMap<String, String>,
    host: NativeHost<'_>,
    log: &NativeLog,
) -> Result<Plan, PluginError> {
    let token = required(settings, &["token", "access_token"])?;
    let msg_type = match settings.text(&["type", "msg_type", "message_type"]) {
        Some(text) => DingTalkMsgType::parse(&text).ok_or_else(|| {
            PluginError::setting(
                "type",
                format!("`{text}` is not markdown, text, link, actionCard or feedCard"),
            )
        })?,
        None => DingTalkMsgType::Markdown,
    };
    for ignored in ["debug", "lang", "message_color", "message_pic", "sha_link"] {
        if settings.has(ignored) {
            log.line(&format!("setting `{ignored}` is ignored natively"));
        }
    }
    let overrides = tpl::Overrides {
        repo_full_name: settings.text(&["tpl_repo_full_name"]),
        repo_short_name: settings.text(&["tpl_repo_short_name"]),
        commit_branch: settings.text(&["tpl_commit_branch_name"]),
        status_success: settings.text(&["tpl_build_status_success"]),
        status_failure: settings.text(&["tpl_build_status_failure"]),
        success_color: settings.text(&["success_color"]),
        failure_color: settings.text(&["failure_color"]),
        success_pic: settings.text(&["success_pic"]),
        failure_pic: settings.text(&["failure_pic"]),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let values = tpl::values(env, &overrides, now);

    let source = match settings.text(&["tpl", "custom_tpl"]) {
        Some(path) if is_url(&path) => {
            log.line(
                "setting `tpl` is a URL: remote templates are not fetched natively; sending \
                 the default message",
            );
            None
        }
        Some(path) if path.starts_with(DINGTALK_PLUGIN_TPLS) => {
            log.line(&format!(
                "`{path}` is a template of the plugin's image, which does not run here; \
                 sending the default message"
            ));
            None
        }
        Some(path) => Some(workspace_text(host, "tpl", &path)?),
        None => None,
    };
    let mut message = template::default_message(context);
    let mut title = settings.text(&["tips_title"]);
    if let Some(source) = source {
        // The template is the whole text; the notification keeps a title.
        title = title.or_else(|| Some(std::mem::take(&mut message.title)));
        message.title.clear();
        message.text = tpl::fill(&source, &values, env).trim_end().to_string();
        message.fields.clear();
        if matches!(msg_type, DingTalkMsgType::Markdown | DingTalkMsgType::Text) {
            message.link = None;
        }
    }
    let linked = matches!(
        msg_type,
        DingTalkMsgType::Link | DingTalkMsgType::ActionCard | DingTalkMsgType::FeedCard
    );
    if linked && message.link.is_none() {
        log.line(&format!(
            "no build link: a {} message needs one, sending markdown",
            msg_type.as_str()
        ));
    }
    let pic = &values["TPL_STATUS_PIC"];
    let pic_url = Some(pic.clone())
        .filter(|p| !p.is_empty())
        .or_else(|| Some(context.build.author_avatar.clone()).filter(|a| !a.is_empty()));
    let config = DingTalk {
        access_token: Secret::new(token),
        secret: settings.text(&["secret"]).map(Secret::new),
        at_mobiles: recipients(settings, &["msg_at_mobiles"]),
        at_all: settings.flag("msg_at_all")?.unwrap_or(false),
        keywords: Vec::new(),
        msg_type,
        title,
        pic_url,
    };
    Ok((
        vec![Channel::new("dingtalk", ChannelConfig::DingTalk(config))],
        message,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_bodies_are_told_from_text() {
        assert!(looks_like_html("<h1>Build</h1>"));
        assert!(looks_like_html("ok<br/>done"));
        assert!(looks_like_html("<!DOCTYPE html>"));
        assert!(looks_like_html("a <p class=\"x\">b</p>"));
        assert!(!looks_like_html("Build 7 by Octo <octo@example.com>"));
        assert!(!looks_like_html("1 < 2 and 3 > 2"));
        assert!(!looks_like_html("plain text"));
    }

    #[test]
    fn from_with_a_name() -> Result<(), PluginError> {
        let env = BTreeMap::new();
        let plan: BTreeMap<String, serde_json::Value> = [
            ("from.address".to_string(), json!("ci@example.com")),
            ("from.name".to_string(), json!("Slipway \"CI\"")),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            email_from(&Settings::new(&plan, &env))?,
            "\"Slipway \\\"CI\\\"\" <ci@example.com>"
        );
        let plan: BTreeMap<String, serde_json::Value> =
            [("from".to_string(), json!("Robot <r@example.com>"))]
                .into_iter()
                .collect();
        assert_eq!(
            email_from(&Settings::new(&plan, &env))?,
            "Robot <r@example.com>"
        );
        let none = BTreeMap::new();
        assert!(email_from(&Settings::new(&none, &env)).is_err());
        Ok(())
    }
}
