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
//!    it can raise such an error:
//!    - every built-in call is one that cannot fail with the argument types it is
//!      given (`types`: a type test earlier in the body, a literal, the data
//!      document, a rule's inferred value type);
//!    - no arithmetic or set operator, no object rule, and an object comprehension
//!      only when its keys cannot repeat (one `some k, v in x` with key `k`, or
//!      `sprintf` of `k` with one verb);
//!    - every complete rule or function gives one value: each body's value depends on
//!      no variable of its body (or, for `k` of `some k, v in data.x` with `e in v`,
//!      the data's collections do not overlap), and two bodies with different values
//!      cannot both hold (`x == "a"` against `x == "b"`, `x` against `not x`).
//!
//!    Only a VM-exact set runs on the VM; every other set runs on the interpreter.
//!
//! The check is conservative: "not exact" costs speed, never a wrong decision.

use std::collections::BTreeMap;
use std::path::PathBuf;

use regorus::unstable::{
    ArithOp, AssignOp, BUILTINS, BoolOp, Expr, Literal, Module, Parser, Query, Ref, Rule, RuleHead,
    Source,
};

use regorus::Value;

use super::PolicyError;
use super::files::{FileSet, Kind};
use super::types::{Env, ModuleScope, Names, Ty, Typer, builtin, sprintf_verbs};

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

