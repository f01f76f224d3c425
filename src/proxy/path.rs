//! Request-path hygiene. The gateway routes and decides on the path it sees; the tool
//! server must see the same one. Anything a server or framework might normalise
//! differently (dot segments, encoded slashes, doubled slashes, backslashes, control
//! characters) is refused rather than normalised.

use percent_encoding::percent_decode_str;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("the path contains a '.' or '..' segment")]
    DotSegment,
    #[error("the path contains an encoded '/' or '\\'")]
    EncodedSeparator,
    #[error("the path contains an empty segment ('//')")]
    EmptySegment,
    #[error("the path contains a backslash, a NUL or a control character")]
    ForbiddenCharacter,
    #[error("the path is not valid UTF-8 after percent-decoding")]
    NotUtf8,
}

/// Checks a request path (without query).
pub fn check(path: &str) -> Result<(), PathError> {
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return Err(PathError::EncodedSeparator);
    }
    let decoded = percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| PathError::NotUtf8)?;
    if decoded.chars().any(|c| c == '\\' || c.is_control()) {
        return Err(PathError::ForbiddenCharacter);
    }
    let body = decoded.strip_prefix('/').unwrap_or(&decoded);
    if body.is_empty() {
        return Ok(());
    }
    let segments: Vec<&str> = body.split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        if *seg == "." || *seg == ".." {
            return Err(PathError::DotSegment);
        }
        // A trailing slash is an empty last segment: allowed.
        if seg.is_empty() && i != last {
            return Err(PathError::EmptySegment);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_pass() {
        for p in ["/", "/mcp", "/tickets/projects/a%20b/issues", "/x/"] {
            assert_eq!(check(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn path_tricks_are_refused() {
        assert_eq!(check("/mcp/../admin"), Err(PathError::DotSegment));
        assert_eq!(check("/mcp/%2e%2e/admin"), Err(PathError::DotSegment));
        assert_eq!(check("/mcp/./x"), Err(PathError::DotSegment));
        assert_eq!(check("/a%2Fb"), Err(PathError::EncodedSeparator));
        assert_eq!(check("/a%5cb"), Err(PathError::EncodedSeparator));
        assert_eq!(check("//mcp"), Err(PathError::EmptySegment));
        assert_eq!(check("/a//b"), Err(PathError::EmptySegment));
        assert_eq!(check("/a%00b"), Err(PathError::ForbiddenCharacter));
        assert_eq!(check("/a%0d%0ab"), Err(PathError::ForbiddenCharacter));
        assert_eq!(check("/a%ffb"), Err(PathError::NotUtf8));
    }
}
