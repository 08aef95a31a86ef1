use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Instant;

use crate::config::AccessLogFormat;
use crate::proto::{Command, ReplyCode, TargetAddr};

/// One access-log line, filled in as the session goes.
pub(crate) struct AccessRecord {
    pub conn_id: u64,
    pub core: usize,
    pub client: SocketAddr,
    pub started: Instant,
    pub user: Option<String>,
    /// How the client authenticated: `none`, `userpass`, or `gssapi-`
    /// and the protection level.
    pub auth: Option<&'static str>,
    /// The protocol the client spoke: `socks5`, `socks4` (4a too) or
    /// `http-connect`; absent when its first byte named none served here.
    pub protocol: Option<&'static str>,
    pub command: Option<Command>,
    pub target: Option<TargetAddr>,
    pub resolved: Option<SocketAddr>,
    /// The proxy's own address on the outbound side (what the target saw:
    /// abuse reports name it); for UDP, the association's outbound socket.
    pub outbound: Option<SocketAddr>,
    pub reply: Option<ReplyCode>,
    /// The egress rule that decided the request (`private` for the
    /// built-in default), when one did.
    pub rule: Option<String>,
    /// Bytes client -> target and target -> client (UDP: payload bytes).
    pub up: u64,
    pub down: u64,
    /// `copy`, `splice`, `sealed` (GSSAPI protection) or `udp`.
    pub engine: Option<&'static str>,
    pub end: Option<String>,
}

impl AccessRecord {
    pub(crate) fn new(core: usize, conn_id: u64, client: SocketAddr) -> AccessRecord {
        AccessRecord {
            conn_id,
            core,
            client,
            started: Instant::now(),
            user: None,
            auth: None,
            protocol: None,
            command: None,
            target: None,
            resolved: None,
            outbound: None,
            reply: None,
            rule: None,
            up: 0,
            down: 0,
            engine: None,
            end: None,
        }
    }

    /// The line in `format`.
    pub(crate) fn render(&self, format: AccessLogFormat) -> String {
        match format {
            AccessLogFormat::Logfmt => self.line(),
            AccessLogFormat::Json => self.json(),
        }
    }

    /// logfmt: `key=value` pairs, `-` for absent values; user names and
    /// domains are quoted when they hold spaces, quotes or `=`.
    pub(crate) fn line(&self) -> String {
        let mut s = String::with_capacity(256);
        let dash = |o: Option<String>| o.unwrap_or_else(|| "-".to_owned());
        let _ = write!(
            s,
            "conn={}.{} client={} user={} auth={} proto={} cmd={} target={} resolved={} out={} reply={} rule={} up={} down={} duration_ms={} engine={} end={}",
            self.core,
            self.conn_id,
            self.client,
            dash(self.user.as_deref().map(quote)),
            self.auth.unwrap_or("-"),
            self.protocol.unwrap_or("-"),
            dash(self.command.map(|c| c.as_str().to_owned())),
            dash(self.target.as_ref().map(|t| quote(&t.to_string()))),
            dash(self.resolved.map(|a| a.to_string())),
            dash(self.outbound.map(|a| a.to_string())),
            dash(self.reply.map(|r| r.as_str().to_owned())),
            dash(self.rule.clone()),
            self.up,
            self.down,
            self.started.elapsed().as_millis(),
            self.engine.unwrap_or("-"),
            quote(self.end.as_deref().unwrap_or("-")),
        );
        s
    }

    /// One JSON object with logfmt's keys; absent values are null,
    /// counts are numbers.
    pub(crate) fn json(&self) -> String {
        let text = |v: Option<String>| v.map_or(serde_json::Value::Null, serde_json::Value::from);
        serde_json::json!({
            "conn": format!("{}.{}", self.core, self.conn_id),
            "client": self.client.to_string(),
            "user": self.user.clone(),
            "auth": self.auth,
            "proto": self.protocol,
            "cmd": self.command.map(|c| c.as_str()),
            "target": text(self.target.as_ref().map(|t| t.to_string())),
            "resolved": text(self.resolved.map(|a| a.to_string())),
            "out": text(self.outbound.map(|a| a.to_string())),
            "reply": self.reply.map(|r| r.as_str()),
            "rule": self.rule.clone(),
            "up": self.up,
            "down": self.down,
            "duration_ms": self.started.elapsed().as_millis() as u64,
            "engine": self.engine,
            "end": self.end.clone(),
        })
        .to_string()
    }
}

fn quote(v: &str) -> String {
    if v.is_empty()
        || v.contains(|c: char| c.is_whitespace() || c == '"' || c == '=' || c.is_control())
    {
        format!("{v:?}")
    } else {
        v.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_has_every_field_and_quotes_odd_values() {
        let mut r = AccessRecord::new(1, 7, "127.0.0.1:5000".parse().unwrap());
        r.user = Some("a b".into());
        r.auth = Some("gssapi-integrity");
        r.protocol = Some("socks5");
        r.command = Some(Command::Connect);
        r.target = Some(TargetAddr::Domain("example.com".into(), 443));
        r.reply = Some(ReplyCode::ConnectionRefused);
        r.end = Some("connect-failed".into());
        r.rule = Some("--deny#2".into());
        let line = r.line();
        for want in [
            "conn=1.7",
            "client=127.0.0.1:5000",
            "user=\"a b\"",
            "auth=gssapi-integrity",
            "proto=socks5",
            "cmd=connect",
            "target=example.com:443",
            "resolved=-",
            "reply=connection-refused",
            "rule=--deny#2",
            "up=0",
            "down=0",
            "engine=-",
            "end=connect-failed",
            "out=-",
        ] {
            assert!(line.contains(want), "{want} not in {line}");
        }
    }

    #[test]
    fn json_has_the_same_keys_with_nulls_and_numbers() {
        let mut r = AccessRecord::new(0, 3, "[::1]:5000".parse().unwrap());
        r.user = Some("a \"quoted\" user".into());
        r.command = Some(Command::Connect);
        r.target = Some(TargetAddr::Domain("example.com".into(), 443));
        r.outbound = Some("192.0.2.7:40000".parse().unwrap());
        r.up = 12;
        r.end = Some("closed".into());
        let v: serde_json::Value = serde_json::from_str(&r.render(AccessLogFormat::Json)).unwrap();
        assert_eq!(v["conn"], "0.3");
        assert_eq!(v["client"], "[::1]:5000");
        assert_eq!(v["user"], "a \"quoted\" user");
        assert_eq!(v["cmd"], "connect");
        assert_eq!(v["target"], "example.com:443");
        assert_eq!(v["out"], "192.0.2.7:40000");
        assert_eq!(v["up"], 12);
        assert!(v["resolved"].is_null() && v["reply"].is_null() && v["auth"].is_null());
        let line = r.render(AccessLogFormat::Logfmt);
        assert!(line.contains("out=192.0.2.7:40000"), "{line}");
        let keys: Vec<&str> = line
            .split(' ')
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
            .filter(|k| !k.contains('"'))
            .collect();
        for k in keys {
            assert!(v.get(k).is_some(), "json lacks {k}");
        }
    }
}
