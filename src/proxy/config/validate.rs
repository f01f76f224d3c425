//! Whether the `upstreams` section holds together: each entry's settings fit its kind
//! (an HTTP server, a virtual server, a stdio server), and the entries fit each other
//! (names, mounts, a virtual server's members).

use std::collections::HashSet;

use super::{UpstreamConfig, UpstreamKind, default_max_pending, is_tool_name};
use crate::proxy::routes::PathTemplate;
use crate::validate::{Checked, FieldError, require};

impl UpstreamConfig {
    /// The first setting of an HTTP tool server this entry has (neither a virtual server
    /// nor a stdio server may have one).
    fn http_setting(&self) -> Option<&'static str> {
        [
            ("url", self.url.is_some()),
            ("credential", self.credential.is_some()),
            ("tls", self.tls.is_some()),
            ("approval_token", self.approval_token.is_some()),
            ("routes", !self.routes.is_empty()),
            (
                "forward_agent_authorization",
                self.forward_agent_authorization,
            ),
        ]
        .into_iter()
        .find_map(|(key, set)| set.then_some(key))
    }

    /// A virtual MCP server: `servers` with distinct upstreams and names that cannot
    /// collide (no prefix is the start of another, aliases are valid tool names);
    /// nothing of a direct upstream's connection settings.
    fn validate_virtual(&self) -> Checked {
        require(
            self.kind == UpstreamKind::Mcp,
            "servers",
            "are only for kind: mcp",
        )?;
        require(
            self.mount.is_some(),
            "mount",
            "is required for a virtual server",
        )?;
        if let Some(key) = self.http_setting() {
            return Err(FieldError::new(
                key,
                "belongs on each server's own upstream entry, not on a virtual server",
            ));
        }
        let mut seen = HashSet::new();
        let prefixes: Vec<&str> = self
            .servers
            .iter()
            .filter_map(|s| s.tool_prefix.as_deref())
            .collect();
        for (i, s) in self.servers.iter().enumerate() {
            let at = |k: &str| format!("servers[{i}].{k}");
            require(
                seen.insert(s.upstream.as_str()),
                &at("upstream"),
                "is listed twice",
            )?;
            if let Some(p) = &s.tool_prefix {
                require(
                    is_tool_name(p) && p.len() < 64,
                    &at("tool_prefix"),
                    "must be 1-63 of letters, digits, '_', '-' or '.'",
                )?;
                // "git_" and "git_hub_" would both claim "git_hub_x".
                if let Some(other) = prefixes.iter().find(|o| {
                    **o != p.as_str() && (o.starts_with(p.as_str()) || p.starts_with(**o))
                }) {
                    return Err(FieldError::new(
                        at("tool_prefix"),
                        format!(
                            "{p:?} and {other:?} overlap: one name could belong to both servers"
                        ),
                    ));
                }
                require(
                    prefixes.iter().filter(|o| **o == p.as_str()).count() == 1,
                    &at("tool_prefix"),
                    "is used by two servers",
                )?;
            }
            for (shown, own) in &s.aliases {
                require(
                    is_tool_name(shown) && is_tool_name(own),
                    &at(&format!("aliases.{shown}")),
                    "names must be 1-128 of letters, digits, '_', '-' or '.'",
                )?;
            }
        }
        let mut shown = HashSet::new();
        for (i, s) in self.servers.iter().enumerate() {
            for alias in s.aliases.keys() {
                require(
                    shown.insert(alias.as_str()),
                    &format!("servers[{i}].aliases.{alias}"),
                    "is an alias of two servers",
                )?;
            }
        }
        Ok(())
    }

    /// A stdio server: an MCP program behind a virtual server, with nothing of an HTTP
    /// upstream's settings.
    fn validate_stdio(&self) -> Checked {
        require(
            self.kind == UpstreamKind::Mcp,
            "command",
            "is only for kind: mcp",
        )?;
        require(
            self.mount.is_none(),
            "mount",
            "a stdio server is reached through a virtual server's `servers`, not mounted",
        )?;
        if let Some(key) = self.http_setting() {
            return Err(FieldError::new(
                key,
                "is for an HTTP tool server; a stdio server (`command`) has none",
            ));
        }
        require(
            !self.command[0].trim().is_empty() && self.command.iter().all(|a| !a.contains('\0')),
            "command",
            "must start with a program, and no argument may hold a NUL byte",
        )?;
        let is_name = |k: &str| !k.is_empty() && !k.contains(['=', '\0']);
        for (k, v) in &self.env {
            require(
                is_name(k) && !v.contains('\0'),
                &format!("env.{k}"),
                "names a variable without '=' or NUL, with a value without NUL",
            )?;
        }
        for (j, k) in self.pass_env.iter().enumerate() {
            require(
                is_name(k),
                &format!("pass_env[{j}]"),
                "must name a variable (no '=' or NUL)",
            )?;
        }
        require(
            (1..=10_000).contains(&self.max_pending),
            "max_pending",
            "must be between 1 and 10000",
        )?;
        require(
            !self.response_timeout.is_zero(),
            "response_timeout",
            "must be greater than 0",
        )
    }

    pub fn validate(&self) -> Checked {
        require(
            !self.name.is_empty()
                && self
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)),
            "name",
            "must be non-empty letters, digits, '-', '_' or '.'",
        )?;
        if let Some(mount) = &self.mount {
            require(
                mount.starts_with('/') && (mount.len() == 1 || !mount.ends_with('/')),
                "mount",
                "must start with '/' and not end with '/'",
            )?;
        }
        if !self.servers.is_empty() {
            return self.validate_virtual();
        }
        if !self.command.is_empty() {
            return self.validate_stdio();
        }
        let stdio_only = [
            ("env", !self.env.is_empty()),
            ("pass_env", !self.pass_env.is_empty()),
            ("working_dir", self.working_dir.is_some()),
            ("max_pending", self.max_pending != default_max_pending()),
        ];
        if let Some((key, _)) = stdio_only.iter().find(|(_, set)| *set) {
            return Err(FieldError::new(
                *key,
                "is only for a stdio server (`command`)",
            ));
        }
        let Some(url) = &self.url else {
            return Err(FieldError::new(
                "url",
                "is required (or `servers` for a virtual MCP server, or `command` for a stdio server)",
            ));
        };
        match url.parse::<http::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => {
                if self.tls.is_some() {
                    return Err(FieldError::new(
                        "tls",
                        "is only for https:// urls (this one is http://)",
                    ));
                }
            }
            Ok(uri) if uri.scheme_str() == Some("https") && uri.authority().is_some() => {
                if let Some(tls) = &self.tls {
                    tls.validate().map_err(|e| e.under("tls"))?;
                }
            }
            _ => {
                return Err(FieldError::new(
                    "url",
                    "must be an absolute http:// or https:// URL",
                ));
            }
        }
        require(
            !self.connect_timeout.is_zero() && !self.response_timeout.is_zero(),
            "connect_timeout",
            "timeouts must be greater than 0",
        )?;
        if let Some(cred) = &self.credential {
            require(
                http::HeaderName::from_bytes(cred.header.as_bytes()).is_ok(),
                "credential.header",
                "is not a valid header name",
            )?;
            cred.source()
                .validate()
                .map_err(|e| e.under("credential"))?;
        }
        if let Some(t) = &self.approval_token {
            require(
                http::HeaderName::from_bytes(t.header.as_bytes()).is_ok()
                    && !t
                        .header
                        .to_ascii_lowercase()
                        .starts_with(crate::proxy::upstream::GATEWAY_HEADER_PREFIX),
                "approval_token.header",
                "is not a valid header name outside the gateway's x-ciba-gate- prefix",
            )?;
            require(
                http::HeaderValue::from_str(t.prefix()).is_ok(),
                "approval_token.prefix",
                "is not a valid header value",
            )?;
            require(
                !t.exchange || t.audience.is_some(),
                "approval_token.exchange",
                "needs approval_token.audience (the audience to exchange for)",
            )?;
        }
        match self.kind {
            UpstreamKind::Mcp if !self.routes.is_empty() => {
                return Err(FieldError::new("routes", "routes are only for kind: http"));
            }
            UpstreamKind::Http if self.routes.is_empty() => {
                return Err(FieldError::new(
                    "routes",
                    "kind: http needs at least one route",
                ));
            }
            _ => {}
        }
        for (j, r) in self.routes.iter().enumerate() {
            let at = |k: &str| format!("routes[{j}].{k}");
            require(
                http::Method::from_bytes(r.method.to_ascii_uppercase().as_bytes()).is_ok(),
                &at("method"),
                "is not an HTTP method",
            )?;
            if let Err(e) = PathTemplate::parse(&r.path) {
                return Err(FieldError::new(at("path"), e.to_string()));
            }
            require(!r.tool.is_empty(), &at("tool"), "must not be empty")?;
        }
        Ok(())
    }
}

