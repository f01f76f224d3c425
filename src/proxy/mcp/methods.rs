//! The MCP methods the gateway treats specially, in one table: the one place to add
//! an MCP method. Every method — listed here or not — is put to policy; this table
//! says what else the gateway does with it.

/// What the gateway does with a method beyond putting it to policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `tools/call`: the tool and its arguments go to policy; may need approval.
    ToolCall,
    /// `tools/list`: the answer is filtered (phase `list`) so denied tools stay hidden.
    ToolList,
    /// `resources/subscribe` (`true`) and `resources/unsubscribe`: a virtual server
    /// keeps which agent session follows which resource, to pass on only its updates.
    Follow(bool),
    /// Anything else: the method name (and kind) goes to policy.
    Plain,
}

/// What an MCP server lists: tools and prompts (named, and routed, by the naming rules
/// of a virtual server) or resources and resource templates (routed by URI, never
/// renamed: a URI names itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Tools,
    Prompts,
    Resources,
    Templates,
}

impl Kind {
    /// The method that lists this kind.
    pub fn method(self) -> &'static str {
        TABLE
            .iter()
            .find(|m| m.lists == Some(self))
            .map_or("", |m| m.name)
    }

    /// The result's array of entries.
    pub fn key(self) -> &'static str {
        match self {
            Kind::Tools => "tools",
            Kind::Prompts => "prompts",
            Kind::Resources => "resources",
            Kind::Templates => "resourceTemplates",
        }
    }

    /// The member that names an entry, in a list and in the request that uses it.
    pub fn name_key(self) -> &'static str {
        match self {
            Kind::Tools | Kind::Prompts => "name",
            Kind::Resources => "uri",
            Kind::Templates => "uriTemplate",
        }
    }

    pub fn renamed(self) -> bool {
        matches!(self, Kind::Tools | Kind::Prompts)
    }
}

/// The entry a request uses: what a virtual server routes it by, to the server that
/// listed that entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Names {
    /// An entry of this list, named (or given by URI) at this JSON pointer.
    Entry(Kind, &'static str),
    /// `completion/complete`: the prompt (`ref/prompt`) or the resource template
    /// (`ref/resource`) it completes.
    Completed,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    pub name: &'static str,
    pub role: Role,
    /// The `params` member MCP 2026-07-28 mirrors in the `Mcp-Name` header.
    pub mirrored_param: Option<&'static str>,
    /// A list method: a virtual server merges every server's answer.
    pub lists: Option<Kind>,
    /// A request on one entry: a virtual server routes it to the entry's server.
    pub names: Option<Names>,
}

impl Method {
    /// Means something only beside an event stream (resource subscriptions): not
    /// routed in 2026-07-28, which has none.
    pub fn needs_stream(&self) -> bool {
        matches!(self.role, Role::Follow(_))
    }
}

const fn row(name: &'static str, role: Role) -> Method {
    Method {
        name,
        role,
        mirrored_param: None,
        lists: None,
        names: None,
    }
}

const fn list(name: &'static str, role: Role, kind: Kind) -> Method {
    Method {
        lists: Some(kind),
        ..row(name, role)
    }
}

/// A request on one entry, named by `params.name` or `params.uri` (also mirrored in
/// `Mcp-Name`).
const fn on_entry(name: &'static str, role: Role, kind: Kind, by_uri: bool) -> Method {
    let (param, at) = if by_uri {
        ("uri", "/params/uri")
    } else {
        ("name", "/params/name")
    };
    Method {
        mirrored_param: Some(param),
        names: Some(Names::Entry(kind, at)),
        ..row(name, role)
    }
}

const TABLE: &[Method] = &[
    on_entry("tools/call", Role::ToolCall, Kind::Tools, false),
    list("tools/list", Role::ToolList, Kind::Tools),
    list("prompts/list", Role::Plain, Kind::Prompts),
    list("resources/list", Role::Plain, Kind::Resources),
    list("resources/templates/list", Role::Plain, Kind::Templates),
    on_entry("prompts/get", Role::Plain, Kind::Prompts, false),
    on_entry("resources/read", Role::Plain, Kind::Resources, true),
    on_entry(
        "resources/subscribe",
        Role::Follow(true),
        Kind::Resources,
        true,
    ),
    on_entry(
        "resources/unsubscribe",
        Role::Follow(false),
        Kind::Resources,
        true,
    ),
    Method {
        names: Some(Names::Completed),
        ..row("completion/complete", Role::Plain)
    },
];

const PLAIN: Method = row("", Role::Plain);

/// The method that has `role` (`ToolCall`, `ToolList`: one each).
pub fn name_of(role: Role) -> &'static str {
    TABLE.iter().find(|m| m.role == role).map_or("", |m| m.name)
}

/// The row for `name` (a plain method when it is not in the table).
pub fn lookup(name: &str) -> Method {
    TABLE
        .iter()
        .find(|m| m.name == name)
        .copied()
        .unwrap_or(PLAIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_are_plain_and_still_go_to_policy() {
        assert_eq!(lookup("tools/call").role, Role::ToolCall);
        assert_eq!(lookup("tools/list").role, Role::ToolList);
        assert_eq!(lookup("resources/read").mirrored_param, Some("uri"));
        assert_eq!(lookup("made/up").role, Role::Plain);
        assert_eq!(name_of(Role::ToolCall), "tools/call");
        assert_eq!(name_of(Role::ToolList), "tools/list");
    }

    #[test]
    fn every_list_has_one_method_and_every_named_entry_a_list() {
        for kind in [Kind::Tools, Kind::Prompts, Kind::Resources, Kind::Templates] {
            assert_eq!(lookup(kind.method()).lists, Some(kind));
        }
        assert_eq!(
            lookup("resources/read").names,
            Some(Names::Entry(Kind::Resources, "/params/uri"))
        );
        assert_eq!(
            lookup("tools/call").names,
            Some(Names::Entry(Kind::Tools, "/params/name"))
        );
        assert!(lookup("resources/subscribe").needs_stream());
        assert_eq!(lookup("resources/unsubscribe").role, Role::Follow(false));
        assert_eq!(lookup("made/up").names, None);
    }
}
