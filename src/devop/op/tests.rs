//! The development OP's helpers, case by case.

use super::*;

#[test]
fn escapes_html_specials() {
    assert_eq!(
        html_escape(r#"<script>alert("x&y")</script>'"#),
        "&lt;script&gt;alert(&quot;x&amp;y&quot;)&lt;/script&gt;&#39;"
    );
    assert_eq!(html_escape("Deploy api to prod"), "Deploy api to prod");
}

#[test]
fn binding_message_rules() {
    assert!(binding_message_ok(
        "Deploy api-v2 to prod? #42, ok: yes/no!"
    ));
    assert!(binding_message_ok(&"a".repeat(64)));
    assert!(!binding_message_ok(&"a".repeat(65)));
    assert!(!binding_message_ok(""));
    assert!(!binding_message_ok("<b>"));
    assert!(!binding_message_ok("a\nb"));
    assert!(!binding_message_ok("quote\""));
}

#[test]
fn bearer_syntax() {
    assert!(bearer_token_syntax_ok("abcDEF012-._~+/=="));
    assert!(!bearer_token_syntax_ok("=="));
    assert!(!bearer_token_syntax_ok("has space"));
    assert!(!bearer_token_syntax_ok("a=b"));
    assert!(!bearer_token_syntax_ok(&"a".repeat(1025)));
}

#[test]
fn masks_users() {
    assert_eq!(mask_user("demo@example.com"), "d***@example.com");
    assert_eq!(mask_user("alice"), "a***");
    assert_eq!(mask_user(""), "***");
}

#[test]
fn basic_credentials_are_form_decoded() {
    let b64 = STANDARD.encode("my%20client:s%3Acret+x%2B");
    assert_eq!(
        parse_basic_credentials(&b64),
        Some(("my client".to_string(), "s:cret x+".to_string()))
    );
    assert_eq!(parse_basic_credentials("!!!"), None);
    assert_eq!(parse_basic_credentials(&STANDARD.encode("nocolon")), None);
}

#[test]
fn template_is_single_pass() {
    let out = render_template("a{{X}}b{{Y}}c{{Z}}{{", &[("X", "{{Y}}"), ("Y", "1")]);
    assert_eq!(out, "a{{Y}}b1c{{Z}}{{");
}

#[test]
fn card_escapes_everything() {
    let v = PendingView {
        id: "id\"1".into(),
        client_id: "<img src=x onerror=alert(1)>".into(),
        binding_message: Some("<b>".into()),
        scope: "openid".into(),
        expires_at: 0,
        expires_in: 5,
        user: "a***@x".into(),
    };
    let html = render_card(&v);
    assert!(!html.contains("<img"));
    assert!(!html.contains("<b>"));
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(html.contains("data-id=\"id&quot;1\""));
}

#[test]
fn hosts() {
    assert_eq!(host_name("127.0.0.1:80"), "127.0.0.1");
    assert_eq!(host_name("[::1]:80"), "[::1]");
    assert_eq!(host_name("example.com"), "example.com");
}

#[test]
fn subjects_are_stable() {
    assert_eq!(
        subject_for("demo@example.com"),
        subject_for("demo@example.com")
    );
    assert_ne!(
        subject_for("demo@example.com"),
        subject_for("other@example.com")
    );
    assert!(subject_for("x").starts_with("user-"));
}
