//! Bearer-token authentication with roles.
//!
//! Roles are ordered: `read` (selects, depot and dead-letter reads) < `write` (appends) <
//! `admin` (deploy, delete, dead-letter replay). With no token configured every request is
//! allowed, and the binary refuses to listen beyond loopback unless `--insecure`. Invariant:
//! when tokens are configured, every route except `/health` needs a valid token of a
//! sufficient role: 401 without one, 403 with a too-weak one.

use std::collections::HashMap;

use hyper::{HeaderMap, Method, StatusCode};

use super::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Read,
    Write,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// Token → role; empty means authentication is off.
#[derive(Debug, Default, Clone)]
pub struct Tokens(HashMap<String, Role>);

impl Tokens {
    /// Adds `ROLE=TOKEN`.
    pub fn add_spec(&mut self, spec: &str) -> Result<(), String> {
        let (role, token) = spec
            .split_once('=')
            .ok_or_else(|| format!("token `{spec}`: expected ROLE=TOKEN"))?;
        let role = Role::parse(role.trim())
            .ok_or_else(|| format!("unknown role `{role}` (read, write, admin)"))?;
        let token = token.trim();
        if token.len() < 8 {
            return Err("a token must have at least 8 characters".into());
        }
        self.0.insert(token.to_string(), role);
        Ok(())
    }

    /// Adds every `ROLE=TOKEN` line of a file (blank lines and `#` comments skipped).
    pub fn add_file(&mut self, text: &str) -> Result<(), String> {
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            self.add_spec(line)?;
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Who a request is, for audit lines: its role and the token's last four characters
    /// (never the token), or that auth is off.
    pub fn who(&self, headers: &HeaderMap) -> String {
        if self.0.is_empty() {
            return "anyone (auth off)".into();
        }
        let token = headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        match self.0.get(token) {
            Some(role) => {
                let tail: String = token
                    .chars()
                    .rev()
                    .take(4)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                format!("{} token …{tail}", role.name())
            }
            None => "unknown token".into(),
        }
    }

    /// Checks a request against the role its route needs.
    pub fn check(
        &self,
        method: &Method,
        segments: &[&str],
        headers: &HeaderMap,
    ) -> Result<(), ApiError> {
        let token = headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        self.check_token(method, segments, token)
    }

    /// Checks a token, however it came (a subscription may pass it as `?access_token=`).
    pub fn check_token(
        &self,
        method: &Method,
        segments: &[&str],
        token: Option<&str>,
    ) -> Result<(), ApiError> {
        if self.0.is_empty() || matches!(segments, ["health"] | ["health", "ready"]) {
            return Ok(());
        }
        let need = required_role(method, segments);
        let Some(role) = token.and_then(|t| self.0.get(t.trim())) else {
            let mut e = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid `Authorization: Bearer <token>` header is required",
            );
            e.headers.push((
                hyper::header::WWW_AUTHENTICATE,
                "Bearer realm=\"sluice\"".into(),
            ));
            return Err(e);
        };
        if *role < need {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this needs the `{}` role; the token has `{}`",
                    need.name(),
                    role.name()
                ),
            ));
        }
        Ok(())
    }
}

fn required_role(method: &Method, segments: &[&str]) -> Role {
    match (method, segments) {
        (&Method::PUT | &Method::DELETE, ["v1", "modules", _]) => Role::Admin,
        (_, [.., "dead-letters", "replay"]) => Role::Admin,
        (&Method::DELETE, [.., "dead-letters"]) => Role::Admin,
        (&Method::POST, ["v1", "clock"]) => Role::Admin,
        (&Method::POST, [.., "append"]) => Role::Write,
        _ => Role::Read,
    }
}
