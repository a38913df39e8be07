//! Bearer tokens: parsing `WWW-Authenticate` challenges and token answers,
//! and the per-scope token cache.
//!
//! On a 401 whose `WWW-Authenticate` offers `Bearer realm=...`, ferry asks
//! the realm for a token for the challenge's service and scope (with the
//! registry's credentials as Basic auth when it has some; only a realm
//! `realm_allowed` trusts is asked, see `challenge`), caches it per scope
//! until `expires_in` (default 60 s, at most a day) minus a margin, and
//! retries once. Concurrent requests that need the same token wait for one
//! token request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercased scheme, e.g. `bearer`.
    pub scheme: String,
    /// Parameters with lowercased names, in order.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a `WWW-Authenticate` value into its challenges. Tolerant: quoted
/// strings with escapes and commas, several challenges, stray spaces; a
/// malformed tail is dropped, never a panic.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let b = header.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t' || b[*i] == b',') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| -> String {
        let start = *i;
        while *i < b.len() && !matches!(b[*i], b' ' | b'\t' | b',' | b'=' | b'"') {
            *i += 1;
        }
        header[start..*i].to_string()
    };
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            break;
        }
        let word = token(&mut i);
        if word.is_empty() {
            i += 1;
            continue;
        }
        // `word=` starts a parameter of the current challenge; a bare word
        // starts a new challenge.
        let mut j = i;
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        if j < b.len() && b[j] == b'=' && !out.is_empty() {
            i = j + 1;
            while i < b.len() && b[i] == b' ' {
                i += 1;
            }
            let value = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut v = String::new();
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    let ch = header[i..].chars().next().expect("in bounds");
                    v.push(ch);
                    i += ch.len_utf8();
                }
                i += 1; // closing quote (or end)
                v
            } else {
                token(&mut i)
            };
            out.last_mut()
                .expect("checked non-empty")
                .params
                .push((word.to_ascii_lowercase(), value));
        } else {
            out.push(Challenge {
                scheme: word.to_ascii_lowercase(),
                params: Vec::new(),
            });
        }
    }
    out
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// The longest a token is believed, whatever its `expires_in` says (an
/// upstream's number must not overflow a deadline).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Parses a token server's answer; `token` or `access_token`.
pub fn parse_token_response(body: &[u8]) -> Option<(String, Duration)> {
    let t: TokenResponse = serde_json::from_slice(body).ok()?;
    let token = t.token.or(t.access_token).filter(|t| !t.is_empty())?;
    let secs = t
        .expires_in
        .unwrap_or(60)
        .clamp(1, MAX_TOKEN_LIFETIME.as_secs());
    Some((token, Duration::from_secs(secs)))
}

#[derive(Clone)]
struct Cached {
    token: String,
    valid_until: Instant,
}

/// Scopes remembered at most per registry. Every repository name a client
/// invents is a scope, so the map is bounded and swept.
pub const MAX_SCOPES: usize = 4096;

type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// Tokens per scope, with one token request at a time per scope.
///
/// Bounded: before a new scope is added to a full-looking map, scopes
/// whose token expired (or never came) and that no request is using are
/// swept out, so memory per invented name is zero once its token ages
/// out; at [`MAX_SCOPES`] the idle scopes go first, whatever their age.
#[derive(Default)]
pub struct TokenCache {
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    map: HashMap<String, Slot>,
    /// The map's size that triggers the next sweep.
    sweep_at: usize,
}

