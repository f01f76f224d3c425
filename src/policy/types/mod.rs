//! What type a Rego value has, as far as it can be known before evaluation.
//!
//! The VM-exactness analysis (`analysis`) uses it to tell a built-in call that
//! cannot fail (its arguments are known to have the types it takes) from one that
//! can. Types come from literals; from the data document (known per revision); from
//! type tests and equalities earlier in the same body (`is_string(x)`,
//! `x == "a"`); from bindings (`x := e`, `some k, v in e`); and from the values of
//! rules and functions, by a fixpoint over the policy set. Everything else is
//! `Any`, and a built-in given `Any` may fail: the inference only ever says "cannot
//! fail" when it is sure.

use std::collections::BTreeMap;

use regorus::unstable::{
    AssignOp, BoolOp, Expr, Literal, LiteralStmt, Module, Query, Ref, Rule, RuleHead,
};

use super::analysis::{canonical, ref_text, vars};

mod builtins;
mod ty;

pub(crate) use builtins::{builtin, sprintf_verbs};
pub(crate) use ty::Ty;

/// How names in one module resolve: its package and imports, and every rule path of
/// the policy set.
pub(crate) struct Names<'a> {
    pub package: &'a str,
    pub imports: &'a [(String, String)],
    pub rules: &'a BTreeMap<String, Ty>,
}

impl Names<'_> {
    /// The full `data.` path a name used in this module refers to.
    pub(crate) fn resolve(&self, name: &str) -> String {
        if name.starts_with("data.") {
            return name.to_string();
        }
        let (first, rest) = match name.split_once('.') {
            Some((f, r)) => (f, Some(r)),
            None => (name, None),
        };
        if let Some((_, full)) = self.imports.iter().find(|(alias, _)| alias == first) {
            return match rest {
                Some(r) => format!("{full}.{r}"),
                None => full.clone(),
            };
        }
        format!("{}.{name}", self.package)
    }

    /// Whether `var` names something global here (not a local variable):
    /// `input`, `data`, an import or a rule of the package.
    pub(crate) fn is_global(&self, var: &str) -> bool {
        var == "input"
            || var == "data"
            || self.imports.iter().any(|(alias, _)| alias == var)
            || self.rules.contains_key(&format!("{}.{var}", self.package))
    }
}

/// What is known inside one body: the types of local variables and of expressions
/// a type test or equality has constrained (by source text), latest first.
#[derive(Clone, Default)]
pub(crate) struct Env {
    facts: Vec<(String, Ty)>,
}

impl Env {
    /// A function's arguments are local variables of unknown type.
    pub(crate) fn for_head(head: &RuleHead) -> Env {
        let mut env = Env::default();
        if let RuleHead::Func { args, .. } = head {
            for a in args {
                let mut vs = Vec::new();
                vars(a, &mut vs);
                for (v, _) in vs {
                    env.bind(v, Ty::Any);
                }
            }
        }
        env
    }

    pub(crate) fn bind(&mut self, text: String, ty: Ty) {
        self.facts.push((text, ty));
    }

    fn fact(&self, text: &str) -> Option<&Ty> {
        self.facts
            .iter()
            .rev()
            .find(|(t, _)| t == text)
            .map(|(_, ty)| ty)
    }

    /// Whether `var` is a local variable of this body.
    pub(crate) fn is_local(&self, var: &str) -> bool {
        self.fact(var).is_some()
    }
}

/// The data document and the inferred value type of every rule.
pub(crate) struct Typer<'a> {
    data: &'a serde_json::Value,
    pub rules: BTreeMap<String, Ty>,
}

/// One module with its resolved package and imports.
pub(crate) struct ModuleScope<'a> {
    pub module: &'a Module,
    pub package: String,
    pub imports: Vec<(String, String)>,
}

impl<'a> Typer<'a> {
    /// Infers the value type of every rule of `modules` (a fixpoint: rules may use
    /// each other in any order; Rego forbids recursion, so it converges).
    pub(crate) fn infer(
        modules: &[ModuleScope<'_>],
        rule_paths: impl Iterator<Item = String>,
        data: &'a serde_json::Value,
    ) -> Typer<'a> {
        let mut typer = Typer {
            data,
            rules: rule_paths.map(|p| (p, Ty::Never)).collect(),
        };
        for _ in 0..32 {
            let mut next: BTreeMap<String, Ty> =
                typer.rules.keys().map(|k| (k.clone(), Ty::Never)).collect();
            for m in modules {
                let names = Names {
                    package: &m.package,
                    imports: &m.imports,
                    rules: &typer.rules,
                };
                for rule in &m.module.policy {
                    let (path, ty) = typer.rule_type(rule, &names);
                    if let Some(path) = path {
                        let slot = next.entry(path).or_insert(Ty::Never);
                        *slot = slot.join(&ty);
                    }
                }
            }
            if next == typer.rules {
                return typer;
            }
            typer.rules = next;
        }
        // Did not settle: know nothing.
        typer.rules.values_mut().for_each(|t| *t = Ty::Any);
        typer
    }

