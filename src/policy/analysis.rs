//! Static checks over the parsed policy set, before anything is evaluated.
//!
//! Two jobs:
//!
//! 1. **Load errors OPA's compiler would raise** that regorus accepts and would only
//!    meet at run time (or never): calls to functions nobody defined, built-in calls
//!    with the wrong number of arguments, one name defined as two kinds of rule.
//!    Such a policy set is refused by `check`, at startup and by hot reload.
//! 2. **Whether the bytecode VM is exact** for the set. regorus' VM (0.14) cannot
//!    tell an error from "undefined": a built-in error inside a rule body only fails
//!    that body, and two bodies of a complete rule (or function) giving different
//!    values make the rule undefined, where OPA (and the interpreter with strict
//!    built-in errors) stop with an error. A set is *VM-exact* when no construct in
//!    it can raise such an error: no built-in beyond the total type tests, no
//!    arithmetic or set operator, no object comprehension or object rule, no complete
//!    rule or function with two definitions that could give different values. Only a
//!    VM-exact set runs on the VM; every other set runs on the interpreter.
//!
//! The check is conservative: "not exact" costs speed, never a wrong decision.

use std::collections::BTreeMap;
use std::path::PathBuf;

use regorus::unstable::{
    ArithOp, AssignOp, BUILTINS, Expr, Literal, Module, Parser, Query, Ref, Rule, RuleHead, Source,
};

use super::PolicyError;
use super::files::{FileSet, Kind};

/// Built-ins that never fail, whatever their argument: type tests.
const TOTAL_BUILTINS: &[&str] = &[
    "is_array",
    "is_boolean",
    "is_null",
    "is_number",
    "is_object",
    "is_set",
    "is_string",
    "type_name",
];

/// Functions the runtime provides without a `BUILTINS` entry (or with a
/// variable number of arguments).
const SPECIAL_FUNCTIONS: &[&str] = &["print"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuleKind {
    Complete,
    PartialSet,
    Function(usize),
}

impl RuleKind {
    fn describe(self) -> String {
        match self {
            RuleKind::Complete => "a complete rule".to_string(),
            RuleKind::PartialSet => "a partial set rule (contains)".to_string(),
            RuleKind::Function(n) => format!("a function of {n} argument(s)"),
        }
    }
}

/// One definition (rule body that is not an `else`) of a complete rule or function.
struct Definition {
    /// The value expression's source text (`true` when the rule has none).
    value: String,
    /// Whether the value is the same in every body that could define it.
    stable: bool,
}

#[derive(Default)]
struct RuleInfo {
    kinds: Vec<(RuleKind, String)>,
    definitions: Vec<Definition>,
}

/// What the analysis found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Analysis {
    /// `None` when the set is VM-exact; otherwise the first reason it is not.
    pub not_vm_exact: Option<String>,
}