impl Slots {
    /// Drops idle scopes without a valid token; then, over the cap, idle
    /// scopes whatever their token.
    fn sweep(&mut self) {
        let now = Instant::now();
        let idle = |slot: &Slot| Arc::strong_count(slot) == 1;
        self.map.retain(|_, slot| {
            !idle(slot)
                || slot
                    .try_lock()
                    .map_or(true, |c| c.as_ref().is_some_and(|c| c.valid_until > now))
        });
        if self.map.len() >= MAX_SCOPES {
            let extra = self.map.len() + 1 - MAX_SCOPES / 2;
            let victims: Vec<String> = self
                .map
                .iter()
                .filter(|(_, slot)| idle(slot))
                .map(|(k, _)| k.clone())
                .take(extra)
                .collect();
            for k in victims {
                self.map.remove(&k);
            }
        }
        self.sweep_at = (self.map.len() * 2).clamp(64, MAX_SCOPES);
    }
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print tokens.
        let n = self.slots.lock().map(|s| s.map.len()).unwrap_or(0);
        write!(f, "TokenCache {{ scopes: {n} }}")
    }
}

impl TokenCache {
    fn slot(&self, scope: &str) -> Slot {
        let mut slots = self.slots.lock().expect("token cache lock");
        if let Some(s) = slots.map.get(scope) {
            return s.clone();
        }
        if slots.map.len() >= slots.sweep_at {
            slots.sweep();
        }
        slots.map.entry(scope.to_string()).or_default().clone()
    }

