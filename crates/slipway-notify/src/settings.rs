//! A channel from named settings: what `slipway notify add --kind KIND --url URL
//! --set NAME=VALUE --secret NAME=VALUE` stores and the server reads back.
//!
//! Each kind has its list of [`SettingSpec`]s: which names it reads, which are required and
//! which are credentials (stored sealed, never shown). A name the kind does not read, a
//! credential given as a plain setting, or a value that does not parse is a
//! [`SettingsError`] naming the setting and what it wants; nothing is half-read.

use std::collections::BTreeMap;

use crate::channels::{Channel, ChannelConfig};
use crate::{
    DingTalk, Discord, Email, EmailTls, Feishu, Kind, Secret, Slack, Teams, Telegram,
    WeChatMsgType, WeChatRobot, WeChatRobotFormat, WeChatWork, Webhook, WebhookBody,
};

/// One setting a kind reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettingSpec {
    pub name: &'static str,
    /// A credential: given with `--secret`, stored sealed, never printed.
    pub secret: bool,
    pub required: bool,
    pub help: &'static str,
}

const fn plain(name: &'static str, help: &'static str) -> SettingSpec {
    SettingSpec {
        name,
        secret: false,
        required: false,
        help,
    }
}

const fn required(name: &'static str, help: &'static str) -> SettingSpec {
    SettingSpec {
        name,
        secret: false,
        required: true,
        help,
    }
}

const fn credential(name: &'static str, required: bool, help: &'static str) -> SettingSpec {
    SettingSpec {
        name,
        secret: true,
        required,
        help,
    }
}

/// The settings `kind` reads.
pub fn specs(kind: Kind) -> &'static [SettingSpec] {
    match kind {
        Kind::WeChatWork => {
            const {
                &[
                    required("corp_id", "the corp id (corpid)"),
                    credential("corp_secret", true, "the application's secret (corpsecret)"),
                    required("agent_id", "the application's agentid"),
                    plain("to_user", "user ids, `|` or `,` separated (default @all)"),
                    plain("to_party", "department ids"),
                    plain("to_tag", "tag ids"),
                    plain("msg_type", "textcard (default), markdown or text"),
                ]
            }
        }
        Kind::WeChatWorkRobot => {
            const {
                &[
                    credential(
                        "url",
                        true,
                        "the robot's webhook URL (…/cgi-bin/webhook/send?key=…) or its key",
                    ),
                    plain("format", "markdown (default) or text"),
                    plain("mentioned", "user ids to mention in text messages (@all)"),
                    plain("mentioned_mobiles", "mobile numbers to mention"),
                ]
            }
        }
        Kind::DingTalk => {
            const {
                &[
                    credential(
                        "url",
                        true,
                        "the robot's webhook URL (…/robot/send?access_token=…) or its token",
                    ),
                    credential(
                        "secret",
                        false,
                        "the signing secret (SEC…), when signing is on",
                    ),
                    plain("at_mobiles", "mobile numbers to mention"),
                    plain("at_all", "true to mention everyone"),
                    plain(
                        "keywords",
                        "the robot's keywords (one is added when missing)",
                    ),
                ]
            }
        }
        Kind::Feishu => {
            const {
                &[
                    credential(
                        "url",
                        true,
                        "the bot's webhook URL (…/open-apis/bot/v2/hook/…) or its token",
                    ),
                    credential("secret", false, "the signing secret, when signing is on"),
                ]
            }
        }
        Kind::Slack => {
            const {
                &[
                    credential("url", true, "the incoming webhook URL"),
                    plain("channel", "the channel to post in"),
                    plain("username", "the name to post as"),
                    plain("icon_url", "an icon URL"),
                    plain("icon_emoji", "an icon emoji (:rocket:)"),
                    plain("color", "the attachment colour (default by status)"),
                    plain("link_names", "true to link @names"),
                ]
            }
        }
        Kind::Discord => {
            const {
                &[
                    credential("url", true, "the webhook URL"),
                    plain("username", "the name to post as"),
                    plain("avatar_url", "an avatar URL"),
                ]
            }
        }
        Kind::Teams => const { &[credential("url", true, "the workflow's webhook URL")] },
        Kind::Telegram => {
            const {
                &[
                    credential("token", true, "the bot token"),
                    required("chat_id", "the chat to post in"),
                    plain("disable_notification", "true to post silently"),
                ]
            }
        }
        Kind::Webhook => {
            const {
                &[
                    credential("url", true, "where to send"),
                    plain("method", "POST (default), PUT, …"),
                    plain("content_type", "default application/json"),
                    plain("headers", "extra headers, `Name: value` separated by `;`"),
                    plain("username", "basic auth user"),
                    credential("password", false, "basic auth password"),
                    credential("token", false, "sent as Authorization: Bearer"),
                    credential(
                        "signature_secret",
                        false,
                        "signs the body: X-Drone-Signature: sha256=HMAC",
                    ),
                    plain(
                        "valid_codes",
                        "statuses that count as accepted (default any 2xx)",
                    ),
                    plain("body", "message (default: JSON of the message) or text"),
                ]
            }
        }
        Kind::Email => {
            const {
                &[
                    required("host", "the SMTP server"),
                    plain(
                        "port",
                        "default 587 (465 with tls=implicit, 25 with tls=none)",
                    ),
                    plain("tls", "starttls (default), implicit or none"),
                    plain("username", "SMTP user"),
                    credential("password", false, "SMTP password"),
                    required("from", "the sender (`Name <addr>` or an address)"),
                    required("to", "recipients, `,` separated"),
                    plain(
                        "ca_file",
                        "a PEM file of extra trusted roots (a private CA)",
                    ),
                    plain("tls_name", "the name the certificate is checked against"),
                ]
            }
        }
    }
}