    fn rule_type(&self, rule: &Ref<Rule>, names: &Names<'_>) -> (Option<String>, Ty) {
        match rule.as_ref() {
            Rule::Default { refr, value, .. } => (
                ref_text(refr).map(|n| format!("{}.{n}", names.package)),
                self.ty(value, &Env::default(), names),
            ),
            Rule::Spec { head, bodies, .. } => {
                let (refr, head_assign) = match head {
                    RuleHead::Compr { refr, assign, .. } | RuleHead::Func { refr, assign, .. } => {
                        (refr, assign.as_ref())
                    }
                    RuleHead::Set { refr, .. } => (refr, None),
                };
                let Some(name) = ref_text(refr) else {
                    return (None, Ty::Any); // object rules: their keys are not tracked
                };
                let mut ty = Ty::Never;
                for body in bodies {
                    let mut env = Env::for_head(head);
                    self.learn_query(&body.query, &mut env, names);
                    let t = match head {
                        RuleHead::Set { key, .. } => {
                            Ty::set(key.as_ref().map_or(Ty::Any, |k| self.ty(k, &env, names)))
                        }
                        _ => match body.assign.as_ref().or(head_assign) {
                            Some(a) => self.ty(&a.value, &env, names),
                            None => Ty::Bool,
                        },
                    };
                    ty = ty.join(&t);
                }
                (Some(format!("{}.{name}", names.package)), ty)
            }
        }
    }

    /// Walks a query's statements in order, learning what each one establishes.
    pub(crate) fn learn_query(&self, q: &Ref<Query>, env: &mut Env, names: &Names<'_>) {
        for stmt in &q.stmts {
            self.learn(stmt, env, names);
        }
    }

    /// What a statement establishes for the statements after it.
    pub(crate) fn learn(&self, stmt: &LiteralStmt, env: &mut Env, names: &Names<'_>) {
        match &stmt.literal {
            Literal::SomeVars { vars, .. } => {
                for v in vars {
                    env.bind(v.text().to_string(), Ty::Any);
                }
            }
            Literal::SomeIn {
                key,
                value,
                collection,
                ..
            } => {
                let c = self.ty(collection, env, names);
                match key {
                    Some(k) => {
                        self.bind_pattern(k, c.keys(), env);
                        self.bind_pattern(value, c.elements(), env);
                    }
                    None => self.bind_pattern(value, c.elements(), env),
                }
            }
            Literal::Expr { expr, .. } => match expr.as_ref() {
                Expr::Call { fcn, params, .. } if params.len() == 1 => {
                    let tested = match ref_text(fcn).as_deref() {
                        Some("is_string") => Ty::String,
                        Some("is_number") => Ty::Number,
                        Some("is_boolean") => Ty::Bool,
                        Some("is_null") => Ty::Null,
                        Some("is_array") => Ty::array(Ty::Any),
                        Some("is_set") => Ty::set(Ty::Any),
                        Some("is_object") => {
                            // Objects of the input and data documents come from JSON.
                            let root = root_var(&params[0]);
                            let keys = if matches!(root.as_deref(), Some("input" | "data")) {
                                Ty::String
                            } else {
                                Ty::Any
                            };
                            Ty::object(keys, Ty::Any)
                        }
                        _ => return,
                    };
                    self.refine(&params[0], &tested, env, names);
                }
                Expr::BoolExpr {
                    op: BoolOp::Eq,
                    lhs,
                    rhs,
                    ..
                } => {
                    if let Some(t) = literal_type(rhs) {
                        self.refine(lhs, &t, env, names);
                    } else if let Some(t) = literal_type(lhs) {
                        self.refine(rhs, &t, env, names);
                    }
                }
                Expr::AssignExpr { op, lhs, rhs, .. } => {
                    let declares = matches!(op, AssignOp::ColEq);
                    match lhs.as_ref() {
                        Expr::Var { span, .. } if declares || !names.is_global(span.text()) => {
                            let t = self.ty(rhs, env, names);
                            env.bind(span.text().to_string(), t);
                        }
                        _ => {
                            // Destructuring or unification: whatever it binds is
                            // of unknown type (and no longer the rule of that name).
                            for side in [lhs, rhs] {
                                let mut vs = Vec::new();
                                vars(side, &mut vs);
                                for (v, _) in vs {
                                    if (declares || !names.is_global(&v)) && !env.is_local(&v) {
                                        env.bind(v, Ty::Any);
                                    }
                                }
                            }
                        }
                    }
                }
                _ => {}
            },
            Literal::NotExpr { .. } | Literal::Every { .. } => {}
        }
    }

