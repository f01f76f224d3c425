# Tests for the gateway policy. Run with `ciba-gate policy test policies/`.
# Every test builds the input document the gateway would send (see CONTRACT.md).
package ciba_gate_test

import rego.v1

import data.ciba_gate

# ---------------------------------------------------------------------------
# Input builders.

mcp(method, kind) := {
	"phase": "request",
	"agent": {"id": "billing-agent", "namespace": "agents"},
	"upstream": {"name": "tools", "kind": "mcp"},
	"request": {"method": "POST", "path": "/mcp", "headers": {"content-type": "application/json"}},
	"mcp": {"method": method, "kind": kind, "protocol_version": "2025-06-18", "session": true},
}

call(tool, args) := object.union(mcp("tools/call", "request"), {"tool": {"name": tool, "arguments": args}})

listing(tool) := object.union(mcp("tools/call", "request"), {"phase": "list", "tool": {"name": tool}})

approved(tool, args, evidence) := object.union(call(tool, args), {"phase": "approved", "approval": evidence})

stream(http_method) := object.union(mcp(null, "request"), {"request": {"method": http_method, "path": "/mcp", "headers": {}}})

http_call(tool, args) := {
	"phase": "request",
	"agent": {"id": "billing-agent", "namespace": "agents"},
	"upstream": {"name": "tickets", "kind": "http"},
	"request": {"method": "POST", "path": "/projects/web/issues", "headers": {}},
	"tool": {"name": tool, "arguments": args},
}

evidence := {"subject_hash": "3f1c9a", "acr": "urn:example:acr:pwd", "amr": ["pwd"], "auth_time": 1764000000}

deploy_prod := {"service": "payments", "env": "prod"}

deny_codes(inp) := {r.code | some r in ciba_gate.deny with input as inp}

# The decision the gateway would take, spelled out (deny > approval > allow).
decision(inp) := "deny" if {
	count(ciba_gate.deny) > 0 with input as inp
} else := "approve" if {
	inp.phase != "approved"
	ciba_gate.approval with input as inp
} else := "allow" if {
	ciba_gate.allow with input as inp
} else := "deny"

# ---------------------------------------------------------------------------
# MCP housekeeping passes.

test_initialize_allowed if decision(mcp("initialize", "request")) == "allow"

test_ping_allowed if decision(mcp("ping", "request")) == "allow"

test_listing_methods_allowed if {
	every m in ["tools/list", "resources/list", "resources/templates/list", "prompts/list", "server/discover"] {
		decision(mcp(m, "request")) == "allow"
	}
}

test_notifications_allowed if {
	every m in ["notifications/initialized", "notifications/cancelled", "notifications/progress"] {
		decision(mcp(m, "notification")) == "allow"
	}
}

test_notification_prefix_needs_notification_kind if {
	decision(mcp("notifications/initialized", "request")) == "deny"
}

test_client_responses_allowed if decision(mcp(null, "response")) == "allow"

test_get_stream_allowed if decision(stream("GET")) == "allow"

test_delete_session_allowed if decision(stream("DELETE")) == "allow"

test_other_http_methods_on_mcp_denied if decision(stream("PUT")) == "deny"

test_resources_read_not_opened if decision(mcp("resources/read", "request")) == "deny"

test_unknown_method_denied if decision(mcp("sampling/createMessage", "request")) == "deny"

# ---------------------------------------------------------------------------
# Read-only tools run without approval.

test_list_deployments_allowed if decision(call("list_deployments", {})) == "allow"

test_list_deployments_with_arguments_allowed if {
	decision(call("list_deployments", {"env": "prod", "limit": 10})) == "allow"
}

test_read_only_marked_destructive_denied if {
	inp := object.union(call("list_deployments", {}), {"tool": {"annotations": {"destructiveHint": true}}})
	deny_codes(inp) == {"annotation_conflict"}
}

test_read_only_hint_alone_does_not_allow if {
	inp := object.union(call("rm_rf", {}), {"tool": {"annotations": {"readOnlyHint": true}}})
	decision(inp) == "deny"
}

# ---------------------------------------------------------------------------
# deploy_service needs approval, with a deterministic, phone-safe message.

test_deploy_needs_approval if decision(call("deploy_service", deploy_prod)) == "approve"

test_deploy_approval_object if {
	a := ciba_gate.approval with input as call("deploy_service", deploy_prod)
	a == {
		"action": "deploy",
		"binding_message": "Deploy payments to prod",
		"scope": "openid",
		"requested_expiry": 300,
	}
}

test_deploy_approval_for_every_vetted_target if {
	every service in data.deploy.services {
		every env in data.deploy.environments {
			a := ciba_gate.approval with input as call("deploy_service", {"service": service, "env": env})
			count(a.binding_message) <= 64
			regex.match(`^[A-Za-z0-9 .,:!?#+/_-]+$`, a.binding_message)
		}
	}
}