/// One body of a complete rule or function, with the value it gives.
struct Definition {
    /// The value expression's source text (`true` when the rule has none).
    value: String,
    value_expr: Option<Ref<Expr>>,
    query: Ref<Query>,
    /// Index into the analysed modules.
    module: usize,
    /// A function's argument texts (empty for rules).
    args: Vec<String>,
    /// Bodies of one `else` chain share a chain number: only one of them applies.
    chain: usize,
    at: String,
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
/// set holds them), with the set's merged data document. A parse error is left for
/// regorus to report with its own message.
pub(crate) fn analyze(set: &FileSet, data: &serde_json::Value) -> Result<Analysis, PolicyError> {
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
    let scopes: Vec<ModuleScope<'_>> = modules
        .iter()
        .map(|(_, m)| ModuleScope {
            module: m,
            package: format!("data.{}", ref_text(&m.package.refr).unwrap_or_default()),
            imports: imports_of(m),
        })
        .collect();
    let mut rules: BTreeMap<String, RuleInfo> = BTreeMap::new();
    // Object rules (`x[k] := v`): path of the object, where defined.
    let mut object_rules: Vec<(String, String)> = Vec::new();
    let mut not_exact: Option<String> = None;
    let mut inexact = |reason: String| {
        if not_exact.is_none() {
            not_exact = Some(reason);
        }
    };
    let mut chains = 0usize;
    for (index, ((file, m), scope)) in modules.iter().zip(&scopes).enumerate() {
        let package = &scope.package;
        for rule in &m.policy {
            let Rule::Spec { head, bodies, span } = rule.as_ref() else {
                continue;
            };
            let at = format!("{file}:{}", span.line);
            let (refr, kind, head_assign, args) = match head {
                RuleHead::Compr { refr, assign, .. } => (refr, RuleKind::Complete, assign, None),
                RuleHead::Set { refr, .. } => (refr, RuleKind::PartialSet, &None, None),
                RuleHead::Func {
                    refr, args, assign, ..
                } => (refr, RuleKind::Function(args.len()), assign, Some(args)),
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
            let args: Vec<String> = args
                .map(|a| a.iter().map(canonical).collect())
                .unwrap_or_default();
            for body in bodies {
                if !body.is_else {
                    chains += 1;
                }
                let assign = body.assign.as_ref().or(head_assign.as_ref());
                info.definitions.push(Definition {
                    value: assign.map_or_else(|| "true".to_string(), |a| canonical(&a.value)),
                    value_expr: assign.map(|a| a.value.clone()),
                    query: body.query.clone(),
                    module: index,
                    args: args.clone(),
                    chain: chains,
                    at: format!("{file}:{}", body.span.line),
                });
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
    }

    let typer = Typer::infer(&scopes, rules.keys().cloned(), data);
    let names_of = |module: usize| Names {
        package: &scopes[module].package,
        imports: &scopes[module].imports,
        rules: &typer.rules,
    };

    // Every complete rule and function gives at most one value.
    for (path, info) in &rules {
        for (i, d) in info.definitions.iter().enumerate() {
            let names = names_of(d.module);
            if !value_is_stable(d, &names) && !single_by_data(d, &names, data) {
                inexact(format!(
                    "{}: {path} can give several values in one body (a conflict is an error)",
                    d.at
                ));
            }
            for e in &info.definitions[i + 1..] {
                // The same text means the same value when it names nothing an import
                // could make differ.
                let same = d.value == e.value
                    && value_is_stable(d, &names)
                    && (d.module == e.module
                        || scopes[d.module].imports == scopes[e.module].imports);
                if !same && d.chain != e.chain && !exclusive(d, e, &names) {
                    inexact(format!(
                        "{path} has definitions at {} and {} that can both hold with different values \
                         (a conflict is an error)",
                        d.at, e.at
                    ));
                }
            }
        }
    }

    // Calls: every function must exist and take the arguments given; built-ins must
    // not be able to fail.
    for (index, (file, m)) in modules.iter().enumerate() {
        let names = names_of(index);
        let scope = Scope {
            file,
            package: &scopes[index].package,
            imports: &scopes[index].imports,
            rules: &rules,
        };
        let mut v = Visitor {
            scope: &scope,
            typer: &typer,
            names: &names,
            env: Env::default(),
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

fn imports_of(m: &Module) -> Vec<(String, String)> {
    m.imports
        .iter()
        .filter_map(|i| {
            let full = ref_text(&i.refr)?;
            let alias = match &i.r#as {
                Some(s) => s.text().to_string(),
                None => full.rsplit('.').next()?.to_string(),
            };
            Some((alias, full))
        })
        .collect()
}

/// Whether a body's value is the same however its body is satisfied: it mentions no
/// variable of the body (only `input`, `data`, imports, rules, function arguments).
fn value_is_stable(d: &Definition, names: &Names<'_>) -> bool {
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
fn single_by_data(d: &Definition, names: &Names<'_>, data: &serde_json::Value) -> bool {
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
enum Condition {
    Equals(Value),
    Holds,
    Fails,
}

/// The conditions a body states at its top level on expressions of global names.
fn conditions(d: &Definition, names: &Names<'_>) -> Vec<(String, Condition)> {
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
fn exclusive(d: &Definition, e: &Definition, names: &Names<'_>) -> bool {
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

struct Scope<'a> {
    file: &'a str,
    package: &'a str,
    imports: &'a [(String, String)],
    rules: &'a BTreeMap<String, RuleInfo>,
}

struct Visitor<'a> {
    scope: &'a Scope<'a>,
    typer: &'a Typer<'a>,
    names: &'a Names<'a>,
    /// What is known at the current statement of the current body.
    env: Env,
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
                // The head's value is computed after the body: check it in the
                // body's environment, once per body.
                let (head_value, set_key) = match head {
                    RuleHead::Compr { refr, assign, .. } => {
                        self.expr(refr);
                        (assign.as_ref().map(|a| &a.value), None)
                    }
                    RuleHead::Set { refr, key, .. } => {
                        self.expr(refr);
                        (None, key.as_ref())
                    }
                    RuleHead::Func { args, assign, .. } => {
                        self.env = Env::for_head(head);
                        for a in args {
                            self.expr(a);
                        }
                        (assign.as_ref().map(|a| &a.value), None)
                    }
                };
                // A rule without a body (`x := v`) still computes its value.
                if bodies.is_empty() {
                    self.env = Env::for_head(head);
                    if let Some(v) = head_value {
                        self.expr(v);
                    }
                    if let Some(k) = set_key {
                        self.expr(k);
                    }
                }
                for b in bodies {
                    self.env = Env::for_head(head);
                    self.query(&b.query);
                    if let Some(v) = b.assign.as_ref().map(|a| &a.value).or(head_value) {
                        self.expr(v);
                    }
                    if let Some(k) = set_key {
                        self.expr(k);
                    }
                }
                self.env = Env::default();
            }
            Rule::Default { value, .. } => {
                self.env = Env::default();
                self.expr(value);
            }
        }
    }

    /// Checks a query's statements in order, each with what the ones before it
    /// established.
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
                Literal::Every {
                    key,
                    value,
                    domain,
                    query,
                    ..
                } => {
                    self.expr(domain);
                    let outer = self.env.clone();
                    let d = self.typer.ty(domain, &self.env, self.names);
                    if let Some(k) = key {
                        self.env.bind(k.text().to_string(), d.keys());
                    }
                    self.env.bind(value.text().to_string(), d.elements());
                    self.query(query);
                    self.env = outer;
                }
            }
            self.typer.learn(stmt, &mut self.env, self.names);
        }
    }

    /// Checks a comprehension's query and then its terms, in the query's scope.
    fn comprehension(&mut self, query: &Ref<Query>, terms: &[&Ref<Expr>]) {
        let outer = self.env.clone();
        self.query(query);
        for t in terms {
            self.expr(t);
        }
        self.env = outer;
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
                self.comprehension(query, &[term]);
            }
            Expr::ObjectCompr {
                key,
                value,
                query,
                span,
                ..
            } => {
                if !self.unique_keys(key, query) {
                    self.inexact(span.line, "an object comprehension's keys can conflict");
                }
                self.comprehension(query, &[key, value]);
            }
            Expr::Call {
                fcn, params, span, ..
            } => {
                self.call(fcn, params, span.line);
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

    /// An object comprehension's keys cannot repeat when it iterates one collection
    /// (`some k, v in x`) and its key is `k`, or `sprintf` of `k` with one verb
    /// (`k` a string): each item of `x` gives one key, distinct items distinct keys.
    fn unique_keys(&self, key: &Ref<Expr>, query: &Ref<Query>) -> bool {
        let [stmt] = query.stmts.as_slice() else {
            return false;
        };
        let Literal::SomeIn {
            key: Some(k),
            collection,
            ..
        } = &stmt.literal
        else {
            return false;
        };
        let Expr::Var { span: k, .. } = k.as_ref() else {
            return false;
        };
        let k = k.text();
        let c = self.typer.ty(collection, &self.env, self.names);
        if !matches!(c, Ty::Object(..) | Ty::Array(_) | Ty::Set(_) | Ty::Never) {
            return false;
        }
        match key.as_ref() {
            Expr::Var { span, .. } => span.text() == k,
            Expr::Call { fcn, params, .. } if ref_text(fcn).as_deref() == Some("sprintf") => {
                let [fmt, args] = params.as_slice() else {
                    return false;
                };
                let one_verb = match fmt.as_ref() {
                    Expr::String { value, .. } | Expr::RawString { value, .. } => value
                        .as_string()
                        .ok()
                        .and_then(|f| sprintf_verbs(f))
                        .is_some_and(|v| v.len() == 1),
                    _ => false,
                };
                let of_k = matches!(args.as_ref(), Expr::Array { items, .. }
                    if matches!(items.as_slice(), [item] if item.span().text() == k));
                // Distinct strings print distinctly; other values may not (1 and "1").
                let mut keys_env = self.env.clone();
                self.typer.learn(stmt, &mut keys_env, self.names);
                let strings = self
                    .typer
                    .ty(args, &keys_env, self.names)
                    .fits(&Ty::Array(Box::new(Ty::String)));
                one_verb && of_k && strings
            }
            _ => false,
        }
    }

    fn call(&mut self, fcn: &Ref<Expr>, params: &[Ref<Expr>], line: u32) {
        let Some(name) = ref_text(fcn) else {
            self.inexact(line, "a call through a computed reference");
            return;
        };
        let args = params.len();
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
            let types: Vec<Ty> = params
                .iter()
                .take(arity)
                .map(|p| self.typer.ty(p, &self.env, self.names))
                .collect();
            let total =
                builtin(&name, &params[..args.min(arity)], &types).is_some_and(|sig| sig.total);
            if !total {
                self.inexact(
                    line,
                    &format!("built-in {name} can fail at run time (arguments of unknown type)"),
                );
            }
            return;
        }
        let full = self.names.resolve(&name);
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
}

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

/// Every variable name an expression mentions (with its line). A comprehension's
/// variables are its own (regorus checks their safety) and are not included.
pub(crate) fn vars(e: &Ref<Expr>, out: &mut Vec<(String, u32)>) {
    collect_vars(e, out, false);
}

/// Every variable name an expression mentions, comprehensions included.
fn vars_deep(e: &Ref<Expr>, out: &mut Vec<(String, u32)>) {
    collect_vars(e, out, true);
}

fn collect_vars(e: &Ref<Expr>, out: &mut Vec<(String, u32)>, deep: bool) {
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
