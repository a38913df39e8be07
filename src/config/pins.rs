//! `ferry.pin`: images eviction never removes. Each entry is an image
//! reference as `ferry prefetch` takes one, `[registry/]name:tag` or
//! `name@digest`, where the tag may be a glob (`*` any run of characters,
//! `?` one): `library/alpine:3.*` pins every 3.x tag. The images are
//! resolved and kept fresh by the service (`app::pins`); this file only
//! reads and checks what was written.

use regex::Regex;

use crate::oci::Digest;

/// One `ferry.pin` entry.
#[derive(Debug, Clone)]
pub struct Pin {
    /// As written.
    pub image: String,
    /// The repository, a registry host first when there is one.
    pub name: String,
    pub target: PinTarget,
}

/// What of the repository is pinned.
#[derive(Debug, Clone)]
pub enum PinTarget {
    /// One tag (no glob characters).
    Tag(String),
    /// The tags a glob matches (the pattern as written, and compiled).
    Glob(String, Regex),
    Digest(Digest),
}

impl Pin {
    /// Reads one entry, or says what is wrong with it.
    pub fn parse(image: &str) -> Result<Pin, String> {
        let bad = |why: String| format!("ferry.pin {image:?}: {why}");
        if image.is_empty() || image.len() > 512 || image.chars().any(char::is_whitespace) {
            return Err(bad(
                "an image reference: [registry/]name:tag or name@digest".into(),
            ));
        }
        let (name, target) = if let Some((n, d)) = image.split_once('@') {
            let d: Digest = d.parse().map_err(|e| bad(format!("{e}")))?;
            if n.rsplit_once(':').is_some_and(|(_, t)| !t.contains('/')) {
                return Err(bad("a tag or a digest, not both".into()));
            }
            (n, PinTarget::Digest(d))
        } else {
            let (n, tag) = match image.rsplit_once(':') {
                // A colon after the last slash is a tag; before it, a port.
                Some((n, t)) if !t.contains('/') => (n, t),
                _ => (image, "latest"),
            };
            let chars_ok = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"._-*?".contains(&c));
            if !chars_ok {
                return Err(bad(format!(
                    "tag {tag:?}: letters, digits, '.', '_', '-', and the globs '*' and '?'"
                )));
            }
            let target = if tag.contains(['*', '?']) {
                let pattern = regex::escape(tag).replace("\\*", ".*").replace("\\?", ".");
                let re = Regex::new(&format!("^{pattern}$")).map_err(|e| bad(e.to_string()))?;
                PinTarget::Glob(tag.to_string(), re)
            } else {
                PinTarget::Tag(tag.to_string())
            };
            (n, target)
        };
        if name.is_empty() || name.starts_with('/') || name.ends_with('/') {
            return Err(bad("no repository name".into()));
        }
        Ok(Pin {
            image: image.to_string(),
            name: name.to_string(),
            target,
        })
    }

    /// True when this pin covers `tag` of its repository.
    pub fn covers_tag(&self, tag: &str) -> bool {
        match &self.target {
            PinTarget::Tag(t) => t == tag,
            PinTarget::Glob(_, re) => re.is_match(tag),
            PinTarget::Digest(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_globs_digests_and_ports() {
        let p = Pin::parse("library/alpine:3.*").unwrap();
        assert_eq!(p.name, "library/alpine");
        assert!(
            p.covers_tag("3.20")
                && p.covers_tag("3.")
                && !p.covers_tag("13.1")
                && !p.covers_tag("latest")
        );
        let p = Pin::parse("127.0.0.1:5000/team/app").unwrap();
        assert_eq!(p.name, "127.0.0.1:5000/team/app");
        assert!(p.covers_tag("latest") && !p.covers_tag("latest2"));
        let q = Pin::parse("team/app:v1.?").unwrap();
        assert!(q.covers_tag("v1.2") && !q.covers_tag("v1.22") && !q.covers_tag("v1x2"));
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(matches!(
            Pin::parse(&format!("a/b@{d}")).unwrap().target,
            PinTarget::Digest(_)
        ));
        assert!(Pin::parse(&format!("a/b:1@{d}")).is_err(), "tag and digest");
        assert!(
            Pin::parse(&format!("127.0.0.1:5000/b@{d}")).is_ok(),
            "a port is no tag"
        );
        for bad in ["", "a b:1", "a:[x]", "a@sha256:zz", ":1", "a/:1"] {
            assert!(Pin::parse(bad).is_err(), "{bad:?}");
        }
    }
}
