#!/usr/bin/env bash
# Runs the storage conformance suite (tests/support/conformance.rs) against
# a real S3 server: starts Garage on loopback, then
# `cargo test --features s3-tests --test storage_s3` with its address and key.
#
# Usage: tests/e2e/storage-s3.sh      Needs: garage, openssl.
set -euo pipefail

cd "$(dirname "$0")/../.."
NAME=storage-s3
WORK=$(mktemp -d)
. tests/e2e/lib.sh
trap e2e_cleanup EXIT

start_garage
export FERRY_TEST_S3_ENDPOINT=$S3_ENDPOINT FERRY_TEST_S3_BUCKET=$S3_BUCKET \
    FERRY_TEST_S3_KEY=$S3_KEY FERRY_TEST_S3_SECRET=$S3_SECRET
cargo test --quiet --features s3-tests --test storage_s3 || fail "the S3 backend does not conform"
ok "the storage conformance suite passed against Garage at $S3_ENDPOINT"
finish
