#!/usr/bin/env bash
# Runs the storage conformance suite (tests/support/conformance.rs) against
# a real S3 server: starts Garage on loopback, then runs
# `cargo test --features s3-tests --test integration storage_s3` (or the command given)
# with its address and key in FERRY_TEST_S3_*.
#
# Usage: tests/e2e/storage-s3.sh [command...]      Needs: garage, openssl.
#        CI runs `tests/e2e/storage-s3.sh cargo test --features s3-tests`:
#        the whole test suite in one build, the S3 backend included.
set -euo pipefail

cd "$(dirname "$0")/../.."
NAME=storage-s3
WORK=$(mktemp -d)
. tests/e2e/lib.sh
trap e2e_cleanup EXIT

start_garage
export FERRY_TEST_S3_ENDPOINT=$S3_ENDPOINT FERRY_TEST_S3_BUCKET=$S3_BUCKET \
    FERRY_TEST_S3_KEY=$S3_KEY FERRY_TEST_S3_SECRET=$S3_SECRET
if [ $# -eq 0 ]; then set -- cargo test --quiet --features s3-tests --test integration storage_s3; fi
"$@" || fail "$* failed (Garage at $S3_ENDPOINT)"
ok "$* passed with Garage at $S3_ENDPOINT"
finish
