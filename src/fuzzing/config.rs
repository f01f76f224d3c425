//! `config`: loading the YAML configuration (parse, anchor paths, validate).

use std::collections::HashSet;
use std::path::Path;

use crate::config::LoadedConfig;
use crate::proxy::routes::PathTemplate;

/// The file name configs are "loaded" from (nothing is read: the text is given).
const FILE: &str = "/etc/ciba-gate/ciba-gate.yaml";

/// Properties of [`LoadedConfig::parse`] on any text:
/// - loading is deterministic (the same text gives the same config or the same error);
/// - an error names the file and a key;
/// - an accepted config has its policy directory (and evidence file) anchored at the
///   file's (absolute) directory, at least one upstream, upstream names that are unique and
///   non-empty, and route templates that parse — read independently from the YAML.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new(FILE);
    let first = LoadedConfig::parse(file, text);
    let second = LoadedConfig::parse(file, text);
    assert_eq!(
        format!("{:?}", first.as_ref().map(|c| &c.config)),
        format!("{:?}", second.as_ref().map(|c| &c.config)),
        "loading the same text twice differs"
    );
    let loaded = match first {
        Ok(loaded) => loaded,
        Err(e) => {
            assert_eq!(e.file, FILE);
            assert!(!e.key.is_empty(), "an error without a key: {e}");
            return;
        }
    };
    // The file's path is absolute, so anchored paths are too.
    assert!(
        loaded
            .config
            .policy
            .dir
            .as_ref()
            .is_none_or(|d| d.is_absolute())
    );
    if let Some(p) = &loaded.config.evidence.path {
        assert!(p.is_absolute());
    }
    // The independent reading: the same YAML as a plain value tree. Scalars are read as
    // the typed loader reads them (`name: 123` is the name "123").
    let yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).expect("an accepted config is YAML");
    let text_of = |v: Option<&serde_yaml_ng::Value>| {
        v.and_then(|v| serde_yaml_ng::from_value::<String>(v.clone()).ok())
    };
    let Some(upstreams) = yaml
        .get("upstreams")
        .and_then(serde_yaml_ng::Value::as_sequence)
    else {
        // Merge keys or tags the value tree keeps apart: nothing to compare.
        return;
    };
    assert!(!upstreams.is_empty(), "a config without upstreams");
    let mut names = HashSet::new();
    let mut mounts = HashSet::new();
    for u in upstreams {
        if let Some(name) = text_of(u.get("name")) {
            assert!(!name.is_empty(), "an empty upstream name");
            assert!(names.insert(name.clone()), "upstream {name:?} twice");
        }
        if let Some(mount) = text_of(u.get("mount")) {
            assert!(mounts.insert(mount.clone()), "mount {mount:?} twice");
        }
        for route in u
            .get("routes")
            .and_then(serde_yaml_ng::Value::as_sequence)
            .into_iter()
            .flatten()
        {
            if let Some(path) = text_of(route.get("path")) {
                assert!(
                    PathTemplate::parse(&path).is_ok(),
                    "route {path:?} accepted"
                );
            }
        }
    }
}