/// The whole `upstreams:` list: each entry, then names and mounts unique.
pub fn validate_upstreams(upstreams: &[UpstreamConfig]) -> Checked {
    require(
        !upstreams.is_empty(),
        "",
        "at least one upstream is required",
    )?;
    let mut names = HashSet::new();
    let mut mounts = HashSet::new();
    for (i, u) in upstreams.iter().enumerate() {
        let at = format!("[{i}]");
        u.validate().map_err(|e| e.under(&at))?;
        if !names.insert(u.name.as_str()) {
            return Err(FieldError::new(
                format!("{at}.name"),
                format!("duplicate upstream name {:?}", u.name),
            ));
        }
        if let Some(mount) = &u.mount
            && !mounts.insert(mount.as_str())
        {
            return Err(FieldError::new(
                format!("{at}.mount"),
                format!("duplicate mount {mount:?}"),
            ));
        }
    }
    // A virtual server's servers are direct MCP upstreams; every upstream is reachable.
    let members: HashSet<&str> = upstreams
        .iter()
        .flat_map(|u| u.servers.iter().map(|s| s.upstream.as_str()))
        .collect();
    for (i, u) in upstreams.iter().enumerate() {
        for (j, s) in u.servers.iter().enumerate() {
            let why = match upstreams.iter().find(|t| t.name == s.upstream) {
                None => format!("there is no upstream {:?}", s.upstream),
                Some(t) if t.kind != UpstreamKind::Mcp || !t.servers.is_empty() => {
                    format!("{:?} is not a direct MCP upstream", s.upstream)
                }
                Some(_) => continue,
            };
            return Err(FieldError::new(
                format!("[{i}].servers[{j}].upstream"),
                format!("must name an MCP upstream with a url or a command: {why}"),
            ));
        }
        require(
            u.mount.is_some() || members.contains(u.name.as_str()),
            &format!("[{i}].mount"),
            "is required (or list this upstream in a virtual server's servers)",
        )?;
    }
    Ok(())
}
