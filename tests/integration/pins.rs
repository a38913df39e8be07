//! `ferry.pin`: the blobs of a pinned image stay when the size cap forces
//! eviction, though they are the least recently used; other blobs go. A
//! tag glob pins every tag it matches, and a pinned tag that moves is
//! followed (its new content fetched, the old let go).

use crate::support;

use std::time::Duration;

use bytes::Bytes;
use support::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MIB: usize = 1 << 20;

/// An image of one layer of `MIB` bytes (seed `seed`) under `repo:tag`;
/// returns its config and layer.
fn image(up: &FakeRegistry, repo: &str, tag: &str, seed: u64) -> [String; 2] {
    let config = Bytes::from(format!("{{\"seed\":{seed}}}"));
    let config_len = config.len();
    let config = up.add_blob(config);
    let layer = up.add_blob(blob_bytes(MIB, seed));
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{config_len}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":{MIB}}}]}}"#
    );
    up.add_manifest(repo, Some(tag), OCI_MANIFEST, m.into());
    [config, layer]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_the_pinned_images_and_lets_the_others_go() {
    let up = FakeRegistry::start().await;
    let v1 = image(&up, "team/pinned", "v1", 301);
    let v2 = image(&up, "team/pinned", "v2", 302);
    let other_tag = image(&up, "team/pinned", "other", 303);
    let others: Vec<String> = (0..4)
        .map(|i| up.add_blob(blob_bytes(MIB, 310 + i)))
        .collect();
    let ferry = Ferry::start_with(&up.url(), |c| {
        // Room for four MiB: the two pinned images and one more blob.
        c.lifecycle.max_size = Some(4 * MIB as u64);
        c.lifecycle.eviction_interval = Duration::from_secs(3600);
        c.lifecycle.pins = vec![ferry::config::Pin::parse("team/pinned:v*").unwrap()];
    })
    .await;
    within(ferry.app.refresh_pins()).await;
    ferry.settle().await;
    let lc = ferry.app.coordinator.lifecycle();
    for b in v1.iter().chain(&v2) {
        assert!(ferry.has_blob(b), "a pin's blobs are fetched");
        assert!(lc.pinned.contains(&b.parse().unwrap()));
    }
    assert!(!ferry.has_blob(&other_tag[1]), "'other' does not match v*");
    let pins = lc.pinned.snapshot();
    assert_eq!(pins.len(), 1);
    assert_eq!(pins[0].1.references, ["v1", "v2"]);
    assert!(pins[0].1.bytes > 2 * MIB as u64);
    // What check-config counts against maxSize, from the store alone.
    let counted = ferry::app::pins::stored(
        ferry.app.coordinator.store(),
        ferry.app.coordinator.router(),
        &ferry.app.config.lifecycle.pins[0],
        &mut std::collections::HashSet::new(),
    )
    .unwrap();
    assert_eq!(counted.references, 2);
    assert_eq!(counted.bytes, pins[0].1.bytes);
    let page = within(get(&ferry.url("/"))).await;
    let page = String::from_utf8_lossy(&page.body);
    assert!(
        page.contains("Pinned images (1,")
            && page.contains("<code>team/pinned:v*</code></td><td>v1, v2</td><td>4</td>"),
        "{page}"
    );
    // The pinned blobs are now the least recently used; four more MiB
    // take the store far over its cap, one blob after another.
    ferry.advance(Duration::from_secs(10));
    for d in &others {
        let w = within(get(&ferry.url(&format!("/v2/team/other/blobs/{d}")))).await;
        assert_eq!(&sha256(&w.body), d);
        ferry.settle().await;
        ferry.advance(Duration::from_secs(1));
        within(ferry::app::tasks::evict_now(&ferry.app)).await;
    }
    for b in v1.iter().chain(&v2) {
        assert!(ferry.has_blob(b), "pinned {b} was evicted");
    }
    let kept = others.iter().filter(|d| ferry.has_blob(d)).count();
    assert!(kept <= 1, "{kept} of the unpinned blobs kept over the cap");
    // The eviction the last publish woke may still be counting what it
    // removed (the count comes after the files go).
    within(async {
        while ferry.app.metrics.evictions.get() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    // The tag moves: the next refresh fetches its new content and lets
    // the old layer go (it may then be evicted like any other).
    let v2b = image(&up, "team/pinned", "v2", 304);
    ferry.advance(Duration::from_secs(3600));
    within(ferry.app.refresh_pins()).await;
    assert!(
        ferry.has_blob(&v2b[1]),
        "the moved tag's new layer is fetched"
    );
    assert!(lc.pinned.contains(&v2b[1].parse().unwrap()));
    assert!(
        !lc.pinned.contains(&v2[1].parse().unwrap()),
        "the old layer is no longer pinned"
    );
    assert!(lc.pinned.contains(&v1[1].parse().unwrap()));
}
