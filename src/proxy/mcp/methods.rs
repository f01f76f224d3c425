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
    /// Anything else: the method name (and kind) goes to policy.
    Plain,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    pub name: &'static str,
    pub role: Role,
    /// The `params` member MCP 2026-07-28 mirrors in the `Mcp-Name` header.
    pub mirrored_param: Option<&'static str>,
}

const TABLE: &[Method] = &[
    Method {
        name: "tools/call",
        role: Role::ToolCall,
        mirrored_param: Some("name"),
    },
    Method {
        name: "tools/list",
        role: Role::ToolList,
        mirrored_param: None,
    },
    Method {
        name: "prompts/get",
        role: Role::Plain,
        mirrored_param: Some("name"),
    },
    Method {
        name: "resources/read",
        role: Role::Plain,
        mirrored_param: Some("uri"),
    },
    Method {
        name: "resources/subscribe",
        role: Role::Plain,
        mirrored_param: Some("uri"),
    },
    Method {
        name: "resources/unsubscribe",
        role: Role::Plain,
        mirrored_param: Some("uri"),
    },
];

const PLAIN: Method = Method {
    name: "",
    role: Role::Plain,
    mirrored_param: None,
};

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
}
