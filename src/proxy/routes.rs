//! Plain HTTP tool APIs: a configured method + path template names the tool; the
//! call's arguments come from path parameters, the query string and a JSON body.

use std::fmt;

use percent_encoding::percent_decode_str;
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("path template must start with '/'")]
    NoLeadingSlash,
    #[error("segment {0:?} is not a literal or a {{name}} parameter")]
    BadSegment(String),
    #[error("parameter {0:?} appears twice")]
    DuplicateParam(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A path template such as `/projects/{project}/issues/{id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    segments: Vec<Segment>,
}

impl PathTemplate {
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let rest = template
            .strip_prefix('/')
            .ok_or(TemplateError::NoLeadingSlash)?;
        let mut segments = Vec::new();
        let mut seen = Vec::new();
        if !rest.is_empty() {
            for seg in rest.split('/') {
                if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    if name.is_empty()
                        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        return Err(TemplateError::BadSegment(seg.to_string()));
                    }
                    if seen.contains(&name) {
                        return Err(TemplateError::DuplicateParam(name.to_string()));
                    }
                    seen.push(name);
                    segments.push(Segment::Param(name.to_string()));
                } else if seg.is_empty() || seg.contains(['{', '}']) || seg == "." || seg == ".." {
                    return Err(TemplateError::BadSegment(seg.to_string()));
                } else {
                    segments.push(Segment::Literal(seg.to_string()));
                }
            }
        }
        Ok(PathTemplate { segments })
    }

    /// Matches a path (below the mount, already checked by `path_is_clean`), returning
    /// the decoded path parameters.
    pub fn matches(&self, path: &str) -> Option<Map<String, Value>> {
        let rest = path.strip_prefix('/')?;
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut params = Map::new();
        for (seg, part) in self.segments.iter().zip(parts) {
            let decoded = percent_decode_str(part).decode_utf8().ok()?;
            match seg {
                Segment::Literal(lit) if *lit == decoded => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => {
                    params.insert(name.clone(), Value::String(decoded.into_owned()));
                }
            }
        }
        Some(params)
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for seg in &self.segments {
            match seg {
                Segment::Literal(l) => write!(f, "/{l}")?,
                Segment::Param(p) => write!(f, "/{{{p}}}")?,
            }
        }
        if self.segments.is_empty() {
            f.write_str("/")?;
        }
        Ok(())
    }
}

/// One configured route of an HTTP upstream.
#[derive(Debug, Clone)]
pub struct Route {
    pub method: http::Method,
    pub template: PathTemplate,
    pub tool: String,
    /// A body that is not JSON may stream through unread.
    pub opaque_body: bool,
}

/// Finds the route for a request below the mount.
pub fn find<'a>(
    routes: &'a [Route],
    method: &http::Method,
    path: &str,
) -> Option<(&'a Route, Map<String, Value>)> {
    routes.iter().find_map(|r| {
        if r.method != method {
            return None;
        }
        r.template.matches(path).map(|params| (r, params))
    })
}

/// Query string parameters as JSON: a repeated key becomes an array.
pub fn query_arguments(query: Option<&str>) -> Result<Map<String, Value>, QueryError> {
    let mut out = Map::new();
    let Some(q) = query else {
        return Ok(out);
    };
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = decode_form(k)?;
        let v = Value::String(decode_form(v)?);
        match out.get_mut(&k) {
            Some(Value::Array(items)) => items.push(v),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, v]);
            }
            None => {
                out.insert(k, v);
            }
        }
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
#[error("query string is not valid UTF-8 after percent-decoding")]
pub struct QueryError;

fn decode_form(s: &str) -> Result<String, QueryError> {
    let s = s.replace('+', " ");
    percent_decode_str(&s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| QueryError)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn template_extracts_decoded_parameters() {
        let t = PathTemplate::parse("/projects/{project}/issues/{id}").unwrap();
        let p = t.matches("/projects/pay%20ments/issues/42").unwrap();
        assert_eq!(
            Value::Object(p),
            json!({"project": "pay ments", "id": "42"})
        );
        assert!(t.matches("/projects/x/issues").is_none());
        assert!(t.matches("/projects/x/issues/1/extra").is_none());
        assert!(t.matches("/project/x/issues/1").is_none());
    }

    #[test]
    fn bad_templates_are_rejected() {
        assert_eq!(PathTemplate::parse("x"), Err(TemplateError::NoLeadingSlash));
        assert!(PathTemplate::parse("/a//b").is_err());
        assert!(PathTemplate::parse("/a/{}").is_err());
        assert!(PathTemplate::parse("/a/{x}/{x}").is_err());
        assert!(PathTemplate::parse("/a/../b").is_err());
        assert_eq!(PathTemplate::parse("/a/{b}").unwrap().to_string(), "/a/{b}");
    }

    #[test]
    fn repeated_query_keys_become_arrays() {
        let q = query_arguments(Some("a=1&b=x+y&a=2&c")).unwrap();
        assert_eq!(
            Value::Object(q),
            json!({"a": ["1", "2"], "b": "x y", "c": ""})
        );
        assert!(query_arguments(Some("a=%FF")).is_err());
    }
}
