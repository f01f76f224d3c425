//! Plain HTTP tool APIs through the gateway: the route names the tool, the path
//! parameters, query and JSON body are its arguments; blocked calls get 403 JSON.

use std::sync::Arc;

use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use super::upstream::clean_response_headers;
use super::{
    BoxBody, Gateway, Mount, RequestContext, answer, block_reason, effect_name, framing, mcp,
    routes,
};
use crate::fingerprint;
use crate::policy::Effect;

fn is_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .is_some_and(|m| m == "application/json" || m.ends_with("+json"))
}

/// Merges `more` into `args`; the same key from two places with different values is
/// ambiguous (policy and tool server could read different ones), so it is refused.
fn merge(
    args: &mut Map<String, Value>,
    more: Map<String, Value>,
    from: &str,
) -> Result<(), String> {
    for (k, v) in more {
        match args.get(&k) {
            Some(existing) if *existing != v => {
                return Err(format!(
                    "argument {k:?} is given twice with different values (in the {from} and elsewhere)"
                ));
            }
            _ => {
                args.insert(k, v);
            }
        }
    }
    Ok(())
}

pub async fn handle(
    gw: &Arc<Gateway>,
    mount: &Mount,
    rest: &str,
    req: Request<Incoming>,
    ctx: RequestContext,
) -> Response<BoxBody> {
    let (parts, body) = req.into_parts();
    let rest = if rest.is_empty() { "/" } else { rest };
    let mut rec = gw.record(&ctx, &mount.upstream.name);
    let reject =
        |mut rec: crate::audit::PendingRecord, status: StatusCode, reason: &str, msg: &str| {
            rec.get_mut().decision = "reject";
            rec.get_mut().reason = reason.to_string();
            rec.finish("rejected", None);
            answer::http_error(status, reason, msg)
        };

    let mut arguments = Map::new();
    let route = crate::traced_span!("classify")
        .in_scope(|| routes::find(&mount.routes, &parts.method, rest));
    if let Some((r, params)) = &route {
        tracing::Span::current().record("gen_ai.tool.name", r.tool.as_str());
        arguments = params.clone();
    }
    match routes::query_arguments(parts.uri.query()) {
        Ok(q) => {
            if let Err(m) = merge(&mut arguments, q, "query") {
                return reject(rec, StatusCode::BAD_REQUEST, "ambiguous_arguments", &m);
            }
        }
        Err(e) => return reject(rec, StatusCode::BAD_REQUEST, "bad_query", &e.to_string()),
    }

    // A method without a body must not carry one (a tool server that does not read it
    // would take it for its next request).
    if let Err(resp) = framing::refuse_declared_body(&body, &parts.method, false) {
        rec.get_mut().decision = "reject";
        rec.get_mut().reason = framing::BODY_NOT_ALLOWED.into();
        rec.finish("rejected", None);
        return resp;
    }
    // A JSON body is read (up to the limit) so policy can see it. Any other body is
    // streamed on unread only where the route says it may be (policy then sees its
    // kind, and an approval binds its digest); elsewhere it is refused.
    let inspected = is_json(&parts.headers);
    let has_body = !body.is_end_stream();
    let mut held_body = None;
    let mut stream_body = None;
    let body_kind;
    if !has_body {
        body_kind = "none";
    } else if inspected {
        body_kind = "json";
        if let Err(resp) = framing::check_inspected_encoding(&parts.headers, false) {
            rec.get_mut().decision = "reject";
            rec.get_mut().reason = framing::UNSUPPORTED_ENCODING.into();
            rec.finish("rejected", None);
            return resp;
        }
        let bytes = match framing::read_body(
            body,
            &parts.headers,
            gw.max_body_bytes,
            gw.body_read_timeout,
            false,
        )
        .await
        {
            Ok(b) => b,
            Err(resp) => {
                rec.get_mut().decision = "reject";
                rec.get_mut().reason = "bad_body".into();
                rec.finish("rejected", None);
                return resp;
            }
        };
        if !bytes.is_empty() {
            if mcp::json_depth_exceeds(&bytes, gw.max_json_depth) {
                return reject(
                    rec,
                    StatusCode::BAD_REQUEST,
                    "json_too_deep",
                    &format!("JSON nesting deeper than {} levels", gw.max_json_depth),
                );
            }
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(obj)) => {
                    if let Err(m) = merge(&mut arguments, obj, "body") {
                        return reject(rec, StatusCode::BAD_REQUEST, "ambiguous_arguments", &m);
                    }
                }
                Ok(other) => {
                    arguments.insert("body".into(), other);
                }
                Err(e) => {
                    return reject(
                        rec,
                        StatusCode::BAD_REQUEST,
                        "parse_error",
                        &format!("body is not valid JSON: {e}"),
                    );
                }
            }
        }
        held_body = Some(bytes);
    } else if route.as_ref().is_some_and(|(r, _)| r.opaque_body) {
        body_kind = "opaque";
        match framing::stream_opaque(body, &parts.headers, gw.max_body_bytes) {
            Ok(b) => stream_body = Some(b),
            Err(resp) => {
                rec.get_mut().decision = "reject";
                rec.get_mut().reason = "body_too_large".into();
                rec.finish("rejected", None);
                return resp;
            }
        }
    } else {
        return reject(
            rec,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "opaque_body_not_allowed",
            "this route takes a JSON body (Content-Type: application/json) or none; other bodies are refused because policy cannot read them",
        );
    }

    let mut input = gw.base_input(mount, &parts.method, parts.uri.path(), &parts.headers);
    let arguments = Value::Object(arguments);
    if let Some((r, _)) = &route {
        rec.get_mut().tool = Some(r.tool.clone());
        rec.get_mut().args_fingerprint = Some(fingerprint::of_json(&arguments));
        input.insert(
            "tool".into(),
            json!({"name": r.tool, "arguments": arguments}),
        );
        input.insert("http".into(), json!({"route": r.template.to_string()}));
    }
    if let Some(Value::Object(request)) = input.get_mut("request") {
        request.insert("body".into(), json!({"kind": body_kind}));
    }
    let (decision, input) = gw.decide(input);
    rec.get_mut().decision = effect_name(&decision);
    rec.get_mut().policy_revision = decision.revision.to_string();
    if let (Effect::Approve, Some(params), Some((route, _))) =
        (decision.effect, &decision.approval, &route)
    {
        // The approval is bound to the exact request: a body policy could not read is
        // read now, and its digest joins the arguments that are fingerprinted.
        let (body, mut bound_args) = match (held_body, stream_body) {
            (Some(b), _) => (b, arguments.clone()),
            (None, Some(stream)) => {
                match tokio::time::timeout(gw.body_read_timeout, stream.collect())
                    .await
                    .unwrap_or_else(|_| Err("the request body did not arrive in time".into()))
                {
                    Ok(c) => {
                        let b = c.to_bytes();
                        let mut args = arguments.clone();
                        if !b.is_empty()
                            && let Value::Object(m) = &mut args
                        {
                            use sha2::Digest;
                            m.insert(
                                "$body_sha256".into(),
                                Value::String(hex::encode(sha2::Sha256::digest(&b))),
                            );
                        }
                        (b, args)
                    }
                    Err(_) => {
                        return reject(
                            rec,
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "body_too_large",
                            "the request body exceeds the gateway's limit",
                        );
                    }
                }
            }
            (None, None) => (bytes::Bytes::new(), arguments.clone()),
        };
        if bound_args.is_null() {
            bound_args = Value::Object(Map::new());
        }
        let call = super::approve::PendingCall {
            tool: route.tool.clone(),
            arguments: bound_args,
            params: params.clone(),
            input,
        };
        let out = super::approve::Outbound {
            method: parts.method.clone(),
            uri_rest: rest.to_string(),
            query: parts.uri.query().map(str::to_string),
            headers: parts.headers.clone(),
            body,
        };
        return super::approve::run(gw, mount, call, super::approve::Caller::Http, out, rec).await;
    }
    if decision.effect != Effect::Allow {
        let (reason, message) = block_reason(&decision);
        rec.get_mut().reason = reason.clone();
        rec.finish("blocked", None);
        let sentence = match decision.effect {
            Effect::Approve => message,
            _ => format!("blocked by policy: {message}"),
        };
        return answer::http_error(StatusCode::FORBIDDEN, &reason, &sentence);
    }
    rec.get_mut().reason = "allowed".into();

    let body: BoxBody = match (held_body, stream_body) {
        (Some(b), _) => answer::full(b),
        (None, Some(s)) => s,
        (None, None) => answer::empty(),
    };
    let query = parts.uri.query().map(str::to_string);
    let sent = mount
        .upstream
        .forward(parts.method, rest, query.as_deref(), parts.headers, body)
        .await;
    match sent {
        Ok(resp) => {
            rec.finish("forwarded", Some(resp.status().as_u16()));
            let (mut rparts, rbody) = resp.into_parts();
            clean_response_headers(&mut rparts.headers);
            Response::from_parts(rparts, rbody.map_err(Into::into).boxed_unsync())
        }
        Err(e) => {
            rec.get_mut().reason = e.reason().to_string();
            rec.finish("upstream_failed", None);
            answer::http_error(e.status(), e.reason(), &e.to_string())
        }
    }
}