/// A setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("{kind}: unknown setting `{name}` (it reads: {known})")]
    Unknown {
        kind: Kind,
        name: String,
        known: String,
    },
    #[error("{kind}: `{name}` is a credential: give it with --secret {name}=…, not --set")]
    NotSecret { kind: Kind, name: String },
    #[error("{kind}: `{name}` is not a credential: give it with --set {name}=…")]
    NotPlain { kind: Kind, name: String },
    #[error("{kind}: setting `{name}` is required ({help})")]
    Missing {
        kind: Kind,
        name: &'static str,
        help: &'static str,
    },
    #[error("{kind}: setting `{name}`: {message}")]
    Invalid {
        kind: Kind,
        name: String,
        message: String,
    },
}

/// A channel's settings as stored: plain ones and credentials apart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pub plain: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
}

impl Settings {
    /// Checks names and places against `kind`'s list and that the channel can be built.
    pub fn check(&self, kind: Kind) -> Result<(), SettingsError> {
        let specs = specs(kind);
        let known = || specs.iter().map(|s| s.name).collect::<Vec<_>>().join(", ");
        for (name, secret) in self
            .plain
            .keys()
            .map(|n| (n, false))
            .chain(self.secrets.keys().map(|n| (n, true)))
        {
            let Some(spec) = specs.iter().find(|s| s.name == name) else {
                return Err(SettingsError::Unknown {
                    kind,
                    name: name.clone(),
                    known: known(),
                });
            };
            match (spec.secret, secret) {
                (true, false) => {
                    return Err(SettingsError::NotSecret {
                        kind,
                        name: name.clone(),
                    });
                }
                (false, true) => {
                    return Err(SettingsError::NotPlain {
                        kind,
                        name: name.clone(),
                    });
                }
                _ => {}
            }
        }
        self.channel("check", kind).map(|_| ())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.plain
            .get(name)
            .or_else(|| self.secrets.get(name))
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    fn need(&self, kind: Kind, name: &'static str) -> Result<&str, SettingsError> {
        self.get(name).ok_or_else(|| SettingsError::Missing {
            kind,
            name,
            help: specs(kind)
                .iter()
                .find(|s| s.name == name)
                .map_or("", |s| s.help),
        })
    }

    fn list(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|v| {
                v.split([',', '|'])
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn flag(&self, kind: Kind, name: &str) -> Result<bool, SettingsError> {
        match self.get(name) {
            None => Ok(false),
            Some("true" | "yes" | "1" | "on") => Ok(true),
            Some("false" | "no" | "0" | "off") => Ok(false),
            Some(other) => Err(invalid(
                kind,
                name,
                format!("`{other}` is not true or false"),
            )),
        }
    }

    fn secret(&self, name: &str) -> Option<Secret> {
        self.get(name).map(Secret::new)
    }

    /// The channel these settings describe, named `name`.
    pub fn channel(&self, name: &str, kind: Kind) -> Result<Channel, SettingsError> {
        Ok(Channel::new(name, self.config(kind)?))
    }

    fn config(&self, kind: Kind) -> Result<ChannelConfig, SettingsError> {
        Ok(match kind {
            Kind::WeChatWork => {
                let (corp_id, corp_secret) =
                    (self.need(kind, "corp_id")?, self.need(kind, "corp_secret")?);
                let agent = self.need(kind, "agent_id")?;
                let agent_id = agent
                    .parse::<i64>()
                    .map_err(|_| invalid(kind, "agent_id", format!("`{agent}` is not a number")))?;
                let mut config = WeChatWork::new(corp_id, corp_secret, agent_id);
                config.to_user = self.list("to_user");
                config.to_party = self.list("to_party");
                config.to_tag = self.list("to_tag");
                if let Some(t) = self.get("msg_type") {
                    config.msg_type = WeChatMsgType::parse(t).ok_or_else(|| {
                        invalid(
                            kind,
                            "msg_type",
                            format!("`{t}`: textcard, markdown or text"),
                        )
                    })?;
                }
                ChannelConfig::WeChatWork(config)
            }
            Kind::WeChatWorkRobot => ChannelConfig::WeChatWorkRobot(WeChatRobot {
                key: Secret::new(query_or_whole(self.need(kind, "url")?, "key")),
                format: match self.get("format") {
                    None | Some("markdown") => WeChatRobotFormat::Markdown,
                    Some("text") => WeChatRobotFormat::Text,
                    Some(other) => {
                        return Err(invalid(
                            kind,
                            "format",
                            format!("`{other}`: markdown or text"),
                        ));
                    }
                },
                mentioned: self.list("mentioned"),
                mentioned_mobiles: self.list("mentioned_mobiles"),
            }),
            Kind::DingTalk => ChannelConfig::DingTalk(DingTalk {
                access_token: Secret::new(query_or_whole(self.need(kind, "url")?, "access_token")),
                secret: self.secret("secret"),
                at_mobiles: self.list("at_mobiles"),
                at_all: self.flag(kind, "at_all")?,
                keywords: self.list("keywords"),
                ..DingTalk::default()
            }),
            Kind::Feishu => ChannelConfig::Feishu(Feishu {
                token: Secret::new(last_segment(self.need(kind, "url")?)),
                secret: self.secret("secret"),
            }),
            Kind::Slack => ChannelConfig::Slack(Slack {
                url: Secret::new(self.need(kind, "url")?),
                channel: self.get("channel").map(str::to_owned),
                username: self.get("username").map(str::to_owned),
                icon_url: self.get("icon_url").map(str::to_owned),
                icon_emoji: self.get("icon_emoji").map(str::to_owned),
                link_names: self.flag(kind, "link_names")?,
                color: self.get("color").map(str::to_owned),
            }),
            Kind::Discord => ChannelConfig::Discord(Discord {
                url: Secret::new(self.need(kind, "url")?),
                username: self.get("username").map(str::to_owned),
                avatar_url: self.get("avatar_url").map(str::to_owned),
            }),
            Kind::Teams => ChannelConfig::Teams(Teams {
                url: Secret::new(self.need(kind, "url")?),
            }),
            Kind::Telegram => ChannelConfig::Telegram(Telegram {
                token: Secret::new(self.need(kind, "token")?),
                chat_id: self.need(kind, "chat_id")?.to_owned(),
                disable_notification: self.flag(kind, "disable_notification")?,
            }),
            Kind::Webhook => {
                let mut config = Webhook::new(self.need(kind, "url")?);
                if let Some(m) = self.get("method") {
                    config.method = m.to_ascii_uppercase();
                }
                if let Some(c) = self.get("content_type") {
                    config.content_type = c.to_owned();
                }
                for header in self.get("headers").unwrap_or_default().split(';') {
                    let header = header.trim();
                    if header.is_empty() {
                        continue;
                    }
                    let (name, value) = header.split_once(':').ok_or_else(|| {
                        invalid(kind, "headers", format!("`{header}` is not `Name: value`"))
                    })?;
                    config
                        .headers
                        .push((name.trim().to_owned(), value.trim().to_owned()));
                }
                config.username = self.get("username").map(str::to_owned);
                config.password = self.secret("password");
                config.token = self.secret("token");
                config.signature_secret = self.secret("signature_secret");
                for code in self.list("valid_codes") {
                    config.valid_codes.push(code.parse().map_err(|_| {
                        invalid(kind, "valid_codes", format!("`{code}` is not a status"))
                    })?);
                }
                config.body = match self.get("body") {
                    None | Some("message") => WebhookBody::Message,
                    Some("text") => WebhookBody::Text,
                    Some(other) => {
                        return Err(invalid(kind, "body", format!("`{other}`: message or text")));
                    }
                };
                ChannelConfig::Webhook(config)
            }
            Kind::Email => {
                let tls = match self.get("tls") {
                    None | Some("starttls") => EmailTls::StartTls,
                    Some("implicit") => EmailTls::Implicit,
                    Some("none") => EmailTls::None,
                    Some(other) => {
                        return Err(invalid(
                            kind,
                            "tls",
                            format!("`{other}`: starttls, implicit or none"),
                        ));
                    }
                };
                let port = match self.get("port") {
                    Some(p) => p
                        .parse::<u16>()
                        .map_err(|_| invalid(kind, "port", format!("`{p}` is not a port")))?,
                    None => match tls {
                        EmailTls::StartTls => 587,
                        EmailTls::Implicit => 465,
                        EmailTls::None => 25,
                    },
                };
                let root_pem = match self.get("ca_file") {
                    Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                        invalid(kind, "ca_file", format!("cannot read `{path}`: {e}"))
                    })?),
                    None => None,
                };
                let to = self.list("to");
                if to.is_empty() {
                    return Err(SettingsError::Missing {
                        kind,
                        name: "to",
                        help: "recipients, `,` separated",
                    });
                }
                ChannelConfig::Email(Email {
                    host: self.need(kind, "host")?.to_owned(),
                    port,
                    tls,
                    username: self.get("username").map(str::to_owned),
                    password: self.secret("password"),
                    from: self.need(kind, "from")?.to_owned(),
                    to,
                    root_pem,
                    tls_name: self.get("tls_name").map(str::to_owned),
                    hello_name: None,
                    html: None,
                })
            }
        })
    }
}