    fn bind_pattern(&self, pattern: &Ref<Expr>, ty: Ty, env: &mut Env) {
        match pattern.as_ref() {
            Expr::Var { span, .. } => env.bind(span.text().to_string(), ty),
            _ => {
                let mut vs = Vec::new();
                vars(pattern, &mut vs);
                for (v, _) in vs {
                    env.bind(v, Ty::Any);
                }
            }
        }
    }

    fn refine(&self, e: &Ref<Expr>, tested: &Ty, env: &mut Env, names: &Names<'_>) {
        let known = self.ty(e, env, names);
        env.bind(canonical(e), known.meet(tested));
    }

    /// The type of an expression in `env`.
    pub(crate) fn ty(&self, e: &Ref<Expr>, env: &Env, names: &Names<'_>) -> Ty {
        if let Some(t) = env.fact(&canonical(e)) {
            return t.clone();
        }
        let join_all = |items: &[Ref<Expr>]| {
            items
                .iter()
                .fold(Ty::Never, |t, i| t.join(&self.ty(i, env, names)))
        };
        match e.as_ref() {
            Expr::String { .. } | Expr::RawString { .. } => Ty::String,
            Expr::Number { .. } => Ty::Number,
            Expr::Bool { .. } => Ty::Bool,
            Expr::Null { .. } => Ty::Null,
            Expr::Array { items, .. } => Ty::array(join_all(items)),
            Expr::Set { items, .. } => Ty::set(join_all(items)),
            Expr::Object { fields, .. } => {
                let (mut k, mut v) = (Ty::Never, Ty::Never);
                for (_, key, value) in fields {
                    k = k.join(&self.ty(key, env, names));
                    v = v.join(&self.ty(value, env, names));
                }
                Ty::object(k, v)
            }
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                let mut inner = env.clone();
                self.learn_query(query, &mut inner, names);
                let t = self.ty(term, &inner, names);
                if matches!(e.as_ref(), Expr::ArrayCompr { .. }) {
                    Ty::array(t)
                } else {
                    Ty::set(t)
                }
            }
            Expr::ObjectCompr {
                key, value, query, ..
            } => {
                let mut inner = env.clone();
                self.learn_query(query, &mut inner, names);
                Ty::object(self.ty(key, &inner, names), self.ty(value, &inner, names))
            }
            Expr::Call { fcn, params, .. } => {
                let Some(name) = ref_text(fcn) else {
                    return Ty::Any;
                };
                let args: Vec<Ty> = params.iter().map(|p| self.ty(p, env, names)).collect();
                if let Some(sig) = builtin(&name, params, &args) {
                    return sig.result;
                }
                self.rules
                    .get(&names.resolve(&name))
                    .cloned()
                    .unwrap_or(Ty::Any)
            }
            Expr::Var { span, .. } => {
                let name = span.text();
                // A variable no binding typed (`input`, `data`, an unknown local) is Any.
                if name != "input" && name != "data" && names.is_global(name) {
                    self.rules
                        .get(&names.resolve(name))
                        .cloned()
                        .unwrap_or(Ty::Any)
                } else {
                    Ty::Any
                }
            }
            Expr::RefDot { .. } | Expr::RefBrack { .. } => self.ref_type(e, env, names),
            Expr::BoolExpr { .. } | Expr::Membership { .. } | Expr::AssignExpr { .. } => Ty::Bool,
            Expr::ArithExpr { lhs, rhs, .. } => {
                let (l, r) = (self.ty(lhs, env, names), self.ty(rhs, env, names));
                match (l, r) {
                    (Ty::Number, Ty::Number) => Ty::Number,
                    (Ty::Set(a), Ty::Set(b)) => Ty::set(a.join(&b)),
                    _ => Ty::Any,
                }
            }
            _ => Ty::Any,
        }
    }

    /// A reference: the longest prefix that is a rule (or a local fact), or the data
    /// document, then one step per field or index.
    fn ref_type(&self, e: &Ref<Expr>, env: &Env, names: &Names<'_>) -> Ty {
        // Peel the reference into its root and steps.
        let mut steps: Vec<Step> = Vec::new();
        let mut cur = e.clone();
        let root = loop {
            if let Some(t) = env.fact(&canonical(&cur)) {
                break Root::Known(t.clone());
            }
            let next = match cur.as_ref() {
                Expr::RefDot { refr, field, .. } => {
                    steps.push(Step::Field(field.0.text().to_string()));
                    refr.clone()
                }
                Expr::RefBrack { refr, index, .. } => {
                    steps.push(match index.as_ref() {
                        Expr::String { value, .. } | Expr::RawString { value, .. } => {
                            match value.as_string() {
                                Ok(s) => Step::Field(s.to_string()),
                                Err(_) => Step::Any,
                            }
                        }
                        _ => Step::Any,
                    });
                    refr.clone()
                }
                Expr::Var { span, .. } => break Root::Name(span.text().to_string()),
                _ => break Root::Known(self.ty(&cur, env, names)),
            };
            cur = next;
        };
        steps.reverse();
        let (mut ty, mut rest): (Ty, &[Step]) = match root {
            Root::Known(t) => (t, &steps),
            // `input`, or a local variable no binding typed.
            Root::Name(name) if name == "input" || (name != "data" && !names.is_global(&name)) => {
                return Ty::Any;
            }
            Root::Name(name) => {
                // The longest constant prefix that names a rule.
                let base = if name == "data" {
                    "data".to_string()
                } else {
                    names.resolve(&name)
                };
                let mut found = None;
                let mut path = base.clone();
                if let Some(t) = self.rules.get(&path) {
                    found = Some((t.clone(), 0));
                }
                for (i, s) in steps.iter().enumerate() {
                    let Step::Field(f) = s else { break };
                    path = format!("{path}.{f}");
                    if let Some(t) = self.rules.get(&path) {
                        found = Some((t.clone(), i + 1));
                    }
                }
                match found {
                    Some((t, n)) => (t, &steps[n..]),
                    None if name == "data" || base.starts_with("data.") => {
                        // Not a rule: the data document under that path.
                        let segments: Vec<&str> = base.split('.').skip(1).collect();
                        let mut docs = vec![self.data];
                        for seg in segments {
                            docs = docs.iter().filter_map(|d| d.get(seg)).collect();
                        }
                        for s in &steps {
                            docs = match s {
                                Step::Field(f) => docs.iter().filter_map(|d| d.get(f)).collect(),
                                Step::Any => docs
                                    .iter()
                                    .flat_map(|d| match d {
                                        serde_json::Value::Object(m) => m.values().collect(),
                                        serde_json::Value::Array(a) => a.iter().collect(),
                                        _ => Vec::new(),
                                    })
                                    .collect(),
                            };
                        }
                        // A path that holds rules is not only data: know nothing.
                        let mut fixed = base.clone();
                        for s in &steps {
                            let Step::Field(f) = s else { break };
                            fixed = format!("{fixed}.{f}");
                        }
                        let prefix = format!("{fixed}.");
                        if self.rules.keys().any(|r| r.starts_with(&prefix)) {
                            return Ty::Any;
                        }
                        return docs.iter().fold(Ty::Never, |t, d| t.join(&Ty::of_json(d)));
                    }
                    None => return Ty::Any,
                }
            }
        };
        while let Some((_, tail)) = rest.split_first() {
            ty = ty.elements();
            rest = tail;
        }
        ty
    }
}

enum Root {
    Known(Ty),
    Name(String),
}

enum Step {
    Field(String),
    Any,
}

fn root_var(e: &Ref<Expr>) -> Option<String> {
    match e.as_ref() {
        Expr::Var { span, .. } => Some(span.text().to_string()),
        Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => root_var(refr),
        _ => None,
    }
}

fn literal_type(e: &Ref<Expr>) -> Option<Ty> {
    match e.as_ref() {
        Expr::String { .. } | Expr::RawString { .. } => Some(Ty::String),
        Expr::Number { .. } => Some(Ty::Number),
        Expr::Bool { .. } => Some(Ty::Bool),
        Expr::Null { .. } => Some(Ty::Null),
        _ => None,
    }
}