# Strict OPs get a message they accept; unlisted profiles get the default text.
for_op(inp, profile) := object.union(inp, {"op": {"binding_message_profile": profile}})

test_deploy_message_per_op_profile if {
	inp := call("deploy_service", deploy_prod)
	m1 := ciba_gate.approval.binding_message with input as for_op(inp, "oidc-provider")
	m1 == "payments-to-prod"
	m2 := ciba_gate.approval.binding_message with input as for_op(inp, "okta")
	m2 == "payments-to-prod"
	m3 := ciba_gate.approval.binding_message with input as for_op(inp, "keycloak")
	m3 == "Deploy-payments-to-prod"
	m4 := ciba_gate.approval.binding_message with input as for_op(inp, "auth0")
	m4 == "Deploy payments to prod"
	m5 := ciba_gate.approval.binding_message with input as for_op(inp, "custom")
	m5 == "Deploy payments to prod"
}

test_every_vetted_deploy_fits_oidc_provider_default_rule if {
	every service in data.deploy.services {
		every env in data.deploy.environments {
			inp := for_op(call("deploy_service", {"service": service, "env": env}), "oidc-provider")
			a := ciba_gate.approval with input as inp
			count(a.binding_message) <= 20
			regex.match(`^[a-zA-Z0-9._+/!?#-]+$`, a.binding_message)
		}
	}
}

test_delete_issue_message_per_op_profile if {
	inp := http_call("delete_issue", {"project": "web", "id": "42"})
	m1 := ciba_gate.approval.binding_message with input as for_op(inp, "oidc-provider")
	m1 == "web#42"
	m2 := ciba_gate.approval.binding_message with input as for_op(inp, "keycloak")
	m2 == "Delete-web#42"
}

# The approved phase renders the message again with the same profile and compares.
test_approved_message_is_rechecked_with_the_profile if {
	short := object.union(evidence, {"binding_message": "payments-to-prod"})
	decision(for_op(approved("deploy_service", deploy_prod, short), "oidc-provider")) == "allow"
	long := object.union(evidence, {"binding_message": "Deploy payments to prod"})
	deny_codes(for_op(approved("deploy_service", deploy_prod, long), "oidc-provider")) == {"approval_mismatch"}
}

test_deploy_extra_arguments_still_approval if {
	decision(call("deploy_service", {"service": "search", "env": "dev", "version": "1.2.3"})) == "approve"
}

test_deploy_unknown_environment_denied if {
	deny_codes(call("deploy_service", {"service": "payments", "env": "moon"})) == {"unknown_environment"}
}

test_deploy_unknown_service_denied if {
	deny_codes(call("deploy_service", {"service": "mainframe", "env": "prod"})) == {"unknown_service"}
}

test_deploy_unknown_service_and_env_both_reported if {
	deny_codes(call("deploy_service", {"service": "mainframe", "env": "moon"})) == {"unknown_service", "unknown_environment"}
}

test_deploy_missing_env_denied if {
	deny_codes(call("deploy_service", {"service": "payments"})) == {"invalid_arguments"}
}

test_deploy_env_must_be_string if {
	deny_codes(call("deploy_service", {"service": "payments", "env": 7})) == {"invalid_arguments"}
}

test_deploy_empty_service_denied if {
	deny_codes(call("deploy_service", {"service": "", "env": "prod"})) == {"invalid_arguments"}
}

test_deploy_without_arguments_denied if {
	inp := object.union(mcp("tools/call", "request"), {"tool": {"name": "deploy_service"}})
	deny_codes(inp) == {"invalid_arguments"}
}

test_deploy_no_approval_for_bad_arguments if {
	not ciba_gate.approval with input as call("deploy_service", {"service": "payments", "env": "moon"})
}

test_deploy_environments_from_data if {
	inp := call("deploy_service", {"service": "payments", "env": "moon"})
	decision(inp) == "approve" with data.deploy.environments as ["moon"]
}

test_deploy_acr_requested_when_configured if {
	a := ciba_gate.approval with input as call("deploy_service", deploy_prod)
		with data.approvals.acr_values as {"deploy_service": "urn:example:acr:mfa"}
	a.acr_values == "urn:example:acr:mfa"
}

# ---------------------------------------------------------------------------
# Destructive and unknown tools.

test_delete_repository_denied if {
	deny_codes(call("delete_repository", {"repo": "acme/payments"})) == {"destructive_tool"}
}

test_delete_repository_denied_without_arguments if {
	deny_codes(call("delete_repository", {})) == {"destructive_tool", "invalid_arguments"}
}