/// Runs the static checks over every `.rego` file of `set` (test files too, when the
/// set holds them). A parse error is left for regorus to report with its own message.
pub(crate) fn analyze(set: &FileSet) -> Result<Analysis, PolicyError> {
    let mut modules: Vec<(String, Module)> = Vec::new();
    for f in &set.files {
        if !matches!(f.kind, Kind::Rego | Kind::Test) {
            continue;
        }
        let parsed = Source::from_contents(f.name.clone(), f.content.clone())
            .and_then(|src| Parser::new(&src).and_then(|mut p| p.parse()));
        match parsed {
            Ok(m) => modules.push((f.name.clone(), m)),
            Err(e) => {
                return Err(PolicyError::Compile {
                    path: PathBuf::from(&f.name),
                    message: e.to_string(),
                });
            }
        }
    }
    let mut rules: BTreeMap<String, RuleInfo> = BTreeMap::new();
    // Object rules (`x[k] := v`): path of the object, where defined.
    let mut object_rules: Vec<(String, String)> = Vec::new();
    let mut not_exact: Option<String> = None;
    let mut inexact = |reason: String| {
        if not_exact.is_none() {
            not_exact = Some(reason);
        }
    };
    for (file, m) in &modules {
        let package = ref_text(&m.package.refr).unwrap_or_default();
        let package = format!("data.{package}");
        for rule in &m.policy {
            let Rule::Spec { head, bodies, span } = rule.as_ref() else {
                continue;
            };
            let at = format!("{file}:{}", span.line);
            let (refr, kind, head_assign) = match head {
                RuleHead::Compr { refr, assign, .. } => (refr, RuleKind::Complete, assign),
                RuleHead::Set { refr, .. } => (refr, RuleKind::PartialSet, &None),
                RuleHead::Func {
                    refr, args, assign, ..
                } => (refr, RuleKind::Function(args.len()), assign),
            };
            let Some(name) = ref_text(refr) else {
                // `x[k] := v` with a variable key: an object rule, whose keys can
                // conflict.
                if let Expr::RefBrack { refr: base, .. } = refr.as_ref()
                    && let Some(base) = ref_text(base)
                {
                    object_rules.push((format!("{package}.{base}"), at.clone()));
                }
                inexact(format!(
                    "{at}: rule {} builds an object whose keys can conflict",
                    head_name(refr)
                ));
                continue;
            };
            let path = format!("{package}.{name}");
            let info = rules.entry(path).or_default();
            info.kinds.push((kind, at.clone()));
            if kind == RuleKind::PartialSet {
                continue;
            }
            for body in bodies {
                if body.is_else {
                    continue; // else bodies are tried in order: no conflict
                }
                let assign = body.assign.as_ref().or(head_assign.as_ref());
                let (value, stable) = match assign {
                    None => ("true".to_string(), true),
                    Some(a) => (a.value.span().text().to_string(), is_stable(&a.value)),
                };
                info.definitions.push(Definition { value, stable });
            }
        }
    }

    // An object rule next to a rule for one of its keys: OPA reports their clash at
    // run time, regorus lets one win. Refused, so the clash cannot go unnoticed.
    for (object, at) in &object_rules {
        let key_prefix = format!("{object}.");
        if let Some((path, info)) = rules.iter().find(|(p, _)| p.starts_with(&key_prefix)) {
            return Err(PolicyError::Compile {
                path: PathBuf::from(at.split(':').next().unwrap_or_default()),
                message: format!(
                    "{at}: the object rule {object} and the rule {path} at {} define keys of one object; \
                     their values could clash unnoticed (define the object in one rule)",
                    info.kinds.first().map(|k| k.1.as_str()).unwrap_or("?")
                ),
            });
        }
    }

    // One name, one kind of rule (OPA: "conflicting rules found").
    for (path, info) in &rules {
        let (first, first_at) = &info.kinds[0];
        if let Some((other, other_at)) = info.kinds.iter().find(|(k, _)| k != first) {
            return Err(PolicyError::Compile {
                path: PathBuf::from(other_at.split(':').next().unwrap_or_default()),
                message: format!(
                    "conflicting rules {path}: {} at {first_at} and {} at {other_at}",
                    first.describe(),
                    other.describe()
                ),
            });
        }
        if info.definitions.len() > 1 {
            let v0 = &info.definitions[0].value;
            let same = info.definitions.iter().all(|d| d.stable && &d.value == v0);
            if !same {
                inexact(format!(
                    "{path} has {} definitions that can give different values (a conflict is an error)",
                    info.definitions.len()
                ));
            }
        }
    }

    // Calls: every function must exist and take the arguments given.
    for (file, m) in &modules {
        let package = format!("data.{}", ref_text(&m.package.refr).unwrap_or_default());
        let imports: Vec<(String, String)> = m
            .imports
            .iter()
            .filter_map(|i| {
                let full = ref_text(&i.refr)?;
                let alias = match &i.r#as {
                    Some(s) => s.text().to_string(),
                    None => full.rsplit('.').next()?.to_string(),
                };
                Some((alias, full))
            })
            .collect();
        let scope = Scope {
            file,
            package: &package,
            imports: &imports,
            rules: &rules,
        };
        let mut v = Visitor {
            scope: &scope,
            error: None,
            not_exact: None,
        };
        for rule in &m.policy {
            v.rule(rule);
            if let Some(e) = v.error.take() {
                return Err(PolicyError::Compile {
                    path: PathBuf::from(file),
                    message: e,
                });
            }
        }
        if let Some(r) = v.not_exact {
            inexact(r);
        }
    }
    Ok(Analysis {
        not_vm_exact: not_exact,
    })
}

