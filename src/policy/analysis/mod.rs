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

mod exact;
mod expr;
mod visitor;

use exact::*;
use expr::*;
pub(crate) use expr::{canonical, ref_text, vars};
use visitor::{Scope, Visitor};

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
