# Helpers shared by the gateway policy: which tool is being called, how it is
# classified, and whether its arguments are well formed. No decisions here.
#
# Built-in errors (e.g. a regex on a number) fail the whole decision closed in the
# gateway, so every value from the input is type-checked before a built-in sees it.
package ciba_gate.lib

import rego.v1

# The tool being called: an MCP tools/call or a matched plain-HTTP route.
# Anything else (initialize, notifications, streams...) has no tool.
tool_name := input.tool.name if {
	input.mcp.method == "tools/call"
	is_string(input.tool.name)
}

tool_name := input.tool.name if {
	input.upstream.kind == "http"
	is_string(input.tool.name)
}

# Classification from data.tools; undefined for tools nobody has reviewed.
tool_class := class if {
	some class, names in data.tools
	tool_name in names
}

# The phases in which the agent actually runs the call with arguments. In phase
# "list" there are no arguments, so argument checks must stay silent there.
call_phases := {"request", "approved"}

in_call_phase if input.phase in call_phases

args := input.tool.arguments if is_object(input.tool.arguments)

# Names of required arguments missing or not a non-empty string.
missing_arguments contains name if {
	in_call_phase
	some name in data.required_arguments[tool_name]
	not valid_string_arg(name)
}

valid_string_arg(name) if {
	value := args[name]
	is_string(value)
	value != ""
}

# Identifiers that are echoed into approval messages (project names, issue ids)
# are kept to a small, phone-safe alphabet and length.
valid_project(p) if {
	is_string(p)
	regex.match(`^[a-z0-9][a-z0-9._-]{0,31}$`, p)
}

valid_issue_id(id) if {
	is_string(id)
	regex.match(`^[0-9]{1,10}$`, id)
}
