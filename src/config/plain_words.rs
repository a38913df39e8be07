//! Config errors in plain words: what serde says about a config file,
//! rewritten for the person who wrote it. A misspelled key gets "did you
//! mean", a value of the wrong type gets an example of a right one, and a
//! file that is not JSON at all (zot's YAML) is named as such.

/// Rewrites serde's `message` about the value at `path` (dotted, "." for
/// the whole file) of the config `text`; `homes_of` says where else a key
/// is one (each section's dotted path).
pub fn explain(
    text: &str,
    path: &str,
    message: &str,
    homes_of: impl Fn(&str) -> Vec<String>,
) -> String {
    let first = text.trim_start().chars().next();
    if path == "." && first.is_some_and(|c| c != '{') {
        return format!(
            "ferry reads JSON, and this file does not start with '{{': it looks like YAML or another format ({message}); convert it to JSON (zot reads the same keys from JSON)"
        );
    }
    let at = |m: String| {
        if path == "." {
            m
        } else {
            format!("{path}: {m}")
        }
    };
    if let Some(unknown) = message.strip_prefix("unknown field `") {
        let (key, rest) = unknown.split_once('`').unwrap_or((unknown, ""));
        let known: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
        let closest = known
            .iter()
            .map(|k| {
                (
                    strsim::damerau_levenshtein(&key.to_lowercase(), &k.to_lowercase()),
                    *k,
                )
            })
            .min();
        let homes = homes_of(key);
        return at(match closest {
            Some((d, k)) if d <= 2.max(key.len() / 4) => {
                format!("unknown key; did you mean `{k}`?")
            }
            _ if !homes.is_empty() => {
                let homes: Vec<String> = homes.iter().map(|h| format!("`{h}`")).collect();
                format!(
                    "`{key}` is not a key here; it belongs in {}",
                    homes.join(" or ")
                )
            }
            _ => format!("unknown key; the keys here are {}", known.join(", ")),
        });
    }
    let key = path.rsplit('.').next().unwrap_or(path);
    if path.ends_with("http.port") && message.contains("untagged enum") {
        return at("expected a port number, such as 5000 or \"5000\"".into());
    }
    if message.starts_with("invalid type:") && message.contains("expected a string") {
        if let Some(example) = example_for(key) {
            let got = message
                .trim_start_matches("invalid type: ")
                .split(", expected")
                .next()
                .unwrap_or("");
            return at(format!("expected {example} in quotes, not {got}"));
        }
    }
    at(message.to_string())
}

/// An example value for a key, by the kind its name says it holds.
fn example_for(key: &str) -> Option<&'static str> {
    let k = key.to_lowercase();
    if k.ends_with("ttl")
        || k.ends_with("timeout")
        || k.ends_with("interval")
        || k.ends_with("delay")
        || k.ends_with("wait")
        || k == "maxstale"
        || k == "maxidle"
    {
        Some("a duration such as \"90s\", \"5m\" or \"1h30m\"")
    } else if k.contains("size")
        || k.contains("space")
        || k.ends_with("rate")
        || k.contains("bytes")
    {
        Some("a size such as \"512MiB\" or \"10GiB\"")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use crate::config::FileConfig;

    fn error(text: &str) -> String {
        FileConfig::parse(text).unwrap_err().0
    }

    #[test]
    fn a_misspelled_key_gets_a_suggestion() {
        let e = error(r#"{"ferry": {"maxsize": "10GiB"}}"#);
        assert_eq!(e, "ferry.maxsize: unknown key; did you mean `maxSize`?");
        let e = error(r#"{"ferry": {"colour": 1}}"#);
        assert!(
            e.starts_with("ferry.colour: unknown key; the keys here are "),
            "{e}"
        );
    }

    #[test]
    fn a_key_in_the_wrong_section_is_told_where_it_belongs() {
        let e = error(r#"{"ferry": {"tagTTL": "5m"}}"#);
        assert_eq!(
            e,
            "ferry.tagTTL: `tagTTL` is not a key here; it belongs in `extensions.sync.registries[].tagTTL`"
        );
        let e = error(r#"{"http": {"maxSize": "10GiB"}}"#);
        assert!(e.contains("it belongs in `ferry.maxSize`"), "{e}");
        let e = error(r#"{"ferry": {"peers": ["a:1"]}}"#);
        assert!(e.contains("`ferry.cluster.peers`"), "{e}");
    }

    #[test]
    fn a_wrong_type_gets_an_example() {
        let e = error(
            r#"{"extensions": {"sync": {"registries": [{"urls": ["https://r.example"], "tagTTL": 300}]}}}"#,
        );
        assert!(
            e.contains("tagTTL: expected a duration such as \"90s\""),
            "{e}"
        );
        assert!(e.contains("not integer `300`"), "{e}");
        let e = error(r#"{"http": {"port": true}}"#);
        assert_eq!(
            e,
            "http.port: expected a port number, such as 5000 or \"5000\""
        );
        let e = error(r#"{"ferry": {"maxSize": 10}}"#);
        assert!(e.contains("expected a size such as"), "{e}");
    }

    #[test]
    fn yaml_is_named() {
        let e = error("http:\n  address: 0.0.0.0\n");
        assert!(e.starts_with("ferry reads JSON"), "{e}");
        assert!(e.contains("YAML"), "{e}");
    }
}