fn invalid(kind: Kind, name: &str, message: String) -> SettingsError {
    SettingsError::Invalid {
        kind,
        name: name.to_owned(),
        message,
    }
}

/// `https://host/path?key=K&…` → `K`; a bare value stays as it is.
fn query_or_whole(value: &str, param: &str) -> String {
    let Some((_, query)) = value.split_once('?') else {
        return value.to_owned();
    };
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(param)?.strip_prefix('='))
        .unwrap_or(value)
        .to_owned()
}

/// `https://open.feishu.cn/open-apis/bot/v2/hook/TOKEN` → `TOKEN`.
fn last_segment(value: &str) -> String {
    if !value.contains("://") {
        return value.to_owned();
    }
    let path = value.split(['?', '#']).next().unwrap_or(value);
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(value)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(plain: &[(&str, &str)], secrets: &[(&str, &str)]) -> Settings {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        Settings {
            plain: map(plain),
            secrets: map(secrets),
        }
    }

    #[test]
    fn a_robot_url_gives_its_key_and_a_feishu_url_its_token() {
        let s = settings(
            &[],
            &[(
                "url",
                "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abc-123",
            )],
        );
        let Ok(channel) = s.channel("r", Kind::WeChatWorkRobot) else {
            panic!("robot");
        };
        let ChannelConfig::WeChatWorkRobot(robot) = channel.config else {
            panic!("kind");
        };
        assert_eq!(robot.key.expose(), "abc-123");
        assert_eq!(
            last_segment("https://open.feishu.cn/open-apis/bot/v2/hook/tok-9/"),
            "tok-9"
        );
        assert_eq!(
            query_or_whole(
                "https://oapi.dingtalk.com/robot/send?access_token=T1",
                "access_token"
            ),
            "T1"
        );
        assert_eq!(query_or_whole("bare", "key"), "bare");
    }

    #[test]
    fn credentials_must_be_secrets_and_unknown_names_are_refused() {
        let wrong_place = settings(&[("url", "https://hooks.slack.com/x")], &[]);
        assert!(matches!(
            wrong_place.check(Kind::Slack),
            Err(SettingsError::NotSecret { .. })
        ));
        let unknown = settings(&[("chanel", "#ops")], &[("url", "https://h/x")]);
        let err = unknown.check(Kind::Slack).expect_err("unknown");
        assert!(
            err.to_string().contains("unknown setting `chanel`"),
            "{err}"
        );
        assert!(err.to_string().contains("channel"), "{err}");
        let missing = settings(&[("corp_id", "c"), ("agent_id", "1")], &[]);
        let err = missing.check(Kind::WeChatWork).expect_err("missing");
        assert!(
            err.to_string().contains("`corp_secret` is required"),
            "{err}"
        );
        let bad = settings(
            &[("corp_id", "c"), ("agent_id", "one")],
            &[("corp_secret", "s")],
        );
        let err = bad.check(Kind::WeChatWork).expect_err("bad number");
        assert!(err.to_string().contains("agent_id"), "{err}");
    }

    #[test]
    fn email_ports_follow_the_tls_mode() {
        let s = settings(
            &[
                ("host", "mail"),
                ("tls", "implicit"),
                ("from", "ci@x"),
                ("to", "a@x, b@x"),
            ],
            &[],
        );
        let Ok(Channel {
            config: ChannelConfig::Email(email),
            ..
        }) = s.channel("e", Kind::Email)
        else {
            panic!("email");
        };
        assert_eq!(email.port, 465);
        assert_eq!(email.to, ["a@x", "b@x"]);
    }
}
