//! The walk over every rule body: undefined functions and wrong arities (load errors),
//! and every construct that keeps the set off the VM (see the module above).

use super::*;

pub(super) struct Scope<'a> {
    pub(super) file: &'a str,
    pub(super) package: &'a str,
    pub(super) imports: &'a [(String, String)],
    pub(super) rules: &'a BTreeMap<String, RuleInfo>,
}

pub(super) struct Visitor<'a> {
    pub(super) scope: &'a Scope<'a>,
    pub(super) typer: &'a Typer<'a>,
    pub(super) names: &'a Names<'a>,
    /// What is known at the current statement of the current body.
    pub(super) env: Env,
    pub(super) error: Option<String>,
    pub(super) not_exact: Option<String>,
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

    pub(super) fn rule(&mut self, rule: &Ref<Rule>) {
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