struct Scope<'a> {
    file: &'a str,
    package: &'a str,
    imports: &'a [(String, String)],
    rules: &'a BTreeMap<String, RuleInfo>,
}

struct Visitor<'a> {
    scope: &'a Scope<'a>,
    error: Option<String>,
    not_exact: Option<String>,
}

impl Visitor<'_> {
    fn inexact(&mut self, line: u32, what: &str) {
        if self.not_exact.is_none() {
            self.not_exact = Some(format!("{}:{line}: {what}", self.scope.file));
        }
    }

    fn fail(&mut self, line: u32, what: String) {
        if self.error.is_none() {
            self.error = Some(format!("{}:{line}: {what}", self.scope.file));
        }
    }

    /// OPA's safety rule for heads: a variable in a rule's key or value must be bound
    /// in its body (or be a function argument). A variable the body never mentions
    /// is reported; finer cases are left to regorus.
    fn head_safety(&mut self, head: &RuleHead, bodies: &[regorus::unstable::RuleBody]) {
        let mut head_vars = Vec::new();
        let mut bound = Vec::new();
        match head {
            RuleHead::Compr { assign, .. } => {
                if let Some(a) = assign {
                    vars(&a.value, &mut head_vars);
                }
            }
            RuleHead::Set { key, .. } => {
                if let Some(k) = key {
                    vars(k, &mut head_vars);
                }
            }
            RuleHead::Func { args, assign, .. } => {
                args.iter().for_each(|a| vars(a, &mut bound));
                if let Some(a) = assign {
                    vars(&a.value, &mut head_vars);
                }
            }
        }
        for b in bodies {
            if let Some(a) = &b.assign {
                vars(&a.value, &mut head_vars);
            }
            query_vars(&b.query, &mut bound);
        }
        for (name, line) in head_vars {
            if name == "_"
                || name == "input"
                || name == "data"
                || bound.iter().any(|(b, _)| *b == name)
            {
                continue;
            }
            if self.scope.imports.iter().any(|(alias, _)| *alias == name)
                || self
                    .scope
                    .rules
                    .contains_key(&format!("{}.{name}", self.scope.package))
            {
                continue;
            }
            self.fail(line, format!("var {name} is unsafe"));
        }
    }

    fn rule(&mut self, rule: &Ref<Rule>) {
        if let Rule::Spec { head, bodies, .. } = rule.as_ref() {
            self.head_safety(head, bodies);
        }
        match rule.as_ref() {
            Rule::Spec { head, bodies, .. } => {
                match head {
                    RuleHead::Compr { refr, assign, .. } => {
                        self.expr(refr);
                        if let Some(a) = assign {
                            self.expr(&a.value);
                        }
                    }
                    RuleHead::Set { refr, key, .. } => {
                        self.expr(refr);
                        if let Some(k) = key {
                            self.expr(k);
                        }
                    }
                    RuleHead::Func { args, assign, .. } => {
                        for a in args {
                            self.expr(a);
                        }
                        if let Some(a) = assign {
                            self.expr(&a.value);
                        }
                    }
                }
                for b in bodies {
                    if let Some(a) = &b.assign {
                        self.expr(&a.value);
                    }
                    self.query(&b.query);
                }
            }
            Rule::Default { value, .. } => self.expr(value),
        }
    }

    fn query(&mut self, q: &Ref<Query>) {
        for stmt in &q.stmts {
            if !stmt.with_mods.is_empty() {
                self.inexact(stmt.span.line, "uses `with` (interpreter only)");
                for w in &stmt.with_mods {
                    self.expr(&w.r#as);
                }
            }
            match &stmt.literal {
                Literal::SomeVars { .. } => {}
                Literal::SomeIn {
                    key,
                    value,
                    collection,
                    ..
                } => {
                    if let Some(k) = key {
                        self.expr(k);
                    }
                    self.expr(value);
                    self.expr(collection);
                }
                Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => self.expr(expr),
                Literal::Every { domain, query, .. } => {
                    self.expr(domain);
                    self.query(query);
                }
            }
        }
    }

    fn expr(&mut self, e: &Ref<Expr>) {
        match e.as_ref() {
            Expr::String { .. }
            | Expr::RawString { .. }
            | Expr::Number { .. }
            | Expr::Bool { .. }
            | Expr::Null { .. }
            | Expr::Var { .. } => {}
            Expr::Array { items, .. } | Expr::Set { items, .. } => {
                items.iter().for_each(|i| self.expr(i));
            }
            Expr::Object { fields, span, .. } => {
                for (_, k, v) in fields {
                    if !is_scalar_literal(k) {
                        self.inexact(span.line, "an object key computed at run time can conflict");
                    }
                    self.expr(k);
                    self.expr(v);
                }
            }
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                self.expr(term);
                self.query(query);
            }
            Expr::ObjectCompr {
                key,
                value,
                query,
                span,
                ..
            } => {
                self.inexact(span.line, "an object comprehension's keys can conflict");
                self.expr(key);
                self.expr(value);
                self.query(query);
            }
            Expr::Call {
                fcn, params, span, ..
            } => {
                self.call(fcn, params.len(), span.line);
                params.iter().for_each(|p| self.expr(p));
            }
            Expr::UnaryExpr { expr, span, .. } => {
                if !matches!(expr.as_ref(), Expr::Number { .. }) {
                    self.inexact(span.line, "negation can fail at run time");
                }
                self.expr(expr);
            }
            Expr::RefDot { refr, .. } => self.expr(refr),
            Expr::RefBrack { refr, index, .. } => {
                self.expr(refr);
                self.expr(index);
            }
            Expr::BinExpr { lhs, rhs, span, .. } => {
                self.inexact(span.line, "a set operator can fail at run time");
                self.expr(lhs);
                self.expr(rhs);
            }
            Expr::ArithExpr {
                lhs, rhs, span, op, ..
            } => {
                // OPA's type checker refuses arithmetic on a literal that is not a
                // number (`"prod" + 1`); sets only subtract.
                let bad = |e: &Ref<Expr>| match e.as_ref() {
                    Expr::String { .. }
                    | Expr::RawString { .. }
                    | Expr::Bool { .. }
                    | Expr::Null { .. }
                    | Expr::Array { .. }
                    | Expr::Object { .. }
                    | Expr::ArrayCompr { .. }
                    | Expr::ObjectCompr { .. } => true,
                    Expr::Set { .. } | Expr::SetCompr { .. } => !matches!(op, ArithOp::Sub),
                    _ => false,
                };
                if bad(lhs) || bad(rhs) {
                    self.fail(
                        span.line,
                        format!(
                            "{}: invalid argument(s): arithmetic on a value that is not a number",
                            span.text()
                        ),
                    );
                }
                self.inexact(span.line, "arithmetic can fail at run time");
                self.expr(lhs);
                self.expr(rhs);
            }
            Expr::BoolExpr { lhs, rhs, .. } => {
                self.expr(lhs);
                self.expr(rhs);
            }
            Expr::AssignExpr { lhs, rhs, op, .. } => {
                let _: &AssignOp = op;
                self.expr(lhs);
                self.expr(rhs);
            }
            Expr::Membership {
                key,
                value,
                collection,
                ..
            } => {
                if let Some(k) = key {
                    self.expr(k);
                }
                self.expr(value);
                self.expr(collection);
            }
            #[allow(unreachable_patterns)]
            _ => {
                self.inexact(e.span().line, "an expression the analysis does not know");
            }
        }
    }

    fn call(&mut self, fcn: &Ref<Expr>, args: usize, line: u32) {
        let Some(name) = ref_text(fcn) else {
            self.inexact(line, "a call through a computed reference");
            return;
        };
        if SPECIAL_FUNCTIONS.contains(&name.as_str()) {
            return;
        }
        if let Some((_, arity)) = BUILTINS.get(name.as_str()) {
            let arity = usize::from(*arity);
            // A built-in may be given one more argument: its output.
            if args != arity && args != arity + 1 {
                self.fail(
                    line,
                    format!("{name}: arity mismatch: takes {arity} argument(s), given {args}"),
                );
            }
            if !TOTAL_BUILTINS.contains(&name.as_str()) {
                self.inexact(line, &format!("built-in {name} can fail at run time"));
            }
            return;
        }
        let full = self.resolve(&name);
        match self.scope.rules.get(&full) {
            Some(info) => match info.kinds.first().map(|k| k.0) {
                Some(RuleKind::Function(n)) => {
                    if args != n && args != n + 1 {
                        self.fail(
                            line,
                            format!("function {full} takes {n} argument(s), given {args}"),
                        );
                    }
                }
                _ => self.fail(line, format!("{full} is a rule, not a function")),
            },
            None => self.fail(line, format!("undefined function {name}")),
        }
    }

    /// The full `data.` path a function name in this module refers to.
    fn resolve(&self, name: &str) -> String {
        if name.starts_with("data.") {
            return name.to_string();
        }
        let (first, rest) = match name.split_once('.') {
            Some((f, r)) => (f, Some(r)),
            None => (name, None),
        };
        if let Some((_, full)) = self.scope.imports.iter().find(|(alias, _)| alias == first) {
            return match rest {
                Some(r) => format!("{full}.{r}"),
                None => full.clone(),
            };
        }
        format!("{}.{name}", self.scope.package)
    }
}

