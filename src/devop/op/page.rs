//! The phone-sized approval page.

use super::*;

pub(super) fn page(shared: &Shared) -> Resp {
    let now = Instant::now();
    let pending = shared.pending(now);
    let cards: String = pending.iter().map(render_card).collect();
    let nonce = random_token(16);
    let issuer = html_escape(&shared.issuer);
    let html = render_template(
        include_str!("approval_page.html"),
        &[
            ("CARDS", &cards),
            (
                "EMPTY_HIDDEN",
                if pending.is_empty() { "" } else { " hidden" },
            ),
            ("ISSUER", &issuer),
            ("NONCE", &nonce),
        ],
    );
    let mut r = Response::new(Full::new(Bytes::from(html)));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert("content-security-policy", v);
    }
    r
}

/// One pending request as server-rendered HTML (the page's script renders the same
/// structure from the JSON API afterwards). Every text is escaped.
pub(super) fn render_card(v: &PendingView) -> String {
    let id = html_escape(&v.id);
    let bm = match &v.binding_message {
        Some(m) => format!("<p class=\"bm\">{}</p>", html_escape(m)),
        None => "<p class=\"bm none\">(no binding message)</p>".to_string(),
    };
    format!(
        "<article class=\"card\" data-id=\"{id}\" data-request=\"\">{bm}\
         <p class=\"meta\"><b class=\"client\">{client}</b> asks <b class=\"user\">{user}</b></p>\
         <p class=\"meta\">scope {scope} · <span class=\"left\" data-expires-in=\"{left}\">{left} s left</span></p>\
         <div class=\"actions\">\
         <button type=\"button\" class=\"approve\" id=\"approve-{id}\" data-action=\"approve\" data-id=\"{id}\">Approve</button>\
         <button type=\"button\" class=\"deny\" id=\"deny-{id}\" data-action=\"deny\" data-id=\"{id}\">Deny</button>\
         </div></article>",
        client = html_escape(&v.client_id),
        user = html_escape(&v.user),
        scope = html_escape(&v.scope),
        left = v.expires_in,
    )
}

/// Replaces `{{NAME}}` markers in one pass; substituted values are never re-scanned.
pub(super) fn render_template(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 1024);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                let name = &after[..end];
                match vars.iter().find(|(k, _)| *k == name) {
                    Some((_, v)) => out.push_str(v),
                    None => {
                        out.push_str("{{");
                        out.push_str(name);
                        out.push_str("}}");
                    }
                }
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
