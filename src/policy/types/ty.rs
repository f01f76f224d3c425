//! A value's type, as far as it can be known before evaluation, and how types join.

/// A value's type. `Never` is "no value at all" (the elements of an empty
/// collection, a rule nothing defines): a call on it never runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ty {
    Never,
    Any,
    Null,
    Bool,
    Number,
    String,
    Array(Box<Ty>),
    Set(Box<Ty>),
    /// Key type, value type.
    Object(Box<Ty>, Box<Ty>),
}

impl Ty {
    pub(crate) fn array(t: Ty) -> Ty {
        Ty::Array(Box::new(t))
    }
    pub(crate) fn set(t: Ty) -> Ty {
        Ty::Set(Box::new(t))
    }
    pub(crate) fn object(k: Ty, v: Ty) -> Ty {
        Ty::Object(Box::new(k), Box::new(v))
    }

    /// The smallest type holding both.
    pub(crate) fn join(&self, other: &Ty) -> Ty {
        match (self, other) {
            (Ty::Never, t) | (t, Ty::Never) => t.clone(),
            (Ty::Array(a), Ty::Array(b)) => Ty::array(a.join(b)),
            (Ty::Set(a), Ty::Set(b)) => Ty::set(a.join(b)),
            (Ty::Object(k1, v1), Ty::Object(k2, v2)) => Ty::object(k1.join(k2), v1.join(v2)),
            (a, b) if a == b => a.clone(),
            _ => Ty::Any,
        }
    }

    /// What is known of a value of both types (a type test refining a known type).
    pub(crate) fn meet(&self, other: &Ty) -> Ty {
        match (self, other) {
            (Ty::Any, t) | (t, Ty::Any) => t.clone(),
            (Ty::Array(a), Ty::Array(b)) => Ty::array(a.meet(b)),
            (Ty::Set(a), Ty::Set(b)) => Ty::set(a.meet(b)),
            (Ty::Object(k1, v1), Ty::Object(k2, v2)) => Ty::object(k1.meet(k2), v1.meet(v2)),
            (a, b) if a == b => a.clone(),
            _ => Ty::Never,
        }
    }

    /// Whether every value of this type is a value of `want` (`Any` in `want`
    /// accepts anything).
    pub(crate) fn fits(&self, want: &Ty) -> bool {
        match (self, want) {
            (Ty::Never, _) | (_, Ty::Any) => true,
            (Ty::Array(a), Ty::Array(b)) | (Ty::Set(a), Ty::Set(b)) => a.fits(b),
            (Ty::Object(k1, v1), Ty::Object(k2, v2)) => k1.fits(k2) && v1.fits(v2),
            (a, b) => a == b,
        }
    }

    pub(crate) fn is_collection(&self) -> bool {
        matches!(self, Ty::Never | Ty::Array(_) | Ty::Set(_) | Ty::Object(..))
    }

    /// The type of `x` in `some x in e`, and of `e[_]`.
    pub(crate) fn elements(&self) -> Ty {
        match self {
            Ty::Never => Ty::Never,
            Ty::Array(e) | Ty::Set(e) | Ty::Object(_, e) => (**e).clone(),
            _ => Ty::Any,
        }
    }

    /// The type of `k` in `some k, _ in e`.
    pub(crate) fn keys(&self) -> Ty {
        match self {
            Ty::Never => Ty::Never,
            Ty::Array(_) => Ty::Number,
            Ty::Set(e) | Ty::Object(e, _) => (**e).clone(),
            _ => Ty::Any,
        }
    }

    /// A JSON document's type. JSON object keys are strings.
    pub(crate) fn of_json(v: &serde_json::Value) -> Ty {
        match v {
            serde_json::Value::Null => Ty::Null,
            serde_json::Value::Bool(_) => Ty::Bool,
            serde_json::Value::Number(_) => Ty::Number,
            serde_json::Value::String(_) => Ty::String,
            serde_json::Value::Array(items) => {
                Ty::array(items.iter().fold(Ty::Never, |t, i| t.join(&Ty::of_json(i))))
            }
            serde_json::Value::Object(m) => {
                let keys = if m.is_empty() { Ty::Never } else { Ty::String };
                Ty::object(
                    keys,
                    m.values().fold(Ty::Never, |t, v| t.join(&Ty::of_json(v))),
                )
            }
        }
    }
}