test_delete_repository_never_asks_for_approval if {
	not ciba_gate.approval with input as call("delete_repository", {"repo": "acme/payments"})
}

test_unknown_tool_no_match if {
	decision(call("drop_database", {"name": "prod"})) == "deny"
	count(ciba_gate.deny) == 0 with input as call("drop_database", {"name": "prod"})
	not ciba_gate.allow with input as call("drop_database", {"name": "prod"})
}

test_non_string_tool_name_no_match if decision(call(42, {})) == "deny"

# ---------------------------------------------------------------------------
# Phase approved: forwarded only with evidence of who approved.

test_approved_deploy_allowed if {
	decision(approved("deploy_service", deploy_prod, evidence)) == "allow"
}

test_approved_with_matching_message_allowed if {
	ev := object.union(evidence, {"binding_message": "Deploy payments to prod"})
	decision(approved("deploy_service", deploy_prod, ev)) == "allow"
}

test_approved_message_mismatch_denied if {
	ev := object.union(evidence, {"binding_message": "Deploy billing to prod"})
	deny_codes(approved("deploy_service", deploy_prod, ev)) == {"approval_mismatch"}
}

test_approved_without_subject_denied if {
	decision(approved("deploy_service", deploy_prod, {"acr": "x"})) == "deny"
}

test_approved_empty_subject_denied if {
	decision(approved("deploy_service", deploy_prod, {"subject_hash": ""})) == "deny"
}

test_approved_without_approval_denied if {
	inp := object.union(call("deploy_service", deploy_prod), {"phase": "approved"})
	decision(inp) == "deny"
}

test_approved_still_checks_arguments if {
	deny_codes(approved("deploy_service", {"service": "payments", "env": "moon"}, evidence)) == {"unknown_environment"}
}

test_approved_acr_required_when_configured if {
	decision(approved("deploy_service", deploy_prod, evidence)) == "deny" with data.approvals.acr_values as {"deploy_service": "urn:example:acr:mfa"}
}

test_approved_acr_satisfied if {
	ev := object.union(evidence, {"acr": "urn:example:acr:mfa"})
	decision(approved("deploy_service", deploy_prod, ev)) == "allow" with data.approvals.acr_values as {"deploy_service": "urn:example:acr:mfa"}
}

test_approved_destructive_still_denied if {
	deny_codes(approved("delete_repository", {"repo": "acme/x"}, evidence)) == {"destructive_tool"}
}

# ---------------------------------------------------------------------------
# Phase list: a tool is hidden iff denied.

test_list_shows_deploy_service if decision(listing("deploy_service")) != "deny"

test_list_shows_list_deployments if decision(listing("list_deployments")) != "deny"

test_list_hides_delete_repository if decision(listing("delete_repository")) == "deny"

test_list_hides_unknown_tools if decision(listing("drop_database")) == "deny"

test_list_argument_checks_silent if count(ciba_gate.deny) == 0 with input as listing("deploy_service")

# ---------------------------------------------------------------------------
# Plain-HTTP ticket API.

test_create_issue_allowed if decision(http_call("create_issue", {"project": "web"})) == "allow"

test_create_issue_bad_project_denied if {
	deny_codes(http_call("create_issue", {"project": "Web App"})) == {"invalid_arguments"}
}

test_create_issue_missing_project_denied if {
	deny_codes(http_call("create_issue", {})) == {"invalid_arguments"}
}

test_delete_issue_needs_approval if {
	a := ciba_gate.approval with input as http_call("delete_issue", {"project": "web", "id": "42"})
	a.action == "delete_issue"
	a.binding_message == "Delete issue #42 in web"
}

test_delete_issue_bad_id_denied if {
	deny_codes(http_call("delete_issue", {"project": "web", "id": "42; drop"})) == {"invalid_arguments"}
}

test_delete_issue_approved_allowed if {
	inp := object.union(http_call("delete_issue", {"project": "web", "id": "42"}), {"phase": "approved", "approval": evidence})
	decision(inp) == "allow"
}

test_http_without_route_denied if {
	inp := object.remove(http_call("create_issue", {}), ["tool"])
	decision(inp) == "deny"
}

# ---------------------------------------------------------------------------
# Who approves: the approver data names for the tool, else the configured user.

test_the_approver_named_in_data_is_asked if {
	a := ciba_gate.approval with input as call("deploy_service", deploy_prod)
		with data.approvals.approvers as {"deploy_service": "owner@example.com"}
	a.user == {"hint_type": "login_hint", "value": "owner@example.com"}
}

test_without_a_named_approver_the_configured_user_is_asked if {
	a := ciba_gate.approval with input as call("deploy_service", deploy_prod)
	not a.user
}