    /// Scopes held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.lock().expect("token cache lock").map.len()
    }

    /// A valid cached token for `scope`, if any.
    pub async fn get(&self, scope: &str) -> Option<String> {
        // Look up without inserting: registries without auth add nothing.
        let slot = self
            .slots
            .lock()
            .expect("token cache lock")
            .map
            .get(scope)
            .cloned()?;
        let cached = slot.lock().await;
        cached
            .as_ref()
            .filter(|c| c.valid_until > Instant::now())
            .map(|c| c.token.clone())
    }

    /// The token for `scope`: cached, or fetched by `fetch` while other
    /// callers for the same scope wait. `rejected` is a token the upstream
    /// just refused, which must not be handed out again.
    pub async fn get_or_fetch<F, Fut>(
        &self,
        scope: &str,
        rejected: Option<&str>,
        fetch: F,
    ) -> Option<String>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Option<(String, Duration)>>,
    {
        let slot = self.slot(scope);
        let mut cached = slot.lock().await;
        if let Some(c) = cached.as_ref() {
            if c.valid_until > Instant::now() && Some(c.token.as_str()) != rejected {
                return Some(c.token.clone());
            }
        }
        let (token, lifetime) = fetch().await?;
        // Renew a little early so a token never expires in flight.
        let margin = (lifetime / 10).min(Duration::from_secs(10));
        *cached = Some(Cached {
            token: token.clone(),
            valid_until: Instant::now() + lifetime.min(MAX_TOKEN_LIFETIME) - margin,
        });
        Some(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scopes_are_forgotten_once_their_tokens_expire_and_stay_bounded() {
        let cache = TokenCache::default();
        // A token for every invented name, each already expired (a run of
        // an hour ago): they are swept as new ones come.
        for i in 0..20_000 {
            let t = cache
                .get_or_fetch(&format!("repository:x{i}:pull"), None, || async {
                    Some(("t".to_string(), Duration::ZERO))
                })
                .await;
            assert!(t.is_some());
        }
        assert!(cache.len() <= 64, "{} expired scopes kept", cache.len());
        // A token server that refuses leaves nothing behind either.
        for i in 0..1000 {
            let t = cache
                .get_or_fetch(&format!("repository:y{i}:pull"), None, || async { None })
                .await;
            assert!(t.is_none());
        }
        assert!(cache.len() <= 64, "{} refused scopes kept", cache.len());
        // Valid tokens are kept, up to the cap.
        for i in 0..20_000 {
            cache
                .get_or_fetch(&format!("repository:z{i}:pull"), None, || async {
                    Some(("t".to_string(), Duration::from_secs(3600)))
                })
                .await;
        }
        assert!(cache.len() <= MAX_SCOPES, "{} scopes", cache.len());
        assert_eq!(
            cache.get("repository:z19999:pull").await.as_deref(),
            Some("t"),
            "the newest token is cached"
        );
    }

    #[test]
    fn parses_docker_hub_challenge() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#;
        let c = parse_challenges(h);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(c[0].param("scope"), Some("repository:library/alpine:pull"));
    }

    #[test]
    fn parses_several_challenges_quotes_and_escapes() {
        let h = r#"Basic realm="a, b", Bearer realm="https://x/token", scope="repository:a:pull,push", error="in\"valid""#;
        let c = parse_challenges(h);
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some("a, b"));
        assert_eq!(c[1].param("scope"), Some("repository:a:pull,push"));
        assert_eq!(c[1].param("error"), Some("in\"valid"));
    }

    #[test]
    fn survives_garbage() {
        for h in [
            "",
            "=",
            "\"",
            "Bearer realm=\"unterminated",
            ",,,",
            "Bearer =x",
            "é=\"ü\"",
            "Bearer a=\"\\",
        ] {
            let _ = parse_challenges(h);
        }
        assert_eq!(
            parse_challenges("Bearer realm=\"unterminated")[0].param("realm"),
            Some("unterminated")
        );
    }

    #[test]
    fn token_responses() {
        assert_eq!(
            parse_token_response(br#"{"token":"t","expires_in":300}"#),
            Some(("t".to_string(), Duration::from_secs(300)))
        );
        assert_eq!(
            parse_token_response(br#"{"token":"t","expires_in":18446744073709551615}"#),
            Some(("t".to_string(), MAX_TOKEN_LIFETIME)),
            "an upstream's number cannot overflow a deadline"
        );
        assert_eq!(
            parse_token_response(br#"{"token":"t","expires_in":300}"#),
            Some(("t".into(), Duration::from_secs(300)))
        );
        assert_eq!(
            parse_token_response(br#"{"access_token":"a"}"#),
            Some(("a".into(), Duration::from_secs(60)))
        );
        assert_eq!(parse_token_response(br#"{"token":""}"#), None);
        assert_eq!(parse_token_response(b"nope"), None);
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn quote(v: &str) -> String {
            let mut q = String::from("\"");
            for c in v.chars() {
                if c == '"' || c == '\\' {
                    q.push('\\');
                }
                q.push(c);
            }
            q.push('"');
            q
        }

        proptest! {
            #[test]
            fn never_panics(header in ".{0,200}") {
                let _ = parse_challenges(&header);
            }

            #[test]
            fn round_trips_formatted_challenges(
                challenges in prop::collection::vec(
                    ("[A-Za-z][A-Za-z0-9]{0,8}",
                     prop::collection::vec(("[a-z][a-z0-9_]{0,8}", "[^\\x00]{0,30}"), 1..5)),
                    1..4),
                spaces in " {0,2}",
            ) {
                let header = challenges
                    .iter()
                    .map(|(scheme, params)| {
                        let ps: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", quote(v))).collect();
                        format!("{scheme} {}", ps.join(&format!(",{spaces}")))
                    })
                    .collect::<Vec<_>>()
                    .join(&format!(",{spaces}"));
                let parsed = parse_challenges(&header);
                prop_assert_eq!(parsed.len(), challenges.len(), "{}", header);
                for (got, (scheme, params)) in parsed.iter().zip(&challenges) {
                    prop_assert_eq!(&got.scheme, &scheme.to_ascii_lowercase());
                    let want: Vec<(String, String)> = params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                    prop_assert_eq!(&got.params, &want);
                }
            }
        }
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_token_request() {
        let cache = Arc::new(TokenCache::default());
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (cache, calls) = (cache.clone(), calls.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_fetch("repository:a:pull", None, || async {
                            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            Some(("tok".to_string(), Duration::from_secs(60)))
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().as_deref(), Some("tok"));
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        // A rejected token is replaced.
        let fresh = cache
            .get_or_fetch("repository:a:pull", Some("tok"), || async {
                Some(("tok2".to_string(), Duration::from_secs(60)))
            })
            .await;
        assert_eq!(fresh.as_deref(), Some("tok2"));
    }
}
