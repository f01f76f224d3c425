//! How a server's own tool names are shown to the agent behind a virtual server, and
//! back: an alias wins, else the server's prefix, else the name as it is. Resolution
//! is the inverse, and a name is only ever shown if it resolves back to where it came
//! from (so no shown name can reach a different tool than the one listed).

use std::collections::{BTreeMap, HashMap};

/// One server's naming rule.
#[derive(Debug, Clone, Default)]
pub struct Naming {
    prefix: Option<String>,
    /// Shown name → the server's own name.
    aliases: BTreeMap<String, String>,
    /// The server's own name → shown name.
    aliased: HashMap<String, String>,
}

impl Naming {
    pub fn new(prefix: Option<String>, aliases: BTreeMap<String, String>) -> Naming {
        let aliased = aliases
            .iter()
            .map(|(shown, own)| (own.clone(), shown.clone()))
            .collect();
        Naming {
            prefix,
            aliases,
            aliased,
        }
    }

    pub fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    /// The name the agent sees for the server's tool `own`.
    pub fn shown(&self, own: &str) -> String {
        if let Some(alias) = self.aliased.get(own) {
            return alias.clone();
        }
        match &self.prefix {
            Some(p) => format!("{p}{own}"),
            None => own.to_string(),
        }
    }

    /// The server's own name for `shown` when it is one of this server's aliases.
    pub fn alias(&self, shown: &str) -> Option<&str> {
        self.aliases.get(shown).map(String::as_str)
    }

    /// The server's own name for `shown` by this server's prefix (an aliased tool is
    /// reached by its alias only).
    pub fn by_prefix(&self, shown: &str) -> Option<String> {
        let own = shown.strip_prefix(self.prefix.as_deref()?)?;
        (!own.is_empty() && !self.aliased.contains_key(own)).then(|| own.to_string())
    }

    /// The server's own name for `shown`, for a server without a prefix.
    pub fn unprefixed(&self, shown: &str) -> Option<String> {
        (self.prefix.is_none() && !self.aliased.contains_key(shown)).then(|| shown.to_string())
    }
}

/// Where a shown name goes, by the naming rules alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// One server owns it: its index and the server's own name.
    Server(usize, String),
    /// Only the servers without a prefix could own it: which one, the merged list says.
    Unprefixed(Vec<usize>),
    Nowhere,
}

/// Resolves `shown` over every server's rule: aliases first, then prefixes (no two
/// overlap, checked at config time), then the servers without a prefix.
pub fn resolve(namings: &[&Naming], shown: &str) -> Resolved {
    if let Some((i, own)) = namings
        .iter()
        .enumerate()
        .find_map(|(i, n)| n.alias(shown).map(|own| (i, own.to_string())))
    {
        return Resolved::Server(i, own);
    }
    if let Some(p) = namings
        .iter()
        .position(|n| n.prefix().is_some_and(|p| shown.starts_with(p)))
    {
        return match namings[p].by_prefix(shown) {
            Some(own) => Resolved::Server(p, own),
            None => Resolved::Nowhere,
        };
    }
    let open: Vec<usize> = namings
        .iter()
        .enumerate()
        .filter(|(_, n)| n.unprefixed(shown).is_some())
        .map(|(i, _)| i)
        .collect();
    match open.as_slice() {
        [] => Resolved::Nowhere,
        [one] => Resolved::Server(*one, shown.to_string()),
        _ => Resolved::Unprefixed(open),
    }
}

/// Whether `uri` is one of the URIs an RFC 6570 `template` expands to: literal text
/// must match exactly; a simple `{var}` stands for one segment (no `/`, `?` or `#`);
/// any other expression (`{+path}`, `{/x}`, `{?q}`, `{#f}`) for any text.
pub fn template_matches(template: &str, uri: &str) -> bool {
    let mut pattern = String::from("^");
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        pattern.push_str(&regex::escape(&rest[..open]));
        let Some(close) = rest[open..].find('}') else {
            return false;
        };
        let expression = &rest[open + 1..open + close];
        let simple = expression
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        pattern.push_str(if simple { "[^/?#]*" } else { ".*" });
        rest = &rest[open + close + 1..];
    }
    pattern.push_str(&regex::escape(rest));
    pattern.push('$');
    regex::Regex::new(&pattern).is_ok_and(|r| r.is_match(uri))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uri_matches_the_templates_it_expands_from() {
        let t = "deploy://east/deployments/{service}";
        assert!(template_matches(t, "deploy://east/deployments/payments"));
        assert!(!template_matches(
            t,
            "deploy://east/deployments/payments/logs"
        ));
        assert!(!template_matches(t, "deploy://west/deployments/payments"));
        assert!(template_matches("file:///{+path}", "file:///etc/hosts"));
        assert!(template_matches(
            "search://q{?term,limit}",
            "search://q?term=x"
        ));
        // Template text is literal, not a pattern.
        assert!(!template_matches("a.b://{x}", "aXb://y"));
        assert!(!template_matches("broken://{x", "broken://y"));
    }

    fn aliases(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn a_prefixed_name_goes_to_its_server_with_the_servers_own_name() {
        let deploy = Naming::new(Some("deploy_".into()), BTreeMap::new());
        let tracker = Naming::new(Some("issues.".into()), BTreeMap::new());
        let all = [&deploy, &tracker];
        assert_eq!(deploy.shown("list"), "deploy_list");
        assert_eq!(
            resolve(&all, "issues.create"),
            Resolved::Server(1, "create".into())
        );
        assert_eq!(resolve(&all, "deploy_"), Resolved::Nowhere);
        assert_eq!(resolve(&all, "create"), Resolved::Nowhere);
    }

    #[test]
    fn an_alias_wins_and_hides_the_prefixed_form_of_the_same_tool() {
        let deploy = Naming::new(Some("d_".into()), aliases(&[("ship", "deploy_service")]));
        let all = [&deploy];
        assert_eq!(deploy.shown("deploy_service"), "ship");
        assert_eq!(
            resolve(&all, "ship"),
            Resolved::Server(0, "deploy_service".into())
        );
        assert_eq!(resolve(&all, "d_deploy_service"), Resolved::Nowhere);
    }

    #[test]
    fn names_without_a_prefix_are_decided_by_the_list_when_two_servers_could_own_them() {
        let a = Naming::default();
        let b = Naming::default();
        let c = Naming::new(Some("c_".into()), BTreeMap::new());
        assert_eq!(
            resolve(&[&a, &c], "search"),
            Resolved::Server(0, "search".into())
        );
        assert_eq!(
            resolve(&[&a, &b, &c], "search"),
            Resolved::Unprefixed(vec![0, 1])
        );
        // A prefix claims its names even when an unprefixed server has such a tool.
        assert_eq!(resolve(&[&a, &c], "c_x"), Resolved::Server(1, "x".into()));
    }
}