/// `a.b.c` for a reference made of names only (a variable and dot or string-bracket
/// fields); `None` when a part is computed.
fn ref_text(e: &Ref<Expr>) -> Option<String> {
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

/// The leading name of a rule head, for messages.
fn head_name(e: &Ref<Expr>) -> String {
    match e.as_ref() {
        Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => head_name(refr),
        other => other.span().text().to_string(),
    }
}

fn is_scalar_literal(e: &Ref<Expr>) -> bool {
    matches!(
        e.as_ref(),
        Expr::String { .. }
            | Expr::RawString { .. }
            | Expr::Number { .. }
            | Expr::Bool { .. }
            | Expr::Null { .. }
    )
}

/// A value expression that is the same wherever it is computed in one evaluation:
/// a scalar literal, or a reference into `input` / `data` by constant names.
fn is_stable(e: &Ref<Expr>) -> bool {
    if is_scalar_literal(e) {
        return true;
    }
    ref_text(e).is_some_and(|t| {
        let root = t.split('.').next().unwrap_or_default();
        root == "input" || root == "data"
    })
}

/// Every variable name an expression mentions (with its line).
fn vars(e: &Ref<Expr>, out: &mut Vec<(String, u32)>) {
    match e.as_ref() {
        Expr::Var { span, .. } => out.push((span.text().to_string(), span.line)),
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            items.iter().for_each(|i| vars(i, out));
        }
        Expr::Object { fields, .. } => {
            for (_, k, v) in fields {
                vars(k, out);
                vars(v, out);
            }
        }
        // A comprehension's variables are its own (regorus checks their safety).
        Expr::ArrayCompr { .. } | Expr::SetCompr { .. } | Expr::ObjectCompr { .. } => {}
        Expr::Call { params, .. } => {
            // The function's own name is not a variable.
            params.iter().for_each(|p| vars(p, out));
        }
        Expr::UnaryExpr { expr, .. } => vars(expr, out),
        Expr::RefDot { refr, .. } => vars(refr, out),
        Expr::RefBrack { refr, index, .. } => {
            vars(refr, out);
            vars(index, out);
        }
        Expr::BinExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::AssignExpr { lhs, rhs, .. } => {
            vars(lhs, out);
            vars(rhs, out);
        }
        Expr::Membership {
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
        _ => {}
    }
}

fn query_vars(q: &Ref<Query>, out: &mut Vec<(String, u32)>) {
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
