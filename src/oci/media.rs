//! Manifest media types: what ferry asks upstream for when a client does not
//! say, and how it recognises a manifest's type from its bytes.

/// Manifest media types ferry knows, most specific first.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v1+json",
];

/// The `Accept` header sent upstream when a client sent none: every manifest
/// type, so the upstream answers with what it stores.
pub fn default_manifest_accept() -> String {
    MANIFEST_TYPES.join(", ")
}

pub fn is_manifest_media_type(media_type: &str) -> bool {
    MANIFEST_TYPES.contains(&media_type)
}

/// The media type a manifest declares in its `mediaType` field, if any; used
/// when an upstream answers with a generic `Content-Type`.
pub fn sniff_manifest_media_type(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    serde_json::from_slice::<Probe>(bytes).ok()?.media_type
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_declared_type() {
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        assert_eq!(
            sniff_manifest_media_type(m).as_deref(),
            Some("application/vnd.oci.image.index.v1+json")
        );
        assert_eq!(sniff_manifest_media_type(b"not json"), None);
        assert!(is_manifest_media_type(
            "application/vnd.oci.image.manifest.v1+json"
        ));
        assert!(default_manifest_accept().contains("manifest.list.v2"));
    }
}
