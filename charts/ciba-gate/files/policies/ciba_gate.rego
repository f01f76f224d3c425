# Gateway policy for the agent's tools. The gateway reads three rules:
#   deny     - set of reasons; any reason blocks the call (and hides a tool in tools/list)
#   approval - object; the call needs a human's approval (CIBA) with these parameters
#   allow    - boolean; the call is forwarded
# Nothing matched means deny: every tool has to be classified in data.yaml.
package ciba_gate

import rego.v1

import data.ciba_gate.lib

# ---------------------------------------------------------------------------
# MCP housekeeping: protocol plumbing that carries no tool side effects.
# Note: resources/read, prompts/get and completion/complete are deliberately NOT
# listed; they return content from the server and need their own review before
# being opened up.

housekeeping_methods := {
	"initialize",
	"ping",
	"tools/list",
	"resources/list",
	"resources/templates/list",
	"prompts/list",
	"server/discover",
}

allow if input.mcp.method in housekeeping_methods

allow if {
	input.mcp.kind == "notification"
	is_string(input.mcp.method)
	startswith(input.mcp.method, "notifications/")
}

# Responses the client sends back to server-initiated requests.
allow if input.mcp.kind == "response"

# GET opens the server-to-client event stream, DELETE ends the session.
allow if {
	input.upstream.kind == "mcp"
	input.request.method in {"GET", "DELETE"}
	is_object(input.mcp)
	object.get(input.mcp, "method", null) == null
}

# ---------------------------------------------------------------------------
# Tools by class.

# Read-only tools run without asking anyone.
allow if lib.tool_class == "read_only"

# Routine writes run without approval once their arguments check out.
allow if {
	lib.tool_class == "routine"
	lib.in_call_phase
}

# Every classified tool that is not denied is listed to the agent, so the model
# knows it exists (sensitive tools will ask for approval when called).
allow if {
	input.phase == "list"
	lib.tool_class
}

# Destructive tools are never run by an agent; a person does that by hand.
deny contains {
	"code": "destructive_tool",
	"message": concat("", [lib.tool_name, " is a destructive tool and cannot be called by an agent"]),
} if {
	lib.tool_class == "destructive"
}

# Annotations come from the tool server and are only hints, but a server that
# calls one of our "read-only" tools destructive means the classification is out
# of date: stop until someone looks.
deny contains {
	"code": "annotation_conflict",
	"message": concat("", [lib.tool_name, " is classified read-only but the server marks it destructive"]),
} if {
	lib.tool_class == "read_only"
	input.tool.annotations.destructiveHint == true
}

deny contains {
	"code": "invalid_arguments",
	"message": concat("", ["missing or invalid argument: ", name]),
} if {
	some name in lib.missing_arguments
}

# ---------------------------------------------------------------------------
# deploy_service: only vetted services, only known environments, and a person
# approves each deploy.

deny contains {
	"code": "unknown_environment",
	"message": sprintf("environment %s is not an allowed deploy target", [lib.args.env]),
} if {
	lib.tool_name == "deploy_service"
	lib.valid_string_arg("env")
	not lib.args.env in data.deploy.environments
}

deny contains {
	"code": "unknown_service",
	"message": sprintf("service %s is not deployable by agents", [lib.args.service]),
} if {
	lib.tool_name == "deploy_service"
	lib.valid_string_arg("service")
	not lib.args.service in data.deploy.services
}

approval := object.union(
	{
		"action": "deploy",
		"binding_message": binding_message("deploy_service"),
		"scope": "openid",
		"requested_expiry": data.approvals.requested_expiry.deploy_service,
	},
	object.union(acr_request, approver_request),
) if {
	lib.tool_name == "deploy_service"
	lib.args.service in data.deploy.services
	lib.args.env in data.deploy.environments
}

# ---------------------------------------------------------------------------
# Ticket API (plain HTTP): filing issues is routine, deleting one is approved.

deny contains {
	"code": "invalid_arguments",
	"message": "project must be 1-32 lowercase letters, digits, '.', '_' or '-'",
} if {
	lib.tool_name in {"create_issue", "delete_issue"}
	lib.valid_string_arg("project")
	not lib.valid_project(lib.args.project)
}

deny contains {
	"code": "invalid_arguments",
	"message": "issue id must be a number",
} if {
	lib.tool_name == "delete_issue"
	lib.valid_string_arg("id")
	not lib.valid_issue_id(lib.args.id)
}

approval := object.union(
	{
		"action": "delete_issue",
		"binding_message": binding_message("delete_issue"),
		"scope": "openid",
		"requested_expiry": data.approvals.requested_expiry.delete_issue,
	},
	object.union(acr_request, approver_request),
) if {
	lib.tool_name == "delete_issue"
	lib.valid_project(lib.args.project)
	lib.valid_issue_id(lib.args.id)
}

# ---------------------------------------------------------------------------
# What the user's phone shows: the tool's template from data.binding_messages with
# each {name} replaced by that argument. Deterministic: the same call always gives
# the same text, and only vetted argument values can reach it.

binding_message(tool) := strings.replace_n(
	{sprintf("{%s}", [k]): sprintf("%v", [v]) | some k, v in lib.args},
	binding_templates[tool],
)

# The templates written for the OP's binding-message profile (input.op), or the
# default ones: strict OPs (20 characters, no spaces) refuse the descriptive form.
binding_templates := object.get(
	data.binding_messages,
	input.op.binding_message_profile,
	data.binding_messages.default,
) if input.op.binding_message_profile

binding_templates := data.binding_messages.default if not input.op.binding_message_profile

# ---------------------------------------------------------------------------
# After approval: the call is forwarded only with evidence of who approved it
# and, when the tool asks for one, the required authentication context.

required_acr := data.approvals.acr_values[lib.tool_name]

acr_request := {"acr_values": required_acr} if required_acr

acr_request := {} if not required_acr

# Who is asked: the approver data.yaml names for the tool (e.g. the service's owner),
# else the gateway's configured user (approvals.user). A list names several people who
# must all approve (two-person rule); {"from": [...], "count": N} asks for N of them.
approver_hint := data.approvals.approvers[lib.tool_name]

one_approver if is_string(approver_hint)

approver_request := {"user": {"hint_type": "login_hint", "value": approver_hint}} if {
	approver_hint
	one_approver
}

approver_request := {"approvers": approver_hint} if {
	approver_hint
	not one_approver
}

approver_request := {} if not approver_hint

allow if {
	input.phase == "approved"
	lib.tool_class == "sensitive"
	approval
	approved_by_someone
	acr_satisfied
}

approved_by_someone if {
	is_string(input.approval.subject_hash)
	input.approval.subject_hash != ""
}

acr_satisfied if not required_acr

acr_satisfied if input.approval.acr == required_acr

# The message the user approved must be the one this call would show today.
deny contains {
	"code": "approval_mismatch",
	"message": "the approved message does not match this call",
} if {
	input.phase == "approved"
	input.approval.binding_message != approval.binding_message
}
