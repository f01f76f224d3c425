//! Expression helpers shared by the analysis and the type checker: reference text,
//! canonical forms, the variables an expression or query mentions.

use super::*;

/// `a.b.c` for a reference made of names only (a variable and dot or string-bracket
/// fields); `None` when a part is computed.
pub(crate) fn ref_text(e: &Ref<Expr>) -> Option<String> {
    match e.as_ref() {
        Expr::Var { span, .. } => Some(span.text().to_string()),
        Expr::RefDot { refr, field, .. } => Some(format!("{}.{}", ref_text(refr)?, field.0.text())),
        Expr::RefBrack { refr, index, .. } => match index.as_ref() {
            Expr::String { value, .. } | Expr::RawString { value, .. } => {
                Some(format!("{}.{}", ref_text(refr)?, value.as_string().ok()?))
            }
            _ => None,
        },
        _ => None,
    }
}

/// An expression's structure as text, for telling whether two expressions are the
/// same. (Source spans are not enough: an object literal's span covers only its
/// last field.) Comprehensions and unknown forms render by position, so they are
/// never the same as anything else.
pub(crate) fn canonical(e: &Ref<Expr>) -> String {
    let all = |items: &[Ref<Expr>]| items.iter().map(canonical).collect::<Vec<_>>().join(",");
    let at = |kind: &str| format!("{kind}@{}:{}", e.span().line, e.span().col);
    match e.as_ref() {
        Expr::String { value, .. }
        | Expr::RawString { value, .. }
        | Expr::Number { value, .. }
        | Expr::Bool { value, .. }
        | Expr::Null { value, .. } => value.to_json_str().unwrap_or_else(|_| at("literal")),
        Expr::Var { span, .. } => span.text().to_string(),
        Expr::Array { items, .. } => format!("[{}]", all(items)),
        Expr::Set { items, .. } => format!("set({})", all(items)),
        Expr::Object { fields, .. } => {
            let fields: Vec<String> = fields
                .iter()
                .map(|(_, k, v)| format!("{}:{}", canonical(k), canonical(v)))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Expr::Call { fcn, params, .. } => format!("{}({})", canonical(fcn), all(params)),
        Expr::UnaryExpr { expr, .. } => format!("-({})", canonical(expr)),
        Expr::RefDot { refr, field, .. } => format!("{}.{}", canonical(refr), field.0.text()),
        Expr::RefBrack { refr, index, .. } => {
            format!("{}[{}]", canonical(refr), canonical(index))
        }
        Expr::BinExpr { op, lhs, rhs, .. } => {
            format!("({} {op:?} {})", canonical(lhs), canonical(rhs))
        }
        Expr::BoolExpr { op, lhs, rhs, .. } => {
            format!("({} {op:?} {})", canonical(lhs), canonical(rhs))
        }
        Expr::ArithExpr { op, lhs, rhs, .. } => {
            format!("({} {op:?} {})", canonical(lhs), canonical(rhs))
        }
        Expr::AssignExpr { op, lhs, rhs, .. } => {
            format!("({} {op:?} {})", canonical(lhs), canonical(rhs))
        }
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } => format!(
            "({}{} in {})",
            key.as_ref()
                .map(|k| format!("{},", canonical(k)))
                .unwrap_or_default(),
            canonical(value),
            canonical(collection)
        ),
        _ => at("expr"),
    }
}

/// The leading name of a rule head, for messages.
pub(super) fn head_name(e: &Ref<Expr>) -> String {
    match e.as_ref() {
        Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => head_name(refr),
        other => other.span().text().to_string(),
    }
}

pub(super) fn is_scalar_literal(e: &Ref<Expr>) -> bool {
    matches!(
        e.as_ref(),
        Expr::String { .. }
            | Expr::RawString { .. }
            | Expr::Number { .. }
            | Expr::Bool { .. }
            | Expr::Null { .. }
    )
}

/// Every variable name an expression mentions (with its line). A comprehension's
/// variables are its own (regorus checks their safety) and are not included.
pub(crate) fn vars(e: &Ref<Expr>, out: &mut Vec<(String, u32)>) {
    collect_vars(e, out, false);
}

/// Every variable name an expression mentions, comprehensions included.
pub(super) fn vars_deep(e: &Ref<Expr>, out: &mut Vec<(String, u32)>) {
    collect_vars(e, out, true);
}

pub(super) fn collect_vars(e: &Ref<Expr>, out: &mut Vec<(String, u32)>, deep: bool) {
    let go = |x: &Ref<Expr>, out: &mut Vec<(String, u32)>| collect_vars(x, out, deep);
    match e.as_ref() {
        Expr::Var { span, .. } => out.push((span.text().to_string(), span.line)),
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            items.iter().for_each(|i| go(i, out));
        }
        Expr::Object { fields, .. } => {
            for (_, k, v) in fields {
                go(k, out);
                go(v, out);
            }
        }
        Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } if deep => {
            go(term, out);
            query_vars(query, out);
        }
        Expr::ObjectCompr {
            key, value, query, ..
        } if deep => {
            go(key, out);
            go(value, out);
            query_vars(query, out);
        }
        // The function's own name is not a variable.
        Expr::Call { params, .. } => params.iter().for_each(|p| go(p, out)),
        Expr::UnaryExpr { expr, .. } => go(expr, out),
        Expr::RefDot { refr, .. } => go(refr, out),
        Expr::RefBrack { refr, index, .. } => {
            go(refr, out);
            go(index, out);
        }
        Expr::BinExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::AssignExpr { lhs, rhs, .. } => {
            go(lhs, out);
            go(rhs, out);
        }
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } => {
            if let Some(k) = key {
                go(k, out);
            }
            go(value, out);
            go(collection, out);
        }
        _ => {}
    }
}

pub(super) fn query_vars(q: &Ref<Query>, out: &mut Vec<(String, u32)>) {
    for stmt in &q.stmts {
        match &stmt.literal {
            Literal::SomeVars { vars: names, .. } => {
                out.extend(names.iter().map(|s| (s.text().to_string(), s.line)));
            }
            Literal::SomeIn {
                key,
                value,
                collection,
                ..
            } => {
                if let Some(k) = key {
                    vars(k, out);
                }
                vars(value, out);
                vars(collection, out);
            }
            Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => vars(expr, out),
            Literal::Every {
                key,
                value,
                domain,
                query,
                ..
            } => {
                if let Some(k) = key {
                    out.push((k.text().to_string(), k.line));
                }
                out.push((value.text().to_string(), value.line));
                vars(domain, out);
                query_vars(query, out);
            }
        }
        for w in &stmt.with_mods {
            vars(&w.r#as, out);
        }
    }
}
