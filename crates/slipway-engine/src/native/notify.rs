//! Notification plugins, natively: `clem109/drone-wechat` and `lizheming/drone-wechat`
//! (WeChat Work application messages), `plugins/slack`, `plugins/webhook`,
//! `appleboy/drone-telegram` and `appleboy/drone-discord`, sent with [`slipway_notify`]
//! instead of the plugin's container.
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
//!
//! The API base of each service is the one given with `--notify-api KIND=URL`
//! ([`crate::RunOptions::notify_api`]), else the service's own. The step fails when the
//! service refused the message (after the retries a busy service gets), with its answer in
//! the log; the step's own credentials are masked in every line, like secrets.

use std::collections::BTreeMap;

use slipway_notify::template::{self, Context};
use slipway_notify::{
    Channel, ChannelConfig, Delivery, Kind, Message, Notifier, NotifierConfig, Secret, Slack,
    WeChatMsgType, WeChatWork, Webhook, WebhookBody,
};

use super::settings::Settings;
use super::{NativeLog, PluginError};
use crate::backend::StepSpec;
use crate::log::StepLog;

/// Which notification plugin a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotifyPlugin {
    WeChat,
    Slack,
    Webhook,
    Telegram,
    Discord,
}

/// Runs a notification plugin step. `Err` is the failure's message, masked.
pub(crate) async fn run(
    plugin: NotifyPlugin,
    image: &str,
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
    ]
    .iter()
    .filter_map(|key| settings.text(&[key]))
    .chain(settings.list(&["urls"]).unwrap_or_default())
    .chain(spec.env.get("SLACK_WEBHOOK").cloned())
    .chain(spec.env.get("WEBHOOK_URLS").cloned())
    .chain(spec.env.get("TELEGRAM_TOKEN").cloned())
    .chain(spec.env.get("DISCORD_WEBHOOK_TOKEN").cloned())
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
    };
    let (channels, message) = result.map_err(|e| log.mask(&e.to_string()))?;
    let notifier = Notifier::new(NotifierConfig {
        api: notify_api.clone(),
        ..NotifierConfig::default()
    })
    .map_err(|e| e.to_string())?;
    let mut failed = Vec::new();
    for channel in &channels {
        let delivery = notifier.deliver(channel, &message).await;
        report(&log, channel, &delivery);
        if let Err(error) = &delivery.outcome {
            failed.push(log.mask(&error.to_string()));
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
    match template::render(&template::from_handlebars(source), context) {
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
