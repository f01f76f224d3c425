//! Whether a complete rule or function gives one value: bodies whose value depends on
//! no body variable, values the data makes single, and bodies that cannot both hold.

use super::*;

/// Whether a body's value is the same however its body is satisfied: it mentions no
/// variable of the body (only `input`, `data`, imports, rules, function arguments).
pub(super) fn value_is_stable(d: &Definition, names: &Names<'_>) -> bool {
    let Some(value) = &d.value_expr else {
        return true;
    };
    let mut shallow = Vec::new();
    vars(value, &mut shallow);
    if !shallow
        .iter()
        .all(|(v, _)| v == "_" || names.is_global(v) || d.args.contains(v))
    {
        return false;
    }
    // A comprehension in the value must not see a variable of the body either.
    let mut deep = Vec::new();
    vars_deep(value, &mut deep);
    let mut body = Vec::new();
    query_vars(&d.query, &mut body);
    !deep
        .iter()
        .any(|(v, _)| !names.is_global(v) && body.iter().any(|(b, _)| b == v))
}

/// `k` of `some k, v in data.x` with a test `e in v` (`e` stable) gives one value
/// when no two collections under `data.x` share an item. The data is the revision's
/// own, so this is known at load.
pub(super) fn single_by_data(d: &Definition, names: &Names<'_>, data: &serde_json::Value) -> bool {
    let Some(value) = &d.value_expr else {
        return true;
    };
    let Expr::Var { span, .. } = value.as_ref() else {
        return false;
    };
    let k = span.text();
    let mut collection = None;
    let mut member_of = None;
    for stmt in &d.query.stmts {
        match &stmt.literal {
            Literal::SomeIn {
                key: Some(key),
                value,
                collection: c,
                ..
            } if key.span().text() == k => {
                collection = Some((c.clone(), value.span().text().to_string()));
            }
            Literal::Expr { expr, .. } => {
                if let Expr::Membership {
                    key: None,
                    value: item,
                    collection: c,
                    ..
                } = expr.as_ref()
                {
                    let mut vs = Vec::new();
                    vars(item, &mut vs);
                    if vs.iter().all(|(v, _)| names.is_global(v)) {
                        member_of = Some(c.span().text().to_string());
                    }
                }
            }
            _ => {}
        }
        if !stmt.with_mods.is_empty() {
            return false;
        }
    }
    let (Some((c, v)), Some(m)) = (collection, member_of) else {
        return false;
    };
    if v != m {
        return false;
    }
    // Only other statements that bind nothing new may filter further.
    let Some(path) = ref_text(&c).filter(|p| p.starts_with("data.")) else {
        return false;
    };
    if names.rules.keys().any(|r| {
        r == &path || r.starts_with(&format!("{path}.")) || path.starts_with(&format!("{r}."))
    }) {
        return false;
    }
    let mut doc = Some(data);
    for seg in path.split('.').skip(1) {
        doc = doc.and_then(|d| d.get(seg));
    }
    let Some(serde_json::Value::Object(groups)) = doc else {
        return false;
    };
    let mut seen: Vec<&serde_json::Value> = Vec::new();
    for items in groups.values() {
        let serde_json::Value::Array(items) = items else {
            return false;
        };
        for item in items {
            if seen.contains(&item) {
                return false;
            }
        }
        seen.extend(items);
    }
    true
}

/// What a body requires of one global expression.
#[derive(PartialEq)]
pub(super) enum Condition {
    Equals(Value),
    Holds,
    Fails,
}

/// The conditions a body states at its top level on expressions of global names.
pub(super) fn conditions(d: &Definition, names: &Names<'_>) -> Vec<(String, Condition)> {
    let global = |e: &Ref<Expr>| {
        let mut vs = Vec::new();
        vars(e, &mut vs);
        vs.iter()
            .all(|(v, _)| names.is_global(v) || d.args.contains(v))
    };
    let literal = |e: &Ref<Expr>| match e.as_ref() {
        Expr::String { value, .. }
        | Expr::RawString { value, .. }
        | Expr::Number { value, .. }
        | Expr::Bool { value, .. }
        | Expr::Null { value, .. } => Some(value.clone()),
        _ => None,
    };
    let mut out = Vec::new();
    for stmt in &d.query.stmts {
        if !stmt.with_mods.is_empty() {
            continue;
        }
        match &stmt.literal {
            Literal::Expr { expr, .. } => match expr.as_ref() {
                Expr::BoolExpr {
                    op: BoolOp::Eq,
                    lhs,
                    rhs,
                    ..
                } => {
                    let (side, lit) = match (literal(lhs), literal(rhs)) {
                        (None, Some(l)) => (lhs, l),
                        (Some(l), None) => (rhs, l),
                        _ => continue,
                    };
                    if global(side) {
                        out.push((canonical(side), Condition::Equals(lit)));
                    }
                }
                Expr::Var { .. } | Expr::RefDot { .. } | Expr::RefBrack { .. } if global(expr) => {
                    out.push((canonical(expr), Condition::Holds));
                }
                _ => {}
            },
            Literal::NotExpr { expr, .. } if global(expr) => {
                out.push((canonical(expr), Condition::Fails));
            }
            _ => {}
        }
    }
    out
}

/// Whether two bodies can never both hold for one input: one requires `x == a` and
/// the other `x == b` (a ≠ b), or one `x` and the other `not x`.
pub(super) fn exclusive(d: &Definition, e: &Definition, names: &Names<'_>) -> bool {
    // Conditions on function arguments compare only when both bodies name them alike.
    if d.args != e.args {
        return false;
    }
    let (cd, ce) = (conditions(d, names), conditions(e, names));
    cd.iter().any(|(x, a)| {
        ce.iter().any(|(y, b)| {
            x == y
                && match (a, b) {
                    (Condition::Equals(p), Condition::Equals(q)) => p != q,
                    (Condition::Holds, Condition::Fails) | (Condition::Fails, Condition::Holds) => {
                        true
                    }
                    (Condition::Equals(p), Condition::Fails)
                    | (Condition::Fails, Condition::Equals(p)) => *p != Value::Bool(false),
                    _ => false,
                }
        })
    })
}
