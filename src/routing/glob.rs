//! zot's content prefixes as globs over repository paths: `*` matches
//! within one segment, a `**` segment matches any number of segments, and a
//! pattern matches a name when it matches the name's leading segments (it is
//! a prefix: `lank8s` matches `lank8s/pause`).

/// True when `pattern` matches the first segments of `name`.
pub fn prefix_matches(pattern: &str, name: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let n: Vec<&str> = name.split('/').collect();
    segments_match(&p, &n)
}

/// The literal leading segments of a pattern (up to the first glob), the
/// part `stripPrefix` removes.
pub fn literal_base(pattern: &str) -> String {
    pattern
        .split('/')
        .filter(|s| !s.is_empty())
        .take_while(|s| !s.contains('*'))
        .collect::<Vec<_>>()
        .join("/")
}

fn segments_match(p: &[&str], n: &[&str]) -> bool {
    match p.first() {
        None => true,
        Some(&"**") => (0..=n.len()).any(|k| segments_match(&p[1..], &n[k..])),
        Some(seg) => {
            !n.is_empty()
                && segment_matches(seg.as_bytes(), n[0].as_bytes())
                && segments_match(&p[1..], &n[1..])
        }
    }
}

/// `*` matches any run of characters within one segment.
fn segment_matches(p: &[u8], s: &[u8]) -> bool {
    // Iterative wildcard match with backtracking to the last `*`.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert!(prefix_matches("lank8s", "lank8s"));
        assert!(prefix_matches("/lank8s", "lank8s/pause"));
        assert!(!prefix_matches("lank8s", "lank8sx/pause"));
        assert!(!prefix_matches("lank8s", "other/lank8s"));
        assert!(prefix_matches("a/*", "a/b"));
        assert!(prefix_matches("a/*", "a/b/c"));
        assert!(!prefix_matches("a/*", "a"));
        assert!(prefix_matches("a/**", "a"));
        assert!(prefix_matches("**/pause", "x/y/pause"));
        assert!(!prefix_matches("**/pause", "x/y/other"));
        assert!(prefix_matches("kube-*", "kube-proxy"));
        assert!(!prefix_matches("kube-*", "etcd"));
        assert!(prefix_matches("*", "anything/at/all"));
    }

    #[test]
    fn bases() {
        assert_eq!(literal_base("/repo1/repo"), "repo1/repo");
        assert_eq!(literal_base("a/b/**"), "a/b");
        assert_eq!(literal_base("*/x"), "");
    }
}
