//! What each built-in takes and gives: the argument types under which a call cannot
//! fail, and its result type.

use super::*;

/// A built-in's result type, and whether the call cannot fail with these arguments.
pub(crate) struct Signature {
    pub result: Ty,
    pub total: bool,
}

/// Built-ins whose failure conditions are known. `None`: any other function.
pub(crate) fn builtin(name: &str, params: &[Ref<Expr>], args: &[Ty]) -> Option<Signature> {
    let arg = |i: usize| args.get(i).cloned().unwrap_or(Ty::Any);
    let is = |i: usize, want: &Ty| arg(i).fits(want);
    let sig = |result: Ty, total: bool| Some(Signature { result, total });
    let s = Ty::String;
    match name {
        "is_array" | "is_boolean" | "is_null" | "is_number" | "is_object" | "is_set"
        | "is_string" => sig(Ty::Bool, true),
        "type_name" => sig(Ty::String, true),
        "concat" => sig(
            Ty::String,
            is(0, &s) && (is(1, &Ty::array(s.clone())) || is(1, &Ty::set(s.clone()))),
        ),
        "startswith" | "endswith" | "contains" => sig(Ty::Bool, is(0, &s) && is(1, &s)),
        "lower" | "upper" | "trim_space" => sig(Ty::String, is(0, &s)),
        "count" => sig(Ty::Number, arg(0).is_collection() || is(0, &s)),
        "object.get" => {
            let value = match arg(0) {
                Ty::Object(_, v) => v.join(&arg(2)),
                _ => Ty::Any,
            };
            sig(value, is(0, &Ty::object(Ty::Any, Ty::Any)))
        }
        "object.union" => {
            let total =
                is(0, &Ty::object(Ty::Any, Ty::Any)) && is(1, &Ty::object(Ty::Any, Ty::Any));
            let result = if total { arg(0).join(&arg(1)) } else { Ty::Any };
            sig(result, total)
        }
        "strings.replace_n" => sig(
            Ty::String,
            is(0, &Ty::object(s.clone(), s.clone())) && is(1, &s),
        ),
        "sprintf" => sig(Ty::String, sprintf_total(params)),
        "regex.match" => {
            let pattern_ok = params.first().is_some_and(|p| match p.as_ref() {
                Expr::String { value, .. } | Expr::RawString { value, .. } => value
                    .as_string()
                    .is_ok_and(|pat| regex::Regex::new(pat).is_ok()),
                _ => false,
            });
            sig(Ty::Bool, pattern_ok && is(1, &s))
        }
        _ => None,
    }
}

/// `sprintf` cannot fail when its format is a literal whose verbs are only `%v` and
/// `%s` (and `%%`; both print any value) and its arguments an array literal with one
/// item per verb.
pub(super) fn sprintf_total(params: &[Ref<Expr>]) -> bool {
    let [fmt, args] = params else { return false };
    let (Expr::String { value, .. } | Expr::RawString { value, .. }) = fmt.as_ref() else {
        return false;
    };
    let Ok(fmt) = value.as_string() else {
        return false;
    };
    let Expr::Array { items, .. } = args.as_ref() else {
        return false;
    };
    match sprintf_verbs(fmt) {
        Some(verbs) => verbs.len() == items.len(),
        None => false,
    }
}

/// The verbs of a format string (`%%` is not one); `None` for any verb but `v`/`s`
/// or a trailing `%`.
pub(crate) fn sprintf_verbs(fmt: &str) -> Option<Vec<char>> {
    let mut verbs = Vec::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            continue;
        }
        match chars.next()? {
            '%' => {}
            v @ ('v' | 's') => verbs.push(v),
            _ => return None,
        }
    }
    Some(verbs)
}
