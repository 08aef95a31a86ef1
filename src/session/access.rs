use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Instant;

use crate::proto::{Command, ReplyCode, TargetAddr};

/// One access-log line, filled in as the session goes.
pub struct AccessRecord {
    pub conn_id: u64,
    pub core: usize,
    pub client: SocketAddr,
    pub started: Instant,
    pub user: Option<String>,
    /// How the client authenticated: `none`, `userpass`, or `gssapi-`
    /// and the protection level.
    pub auth: Option<&'static str>,
    pub command: Option<Command>,
    pub target: Option<TargetAddr>,
    pub resolved: Option<SocketAddr>,
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
    pub fn new(core: usize, conn_id: u64, client: SocketAddr) -> AccessRecord {
        AccessRecord {
            conn_id,
            core,
            client,
            started: Instant::now(),
            user: None,
            auth: None,
            command: None,
            target: None,
            resolved: None,
            reply: None,
            rule: None,
            up: 0,
            down: 0,
            engine: None,
            end: None,
        }
    }

    /// logfmt: `key=value` pairs, `-` for absent values; user names and
    /// domains are quoted when they hold spaces, quotes or `=`.
    pub fn line(&self) -> String {
        let mut s = String::with_capacity(256);
        let dash = |o: Option<String>| o.unwrap_or_else(|| "-".to_owned());
        let _ = write!(
            s,
            "conn={}.{} client={} user={} auth={} cmd={} target={} resolved={} reply={} rule={} up={} down={} duration_ms={} engine={} end={}",
            self.core,
            self.conn_id,
            self.client,
            dash(self.user.as_deref().map(quote)),
            self.auth.unwrap_or("-"),
            dash(self.command.map(|c| c.as_str().to_owned())),
            dash(self.target.as_ref().map(|t| quote(&t.to_string()))),
            dash(self.resolved.map(|a| a.to_string())),
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
            "cmd=connect",
            "target=example.com:443",
            "resolved=-",
            "reply=connection-refused",
            "rule=--deny#2",
            "up=0",
            "down=0",
            "engine=-",
            "end=connect-failed",
        ] {
            assert!(line.contains(want), "{want} not in {line}");
        }
    }
}
